"""One package per emulated Google API: ``models`` (state and rules) and ``responses`` (wire)."""
