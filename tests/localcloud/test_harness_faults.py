"""The local cloud's test-harness faults (docs/localcloud.md "Test-harness faults"): ``skip``, SIGKILL of
the caller just before or just after a call (``kind: kill``), and a Python hook run just before a call
(``kind: hook``). Exercised against real processes and the real storage API over HTTP."""

from __future__ import annotations

import subprocess
import sys
import threading

from deployer.localcloud.world import FaultRule
from tests.localcloud.test_server import call

BUCKETS = "/storage/v1/b?project=local-project"


def victim() -> subprocess.Popen[bytes]:
    """A process standing in for the deployer under test."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def bucket_names(cloud) -> list[str]:
    status, body = call(cloud, "GET", BUCKETS)
    assert status == 200
    return sorted(b["name"] for b in body.get("items", []))


def test_skip_lets_the_first_calls_through(localcloud):
    call(localcloud, "POST", "/_localcloud/faults", {"method": "storage.buckets.list", "status": 503, "skip": 2})
    assert [call(localcloud, "GET", BUCKETS)[0] for _ in range(4)] == [200, 200, 503, 200]


def test_kill_before_drops_the_call_unapplied(localcloud):
    proc = victim()
    status, body = call(
        localcloud, "POST", "/_localcloud/faults", {"method": "storage.buckets.insert", "kind": "kill", "pid": proc.pid}
    )
    assert status == 200 and body["faults"][0]["when"] == "before"
    status, _ = call(localcloud, "POST", BUCKETS, {"name": "never-made"})
    assert status == 503
    assert proc.wait(timeout=10) == -9
    assert "never-made" not in bucket_names(localcloud)
    entry = [r for r in localcloud.world.requests if r.method == "storage.buckets.insert"][-1]
    assert entry.fault and entry.status == 503


def test_kill_after_applies_the_call_then_kills_the_caller(localcloud):
    proc = victim()
    call(
        localcloud,
        "POST",
        "/_localcloud/faults",
        {"method": "storage.buckets.insert", "kind": "kill", "pid": proc.pid, "when": "after", "skip": 1},
    )
    assert call(localcloud, "POST", BUCKETS, {"name": "first"})[0] == 200  # skipped: the caller lives on
    assert proc.poll() is None
    status, _ = call(localcloud, "POST", BUCKETS, {"name": "landed"})
    assert status == 200  # applied (the killed caller would never have read this answer)
    assert proc.wait(timeout=10) == -9
    assert bucket_names(localcloud) == ["first", "landed"]
    assert localcloud.world.faults.rules == []


def test_a_hook_runs_just_before_the_call(localcloud):
    seen: list[str] = []

    def someone_else() -> None:  # on a worker thread, through the API like any other client
        seen.append(threading.current_thread().name)
        assert call(localcloud, "POST", BUCKETS, {"name": "theirs"})[0] == 200

    localcloud.world.faults.add(FaultRule(method="storage.buckets.insert", kind="hook", hook=someone_else))
    status, body = call(localcloud, "GET", "/_localcloud/faults")
    assert status == 200 and body["faults"][0]["hook"] is True and body["faults"][0]["kind"] == "hook"
    assert call(localcloud, "POST", BUCKETS, {"name": "ours"})[0] == 200
    assert seen and seen[0] != threading.current_thread().name
    inserts = [r.path for r in localcloud.world.requests if r.method == "storage.buckets.insert"]
    assert len(inserts) == 2 and bucket_names(localcloud) == ["ours", "theirs"]


def test_kill_faults_are_validated(localcloud):
    for bad in (
        {"method": "x", "kind": "kill"},
        {"method": "x", "kind": "kill", "pid": 12, "when": "during"},
        {"method": "x", "kind": "hook", "status": 0},  # hooks are Python-only
    ):
        status, body = call(localcloud, "POST", "/_localcloud/faults", bad)
        assert status == 400, body
    assert localcloud.world.faults.rules == []
