#!/usr/bin/env python3
"""WebSocket connectivity validator: the seed's ``validate_websocket_staging.py``, now a thin wrapper
over ``deployer gate``.

    python scripts/validate_websocket.py wss://api.example.com/ws
    python scripts/validate_websocket.py wss://api.example.com/ws --connections 50 --hold 30 --json

By default it does what the seed's script did: one connection, a 30 s open timeout, the handshake and
one ping. Every ``deployer gate`` option can follow the URL and overrides these defaults (the last
value given wins). Exit 0 Passed, 1 Failed, 3 Inconclusive or Error (e.g. the host does not resolve),
2 usage.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deployer.cli import main

SEED_DEFAULTS = [
    *("--connections", "1", "--concurrency", "1", "--min-samples", "1"),
    *("--ping", "1", "--open-timeout", "30"),
]


def run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return main(["gate", "--help"]) if argv else 2
    url, rest = argv[0], argv[1:]
    if "--json" not in rest:
        print(f"Testing WebSocket connection to {url}...")
        sys.stdout.flush()
    return main(["gate", url, *SEED_DEFAULTS, *rest])


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
