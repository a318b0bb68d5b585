"""The service lock: the pure take-over rule, and leases on every state store (threads and processes)."""

from __future__ import annotations

import multiprocessing
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from structlog.testing import capture_logs

from deployer.errors import LockHeldError, LockLostError, StateError
from deployer.orchestrator.lock import (
    HolderJournal,
    LockInfo,
    ServiceLock,
    Takeover,
    lock_key,
    may_take,
)
from deployer.orchestrator.owner import Owner
from deployer.state import StateStore
from tests.state.stores import StoreSpec, fresh_namespace

T0 = datetime(2026, 11, 26, 14, 52, 1, tzinfo=UTC)
ALICE = Owner(user="alice", host="laptop", pid=11, build_id=None)
CI = Owner(user="cloudbuild", host="worker-7", pid=1, build_id="b-1234")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def lease_info(deploy_id: str = "d-20261126-145201-aaaa", expires_in: float = 60) -> LockInfo:
    return LockInfo(
        service="api",
        deploy_id=deploy_id,
        owner=ALICE,
        acquired_at=T0,
        heartbeat_at=T0,
        expires_at=T0 + timedelta(seconds=expires_in),
        generation=7,
    )


# ---- the rule (pure) -----------------------------------------------------------------------------------

NEW, LEASED = "d-20261126-150000-bbbb", "d-20261126-145201-aaaa"


@pytest.mark.parametrize(
    ("lease", "journal", "deploy_id", "preempt", "verdict"),
    [
        (None, None, NEW, False, Takeover.FREE),
        (lease_info(expires_in=60), HolderJournal.FINISHED, NEW, False, Takeover.HELD),
        (lease_info(expires_in=60), None, LEASED, False, Takeover.HELD),  # our own deploy, still alive
        (lease_info(expires_in=0), HolderJournal.RUNNING, NEW, False, Takeover.RESUME_FIRST),
        (lease_info(expires_in=-5), None, NEW, False, Takeover.RESUME_FIRST),  # journal not looked at
        (lease_info(expires_in=-5), HolderJournal.FINISHED, NEW, False, Takeover.TAKE_OVER),
        (lease_info(expires_in=-5), HolderJournal.MISSING, NEW, False, Takeover.TAKE_OVER),
        (lease_info(expires_in=-5), HolderJournal.RUNNING, LEASED, False, Takeover.TAKE_OVER),  # resuming it
        (lease_info(expires_in=60), HolderJournal.RUNNING, NEW, True, Takeover.TAKE_OVER),  # emergency rollback
    ],
)
def test_may_take(
    lease: LockInfo | None, journal: HolderJournal | None, deploy_id: str, preempt: bool, verdict: Takeover
) -> None:
    assert may_take(lease, now=T0, deploy_id=deploy_id, holder_journal=journal, preempt=preempt) is verdict


# ---- leases on a store ---------------------------------------------------------------------------------


def test_acquire_release_and_acquire_again(store: StateStore) -> None:
    clock = Clock()
    lock = ServiceLock(store, "api", clock=clock)
    with capture_logs() as logs:
        lease = lock.acquire("d-20261126-145201-aaaa", CI)
        stored = lock.read()
        assert stored == lease.info
        assert stored is not None and stored.owner.build_id == "b-1234"
        assert stored.expires_at == T0 + timedelta(minutes=2)
        lease.release()
        assert lock.read() is None and store.read(lock_key("api")) is None
        lock.acquire("d-20261126-145201-bbbb", ALICE)
    assert logs == [
        {
            "event": "lock.acquired",
            "log_level": "info",
            "service": "api",
            "deploy_id": "d-20261126-145201-aaaa",
            "purpose": "deploy",
            "took_over_from": None,
            "preempted": False,
        },
        {"event": "lock.released", "log_level": "info", "service": "api", "deploy_id": "d-20261126-145201-aaaa"},
        {
            "event": "lock.acquired",
            "log_level": "info",
            "service": "api",
            "deploy_id": "d-20261126-145201-bbbb",
            "purpose": "deploy",
            "took_over_from": None,
            "preempted": False,
        },
    ]


