"""Locks in practice (issue 7): a dead holder counts as expired, ``Lease.confirm`` before each write,
``keep_alive(on_lost=...)``, and a lease taken by an emergency rollback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta

import pytest

from deployer.errors import LockHeldError, LockLostError
from deployer.orchestrator.lock import HolderJournal, LockInfo, ServiceLock, Takeover, holder_alive, may_take
from deployer.orchestrator.owner import Owner
from deployer.state import StateStore

HERE = socket.gethostname()


def info(owner: Owner, acquired: datetime, expires_in: float = 120) -> LockInfo:
    return LockInfo(
        service="api",
        deploy_id="d-20261126-145201-aaaa",
        owner=owner,
        acquired_at=acquired,
        heartbeat_at=acquired,
        expires_at=acquired + timedelta(seconds=expires_in),
    )


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_holder_alive_on_this_host_and_unknown_elsewhere() -> None:
    now = datetime.now(UTC)
    assert holder_alive(info(Owner(user="me", host=HERE, pid=os.getpid()), now)) is True
    assert holder_alive(info(Owner(user="me", host=HERE, pid=dead_pid()), now)) is False
    assert holder_alive(info(Owner(user="ci", host="another-host", pid=os.getpid()), now)) is None
    # a pid that runs, but started after the lease was taken, is a reused pid: the holder is dead
    assert holder_alive(info(Owner(user="me", host=HERE, pid=os.getpid()), now - timedelta(days=3650))) is False


def test_a_dead_holder_counts_as_expired() -> None:
    now = datetime.now(UTC)
    lease = info(Owner(user="me", host=HERE, pid=1), now)
    new = "d-20261126-150000-bbbb"
    assert may_take(lease, now=now, deploy_id=new, holder_journal=HolderJournal.RUNNING) is Takeover.HELD
    assert (
        may_take(lease, now=now, deploy_id=new, holder_journal=HolderJournal.RUNNING, holder_dead=True)
        is Takeover.RESUME_FIRST
    )
    assert (
        may_take(lease, now=now, deploy_id=lease.deploy_id, holder_journal=HolderJournal.RUNNING, holder_dead=True)
        is Takeover.TAKE_OVER
    )  # resuming that very journal


def test_acquire_says_when_the_holders_process_is_gone(store: StateStore) -> None:
    lock = ServiceLock(store, "api")
    lock.acquire("d-20261126-145201-aaaa", Owner(user="ci", host=HERE, pid=dead_pid()))
    with pytest.raises(LockHeldError) as err:
        lock.acquire(
            "d-20261126-150000-bbbb",
            Owner.current(),
            holder_journal=lambda _i: HolderJournal.RUNNING,
            holder_dead=lambda i: holder_alive(i) is False,
        )
    assert "(its process is gone)" in err.value.message and "deployer resume" in str(err.value.hint)


def test_confirm_never_mistakes_its_own_heartbeat_for_a_lost_lease(store: StateStore) -> None:
    lease = ServiceLock(store, "api").acquire("d-20261126-145201-aaaa", Owner.current())
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            lease.heartbeat()

    thread = threading.Thread(target=beat)
    thread.start()
    try:
        for _ in range(200):
            lease.confirm()
    finally:
        stop.set()
        thread.join()
    assert not lease.lost.is_set()


def test_confirm_and_keep_alive_notice_a_preemption(store: StateStore) -> None:
    lock = ServiceLock(store, "api")
    lease = lock.acquire("d-20261126-145201-aaaa", Owner.current())
    noticed = threading.Event()
    with lease.keep_alive(timedelta(seconds=0.02), on_lost=noticed.set):
        lock.acquire(
            "d-20261126-150000-bbbb", Owner(user="oncall", host="laptop", pid=7), purpose="rollback", preempt=True
        )
        assert noticed.wait(5)
    with pytest.raises(LockLostError) as err:
        lease.confirm()
    assert "lost its lock" in err.value.message
    assert lease.lost.is_set()
