"""The console script: Ctrl-C while the CLI is still importing is one line and exit 130, not a traceback."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# A real process whose import of deployer.cli is interrupted the way Ctrl-C interrupts it: the
# KeyboardInterrupt Python raises from its SIGINT handler, here at the moment deployer.cli is imported.
INTERRUPTED_IMPORT = textwrap.dedent(
    """
    import os, signal, sys

    class SigintOnImport:
        def find_spec(self, name, path=None, target=None):
            if name == "deployer.cli":
                os.kill(os.getpid(), signal.SIGINT)
            return None

    sys.meta_path.insert(0, SigintOnImport())
    from deployer.entry import main
    sys.exit(main())
    """
)


def test_ctrl_c_while_the_cli_imports_is_one_line_and_130() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_IMPORT, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "error: interrupted by Ctrl-C (SIGINT) before the command finished\n"
    assert proc.stdout == ""


def test_the_console_script_runs_the_cli() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "deployer", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "deployer" in proc.stdout, proc.stderr