def test_a_held_lock_is_exit_4_naming_the_holder(store: StateStore) -> None:
    clock = Clock()
    ServiceLock(store, "api", clock=clock).acquire("d-20261126-145201-aaaa", CI)
    clock.advance(30)
    asked: list[LockInfo] = []

    def journal_of(info: LockInfo) -> HolderJournal:
        asked.append(info)
        return HolderJournal.FINISHED

    with pytest.raises(LockHeldError) as info:
        ServiceLock(store, "api", clock=clock).acquire("d-20261126-145231-bbbb", ALICE, holder_journal=journal_of)
    err = info.value
    assert err.exit_code == 4
    assert err.message == (
        "api is locked by deploy d-20261126-145201-aaaa by cloudbuild@worker-7 pid 1, Cloud Build b-1234, "
        "since 2026-11-26 14:52:01Z (lease expires in 90 s)"
    )
    assert err.fields["holder"]["deploy_id"] == "d-20261126-145201-aaaa"
    assert asked == []  # a live lease is never taken: its journal is not even read


def test_an_expired_lease_whose_deploy_is_unfinished_must_be_resumed_first(store: StateStore) -> None:
    clock = Clock()
    ServiceLock(store, "api", clock=clock).acquire("d-20261126-145201-aaaa", CI)
    clock.advance(121)
    with pytest.raises(LockHeldError, match="journal is not finished") as info:
        ServiceLock(store, "api", clock=clock).acquire(
            "d-20261126-145402-bbbb", ALICE, holder_journal=lambda _: HolderJournal.RUNNING
        )
    assert info.value.hint is not None and "deployer resume" in info.value.hint
    with pytest.raises(LockHeldError, match="journal was not checked"):
        ServiceLock(store, "api", clock=clock).acquire("d-20261126-145402-bbbb", ALICE)
    # resume of that very deploy takes it over
    resumed = ServiceLock(store, "api", clock=clock).acquire("d-20261126-145201-aaaa", ALICE, purpose="resume")
    assert resumed.info.purpose == "resume" and resumed.info.owner == ALICE


def test_an_expired_finished_lease_is_taken_over_and_the_old_holder_finds_out(store: StateStore) -> None:
    clock = Clock()
    old = ServiceLock(store, "api", clock=clock).acquire("d-20261126-145201-aaaa", CI)
    clock.advance(200)  # the CI job was killed after finishing its journal, before releasing
    with capture_logs() as logs:
        new = ServiceLock(store, "api", clock=clock).acquire(
            "d-20261126-145521-bbbb", ALICE, holder_journal=lambda _: HolderJournal.FINISHED
        )
    assert logs[0]["took_over_from"] == "d-20261126-145201-aaaa"
    with capture_logs() as logs, pytest.raises(LockLostError, match="now held by deploy d-20261126-145521-bbbb"):
        old.heartbeat()
    assert old.lost.is_set()
    assert logs[0]["event"] == "lock.lost"
    with pytest.raises(LockLostError):
        old.check()
    with pytest.raises(LockLostError):
        old.release()
    assert ServiceLock(store, "api").read() == new.info  # the loser removed nothing


def test_heartbeat_extends_the_lease_at_a_new_generation(store: StateStore) -> None:
    clock = Clock()
    lease = ServiceLock(store, "api", clock=clock).acquire("d-20261126-145201-aaaa", CI)
    first = lease.info
    clock.advance(30)
    beat = lease.heartbeat()
    assert beat.generation != first.generation
    assert (beat.heartbeat_at, beat.expires_at) == (T0 + timedelta(seconds=30), T0 + timedelta(seconds=150))
    assert ServiceLock(store, "api").read() == beat
    lease.check()  # not lost


def test_preemption_by_the_emergency_rollback(store: StateStore) -> None:
    clock = Clock()
    deploy = ServiceLock(store, "api", clock=clock).acquire("d-20261126-145201-aaaa", CI)
    with capture_logs() as logs:
        rollback = ServiceLock(store, "api", clock=clock).acquire(
            "d-20261126-145300-cccc", ALICE, purpose="rollback", preempt=True
        )
    assert logs[0]["preempted"] is True and logs[0]["took_over_from"] == "d-20261126-145201-aaaa"
    with pytest.raises(LockLostError, match="rollback d-20261126-145300-cccc"):
        deploy.heartbeat()
    rollback.release()


