"""History and status: the order of operations started in the same second, a running journal whose process
is gone, and the history on a narrow terminal. Pure values and renderers over hand-built journals, and the
CLI over a local state directory (no cloud: ``history`` and ``why`` read the state store only)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from deployer.cli import main
from deployer.orchestrator.history import (
    DeploySummary,
    mark_gone,
    process_gone,
    read_history,
    render_history,
    summarize,
)
from deployer.orchestrator.journal import fold
from deployer.orchestrator.lock import LockInfo, ServiceLock
from deployer.orchestrator.owner import Owner
from deployer.orchestrator.status import LockView, build_status, render_status
from deployer.state.local import LocalStateStore
from tests.orchestrator.history_support import (
    CI,
    KEY,
    SERVICE_NAME,
    T0,
    Builder,
    emergency_rollback,
    good_deploy,
    offline_config,
    rolled_back_deploy,
    text_of,
)

AT = datetime(2026, 3, 2, 17, 46, 26, 400000, tzinfo=T0.tzinfo)
KILLED = "d-20260302-174627-0b0b"


def unpin_then_deploy_in_one_second(store: LocalStateStore) -> None:
    """An unpin at 17:46:26.4 whose id's suffix sorts last, and a deploy whose id was made in the same
    second but which started at 17:46:27.1 — after the unpin."""
    Builder("d-20260302-174626-ffff", at=AT, operation="unpin").after(0.1).finish("succeeded", "unpinned").write(store)
    deploy = Builder("d-20260302-174626-0001", at=AT + timedelta(seconds=0.7)).after(1).phase("apply")
    deploy.after(2).finish("succeeded", "deployed").write(store)
    store.write(f"deploys/{KEY}/d-20260302-174626-9999.json", b'{"format": 1, "records": []}', if_generation=None)
    good_deploy().write(store)  # an older second


# ---- 5. order by when each started, not by the id's random suffix -------------------------------------------


def test_history_orders_one_seconds_operations_by_when_they_started(tmp_path: Path) -> None:
    store = LocalStateStore(tmp_path)
    unpin_then_deploy_in_one_second(store)
    assert [(i.deploy_id, i.operation, i.status) for i in read_history(store, KEY)] == [
        ("d-20260302-174626-0001", "deploy", "succeeded"),
        ("d-20260302-174626-ffff", "unpin", "succeeded"),
        ("d-20260302-174626-9999", "?", "unreadable"),  # after the readable ones of its second
        ("d-20260302-093000-a1b2", "deploy", "succeeded"),
    ]
    assert [i.deploy_id for i in read_history(store, KEY, limit=1)] == ["d-20260302-174626-0001"]


def test_why_last_is_the_operation_that_started_last(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    unpin_then_deploy_in_one_second(LocalStateStore(tmp_path / "state"))
    cfg = offline_config(tmp_path, tmp_path / "state")
    capsys.readouterr()
    assert main(["why", "last", "-c", str(cfg), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["deploy_id"] == "d-20260302-174626-0001"


# ---- 4. a running journal whose process is gone --------------------------------------------------------------


def running(deploy_id: str = KILLED) -> DeploySummary:
    b = Builder(deploy_id, at=T0).after(2).phase("apply").service_update("e1")
    return summarize(fold(b.after(10.4).phase("gate_candidate").records))


def lease(deploy_id: str = KILLED, *, pid: int = 3488, host: str = "laptop", ttl_s: float = 120) -> LockInfo:
    owner = Owner(user="ana", host=host, pid=pid)
    return LockInfo(
        service=KEY,
        deploy_id=deploy_id,
        owner=owner,
        acquired_at=T0,
        heartbeat_at=T0 + timedelta(seconds=12),
        expires_at=T0 + timedelta(seconds=12 + ttl_s),
    )


SOON = T0 + timedelta(seconds=15)  # the lease still has 117 s to run


@pytest.mark.parametrize(
    ("lock", "alive", "now", "gone"),
    [
        (lease(), False, SOON, "its process is gone (pid 3488 on laptop)"),
        (lease(), None, T0 + timedelta(minutes=5), "its process is gone or stuck: its lease expired 168 s ago"),
        (None, None, SOON, "its process is gone: it never finished and the service lock is free"),
        (lease("d-20260302-180000-cccc"), True, SOON, "the service lock is held by deploy d-20260302-180000-cccc"),
        (lease(), True, SOON, None),  # alive: still running
        (lease(), None, SOON, None),  # another host, lease fresh: cannot tell, so running
    ],
    ids=["pid-dead", "lease-expired", "lock-free", "lock-elsewhere", "alive", "cannot-tell"],
)
def test_process_gone_says_why_a_running_journal_is_dead(
    lock: LockInfo | None, alive: bool | None, now: datetime, gone: str | None
) -> None:
    got = process_gone(running(), lock, now=now, holder_alive=alive)
    assert got == gone if gone is None or gone.startswith("its") else gone in str(got)


def test_only_running_journals_are_marked() -> None:
    done = summarize(fold(good_deploy().records))
    marked = mark_gone([running(), done], None, now=SOON, holder_alive=None)
    assert marked[0].gone is not None and marked[1].gone is None
    assert marked[0].duration_s(T0 + timedelta(hours=1)) == 12.4  # to its last record, not to now
    assert marked[0].to_json(SOON)["process_gone"] == marked[0].gone


def test_history_calls_a_dead_deploy_interrupted_and_points_at_resume() -> None:
    items = mark_gone([running()], lease(), now=SOON, holder_alive=False)
    for width in (80, 100, 200):
        out = text_of(render_history, items, service=KEY, now=T0 + timedelta(hours=1), width=width)
        flat = " ".join(out.split())
        assert "interrupted" in out and "running" not in out, out
        assert "its process is gone (pid 3488 on laptop)" in flat
        assert "`deployer resume -c CONFIG` finishes or rolls it back" in flat
        assert "12.4 s" in out and "…" not in out


def test_status_calls_a_dead_deploy_interrupted_and_its_lock_gone() -> None:
    item = mark_gone([running()], lease(), now=SOON, holder_alive=False)[0]
    status = build_status(
        service=KEY,
        service_name=SERVICE_NAME,
        at=SOON,
        observed_service=None,
        plan=None,
        history=[item],
        lock=LockView.of(lease(), SOON, holder_alive=False),
    )
    out = text_of(render_status, status, width=300)
    assert f"{KILLED} interrupted, 2026-03-02 09:30:00Z, took 12.4 s until its last record" in out
    assert "so far" not in out
    assert "its process is gone (pid 3488 on laptop): `deployer resume -c CONFIG` finishes or rolls it back" in out
    lock_line = next(line for line in out.splitlines() if line.startswith("lock"))
    assert "(lease expires in 117 s); its process (pid 3488) is gone — `deployer resume -c CONFIG`" in lock_line
    doc = status.to_json()
    assert doc["lock"]["holder_gone"] is True and doc["last_deploy"]["process_gone"] == item.gone


def test_status_with_an_unreadable_state_store_still_shows_what_is_live() -> None:
    svc = {
        "name": SERVICE_NAME,
        "latestReadyRevision": f"{SERVICE_NAME}/revisions/chat-backend-new",
        "trafficStatuses": [
            {"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", "revision": "chat-backend-new", "percent": 100}
        ],
    }
    status = build_status(
        service=KEY, service_name=SERVICE_NAME, at=SOON, observed_service=svc, plan=None, state_error="bucket gone"
    )
    out = text_of(render_status, status, width=200)
    assert "chat-backend-new" in out and "100%" in out
    assert "not shown: the state store cannot be read: bucket gone" in out
    assert "lock  free" not in out and "none in the journal" not in out  # not claimed when unknown
    assert status.to_json()["state_error"] == "bucket gone"


def test_history_cli_marks_a_deploy_whose_holder_pid_is_dead(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI reads the lock and asks this host whether its holder lives (a pid no process has)."""
    store = LocalStateStore(tmp_path / "state")
    b = Builder(KILLED, at=T0).after(2).phase("apply")
    b.write(store)
    dead = Owner.current().model_copy(update={"pid": 2**22 + 17})  # above pid_max's default: never a process
    ServiceLock(store, KEY, clock=lambda: T0, ttl=timedelta(days=3650)).acquire(KILLED, dead)
    cfg = offline_config(tmp_path, tmp_path / "state")
    capsys.readouterr()
    assert main(["history", "-c", str(cfg), "--json"]) == 0
    [item] = json.loads(capsys.readouterr().out)["deploys"]
    assert item["status"] == "running"
    assert item["process_gone"] == f"its process is gone (pid {dead.pid} on {dead.host})"


# ---- 6. a narrow terminal -------------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [80, 100, 120])
def test_history_on_a_narrow_terminal_keeps_every_id_outcome_and_why_whole(width: int) -> None:
    items = [
        summarize(fold(emergency_rollback().records)),
        summarize(fold(rolled_back_deploy().records)),
        summarize(fold(good_deploy(owner=CI).records)),
        running("d-20260302-120000-0a0a"),
    ]
    out = text_of(render_history, items, service=KEY, now=T0 + timedelta(hours=4), width=width)
    lines = out.splitlines()
    assert all(len(line.rstrip()) <= width for line in lines), out
    for item in items:
        head = next(line for line in lines if item.deploy_id in line)  # the full id, on one line
        assert item.operation in head and item.status.replace("_", " ") in head, head
    flat = " ".join(out.split())
    assert "gate_candidate failed: candidate gate Failed: 10/10 measured connections failed (budget 0)" in flat
    assert "the last good revision from the journal (reason: 5xx on /ws)" in flat
    assert "cloudbuild@worker-1 (Cloud Build b-7f3e)" in flat
    assert "took 4 h 00 m…" in flat  # the running one: to now, and marked so
