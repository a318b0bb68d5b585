"""``deployer localcloud up --seed configs/local-world.yaml --lb-port Q`` as a real process: the
README's one-line WebSocket client reaches the chat backend through the LB and Cloud Armor, and no
revision process outlives the local cloud — whether it is stopped or SIGKILLed."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT
from tests.localcloud.runtime.support import until

pytestmark = pytest.mark.e2e

READY = re.compile(r"local cloud ready: API on (http://127\.0\.0\.1:\d+), load balancer on http://127\.0\.0\.1:(\d+)")
# The README's line, exactly (README: --lb-port 8080; the test substitutes a free port).
README_LINE = (
    '.venv/bin/python -c "from websockets.sync.client import connect; '
    "ws = connect('ws://127.0.0.1:8080/ws'); ws.send('hello'); print(ws.recv())\""
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_up(lb_port: int) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deployer",
            "localcloud",
            "up",
            "--api-port",
            "0",
            "--lb-port",
            str(lb_port),
            "--seed",
            "configs/local-world.yaml",
        ],
        cwd=ROOT,
        env={**os.environ, "NO_PROXY": "127.0.0.1,localhost", "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = READY.search(line)
    if match is None:
        proc.kill()
        pytest.fail(f"no ready line: {line!r}")
    return proc, match.group(1)


def one_liner(port: int) -> subprocess.CompletedProcess[str]:
    line = README_LINE.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    return subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=30, cwd=ROOT)


def revision_processes(proc: subprocess.Popen[str]) -> list[psutil.Process]:
    return psutil.Process(proc.pid).children(recursive=True)


def test_the_readme_one_liner_works_and_sigkill_leaves_no_process_behind():
    port = free_port()
    proc, _api = start_up(port)
    try:
        result = until(lambda: (r := one_liner(port)).returncode == 0 and r, deadline_s=30, every=0.2)
        assert result.stdout.strip() == '{"type": "echo", "data": "hello"}'
        assert README_LINE in (Path(ROOT) / "README.md").read_text()  # the README shows exactly this line
        children = revision_processes(proc)
        assert children, "the seeded revision should run as a process"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        until(lambda: not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE], deadline_s=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_sigterm_stops_the_revisions_gracefully():
    port = free_port()
    proc, _api = start_up(port)
    try:
        until(lambda: one_liner(port).returncode == 0, deadline_s=30, every=0.2)
        children = revision_processes(proc)
        assert children
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "local cloud stopped" in out
        assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        assert time.monotonic() - started < 15
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