def test_force_unlock(store: StateStore) -> None:
    clock = Clock()
    lock = ServiceLock(store, "api", clock=clock)
    assert lock.force_unlock(reason="stale", by=ALICE) is None
    held = lock.acquire("d-20261126-145201-aaaa", CI)
    with capture_logs() as logs:
        removed = lock.force_unlock(reason="CI runner gone", by=ALICE)
    assert removed == held.info
    assert logs == [
        {
            "event": "lock.forced_unlock",
            "log_level": "warning",
            "service": "api",
            "deploy_id": "d-20261126-145201-aaaa",
            "holder": "cloudbuild@worker-7 pid 1, Cloud Build b-1234",
            "reason": "CI runner gone",
            "by": "alice@laptop pid 11",
        }
    ]
    with pytest.raises(LockLostError, match="it was removed"):
        held.heartbeat()


def test_an_unreadable_lock_is_a_state_error_naming_where_it_is(store: StateStore) -> None:
    where = store.where(lock_key("api"))  # gs://bucket/prefix/locks/api.json, or the file's absolute path
    store.write(lock_key("api"), b'{"holder": "a shell script"}', if_generation=0)
    with pytest.raises(StateError) as info:
        ServiceLock(store, "api").acquire("d-20261126-145201-aaaa", ALICE)
    assert info.value.message == f"the lock {where} is unreadable"
    assert str(info.value.hint).startswith("inspect it; `deployer unlock --force --reason ...` removes it")
    store.write(lock_key("api"), b"{{{", if_generation=None)  # not JSON: named once, with what is wrong
    with pytest.raises(StateError) as info:
        ServiceLock(store, "api").read()
    assert info.value.message.startswith(f"the lock {where} is unreadable: not valid JSON: "), info.value.message
    assert info.value.message.count(where) == 1


def _wait_for(condition: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return bool(condition())


def test_keep_alive_heartbeats_in_the_background_and_notices_a_lost_lease(store: StateStore) -> None:
    lock = ServiceLock(store, "api")  # real clock: the thread beats every 10 ms
    lease = lock.acquire("d-20261126-145201-aaaa", CI)
    first_generation = lease.info.generation
    with lease.keep_alive(every=timedelta(milliseconds=10)):
        assert _wait_for(lambda: (lock.read() or lease.info).generation != first_generation)
        lease.check()
        ServiceLock(store, "api").acquire("d-20261126-145300-cccc", ALICE, purpose="rollback", preempt=True)
        assert _wait_for(lease.lost.is_set)
        with pytest.raises(LockLostError):
            lease.check()
    held = lock.read()
    assert held is not None and held.deploy_id == "d-20261126-145300-cccc"


def test_owner_from_the_environment() -> None:
    me = Owner.current({"BUILD_ID": "b-77"})
    assert me.build_id == "b-77" and me.pid > 0 and me.user and me.host
    assert Owner.current({}).build_id is None


# ---- processes racing for a free lock ----------------------------------------------------------------------


def _acquire_worker(spec: Any, namespace: str, start: Any, results: Any, ident: int) -> None:
    lock = ServiceLock(spec.open(namespace), "api")
    start.wait(30)
    try:
        lock.acquire(f"d-20261126-145201-000{ident}", Owner.current())
        results.put((ident, "held"))
    except LockHeldError as exc:
        results.put((ident, exc.fields["holder"]["deploy_id"]))


def test_processes_racing_for_the_lock_exactly_one_gets_it(store_spec: StoreSpec) -> None:
    namespace = fresh_namespace()
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_acquire_worker, args=(store_spec, namespace, start, results, i)) for i in range(4)]
    for p in procs:
        p.start()
    try:
        start.set()
        outcomes = dict(results.get(timeout=60) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=30)
    winners = [i for i, what in outcomes.items() if what == "held"]
    assert len(winners) == 1, outcomes
    winner_id = f"d-20261126-145201-000{winners[0]}"
    assert all(what == winner_id for i, what in outcomes.items() if i != winners[0])  # losers name the winner
    held = ServiceLock(store_spec.open(namespace), "api").read()
    assert held is not None and held.deploy_id == winner_id
