"""The ``deployer`` console script.

``deployer.cli`` imports typer, click and rich (~0.1 s); Ctrl-C during that import would otherwise end in
a ``KeyboardInterrupt`` traceback, before ``cli.main`` can turn it into its one line. This module imports
nothing heavy, so the window left is the interpreter's own start.
"""

from __future__ import annotations

import sys

INTERRUPTED_EXIT = 130  # as cli.INTERRUPTED_EXIT (128 + SIGINT), without importing cli to know it


def main() -> int:
    try:
        from deployer.cli import main as cli_main
    except KeyboardInterrupt:
        print("error: interrupted by Ctrl-C (SIGINT) before the command finished", file=sys.stderr)
        return INTERRUPTED_EXIT
    return cli_main()
