"""The watchdog each revision process runs under (stdlib only; executed as a script by path).

    python supervise.py PARENT_PID GRACE_S -- COMMAND...

It leads the revision's own process group (the local cloud starts it with ``start_new_session``),
runs COMMAND as its child in that group, and makes sure nothing outlives the local cloud:

- ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` (Linux): the kernel signals it when the local cloud dies, even
  by SIGKILL; if the parent is already gone when it starts, it exits at once.
- on SIGTERM/SIGINT/SIGHUP it passes SIGTERM to COMMAND (Cloud Run's shutdown signal) and, after
  GRACE_S, SIGKILLs the whole group (itself, COMMAND and anything COMMAND started).
- it exits with COMMAND's status (128+N for a signal), so the runtime can log Cloud Run's
  "Container called exit(N)."
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from types import FrameType

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def main(argv: list[str]) -> int:
    if len(argv) < 5 or argv[3] != "--":
        print("usage: supervise.py PARENT_PID GRACE_S -- COMMAND...", file=sys.stderr)
        return 2
    parent, grace, command = int(argv[1]), float(argv[2]), argv[4:]
    _die_with_parent()
    if os.getppid() != parent:  # the local cloud died before prctl took effect
        return 1
    try:
        child = subprocess.Popen(command)
    except OSError as exc:
        print(f"cannot start {command[0]}: {exc.strerror}", file=sys.stderr, flush=True)
        return 127
    stopping = False

    def kill_group(_signum: int = 0, _frame: FrameType | None = None) -> None:
        with contextlib.suppress(OSError):
            os.killpg(0, signal.SIGKILL)

    def on_stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        with contextlib.suppress(OSError):
            child.send_signal(signal.SIGTERM)
        signal.signal(signal.SIGALRM, kill_group)
        signal.setitimer(signal.ITIMER_REAL, max(grace, 0.01))

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_stop)
    code = child.wait()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
