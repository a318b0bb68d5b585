"""The deploy orchestrator and what it stands on: the journal (the truth of a deploy) and the
per-service lock, both kept in a ``deployer.state`` store."""
