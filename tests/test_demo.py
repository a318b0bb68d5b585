"""``make demo`` runs the seed's story to the end (exit 0) and leaves no process behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.localcloud.runtime.support import no_process_left_behind

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.e2e
def test_the_demo_tells_the_story_and_exits_0():
    with no_process_left_behind():
        done = subprocess.run(
            [sys.executable, "-m", "deployer.demo"], cwd=ROOT, capture_output=True, text=True, timeout=240
        )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    # (a) the seed's proposal refused, with its rules
    assert "→ refused (exit 1): 5 errors" in out
    assert all(code in out for code in ("CR023", "LB001", "LB002", "CR003"))
    # (b) the good release, by canary
    assert "✓ gate_candidate" in out and "✓ shift 100%" in out and "users reach: v2" in out
    # (c) caught by the candidate gate, (d) caught at a traffic step: both rolled back
    assert "✗ gate_candidate" in out and "upgrade_refused HTTP 403" in out
    assert "closed 1011 (abnormal) during hold" in out
    assert out.count("rolled back  chat-staging/us-central1/chat-backend") == 2
    # (e) the end state and the history
    assert "history (from the journal, newest first):" in out and out.count("rolled_back") >= 2
    assert "The story went as told" in out
