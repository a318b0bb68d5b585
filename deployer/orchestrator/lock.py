"""One deploy per service at a time: a lease at ``locks/{service}.json`` in the state store.

- ``acquire`` creates the lease only if absent (``if_generation=0``). A lease that exists is
  ``LockHeldError`` (exit 4, naming the holder) unless ``may_take`` (pure) says it may be taken: it
  expired *and* its deploy's journal is finished (or was never written), or it is this very deploy
  being resumed after its lease expired, or the caller preempts (the emergency rollback, issue 7).
  Taking over writes at the old lease's generation, so of two takers exactly one wins.
- The holder heartbeats (``Lease.heartbeat``, or ``Lease.keep_alive()`` in a thread), each time
  at the generation it last wrote: if anyone else wrote or deleted the lease, the heartbeat raises
  ``LockLostError`` and ``Lease.lost`` is set; the deploy checks it between steps and stops.
- ``release`` deletes the lease at its generation.
- A lease whose holder is *dead* counts as expired: ``holder_alive`` (psutil) can tell for a holder on
  this host (its pid is gone, or now belongs to a process started after the lease was taken); on
  another host it cannot, and only expiry counts. ``Lease.confirm`` re-reads the lease (one state read)
  so a deploy can check it still holds the lock right before each mutating call, not only at heartbeats.

Times come from an injected clock. Expiry is judged on the reader's clock against the holder's
written ``expires_at``: keep the TTL well above any clock skew between machines.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import structlog
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from deployer.errors import CorruptStateError, LockHeldError, LockLostError, StaleStateError, StateError
from deployer.orchestrator.owner import Owner
from deployer.state import StateStore, check_key, dump_json, read_json

LOCK_TTL = timedelta(minutes=2)
HEARTBEAT_EVERY = timedelta(seconds=30)

_log = structlog.get_logger("deployer.lock")


def lock_key(service: str) -> str:
    return check_key(f"locks/{service}.json")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class LockInfo(BaseModel):
    """A lease as stored, plus the ``generation`` it was read at (not stored)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    service: str
    deploy_id: str
    purpose: str = "deploy"  # deploy | rollback | resume
    owner: Owner
    acquired_at: AwareDatetime
    heartbeat_at: AwareDatetime
    expires_at: AwareDatetime
    generation: int = Field(default=0, exclude=True)

    def expired(self, now: datetime) -> bool:
        return now >= self.expires_at

    def describe(self, now: datetime) -> str:
        left = (self.expires_at - now).total_seconds()
        lease = f"lease expired {-left:.0f} s ago" if left <= 0 else f"lease expires in {left:.0f} s"
        return (
            f"{self.purpose} {self.deploy_id} by {self.owner.describe()}, "
            f"since {self.acquired_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z ({lease})"
        )


class HolderJournal(StrEnum):
    """What the lease holder's journal says (the caller reads it; lock.py does not)."""

    MISSING = "missing"  # never written: the holder died before acting
    RUNNING = "running"  # not finished: resume or roll it back first
    FINISHED = "finished"


def holder_journal_of(store: StateStore, info: LockInfo) -> HolderJournal:
    """What the lease holder's journal says (``acquire(holder_journal=...)``'s usual argument)."""
    from deployer.errors import DeployerError
    from deployer.orchestrator.journal import load

    try:
        state = load(store, info.service, info.deploy_id)
    except DeployerError:
        return HolderJournal.MISSING
    return HolderJournal.FINISHED if state.is_finished else HolderJournal.RUNNING


class Takeover(StrEnum):
    FREE = "free"  # no lease: create it
    TAKE_OVER = "take_over"  # replace the lease at its generation
    HELD = "held"  # alive (not expired): refuse, exit 4
    RESUME_FIRST = "resume_first"  # expired, but its deploy may have left things half-changed


def holder_alive(info: LockInfo, *, host: str | None = None) -> bool | None:
    """Whether the lease holder's process still runs: ``None`` when this host cannot tell (another host).

    A pid that exists but belongs to a process created after the lease was acquired is a reused pid:
    the holder is dead."""
    import socket

    import psutil

    if info.owner.host != (host or socket.gethostname()):
        return None
    try:
        proc = psutil.Process(info.owner.pid)
        created = proc.create_time()
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return None
    return created <= info.acquired_at.timestamp() + 1.0  # create_time has ~10 ms resolution


def may_take(
    lease: LockInfo | None,
    *,
    now: datetime,
    deploy_id: str,
    holder_journal: HolderJournal | None,
    preempt: bool = False,
    holder_dead: bool = False,
) -> Takeover:
    """Whether ``deploy_id`` may take the service lock (pure).

    ``holder_journal`` is the state of the holder's journal, ``None`` when the caller did not look
    (then an expired lease is never taken: its deploy may need resuming). ``preempt`` (the emergency
    rollback) takes any lease; the deploy it displaces notices at its next heartbeat and stops.
    ``holder_dead``: the holder's process is known to be gone: its lease counts as expired.
    """
    if lease is None:
        return Takeover.FREE
    if preempt:
        return Takeover.TAKE_OVER
    if not lease.expired(now) and not holder_dead:
        return Takeover.HELD  # the holder is alive (or died less than a TTL ago), even if it is us
    if lease.deploy_id == deploy_id:
        return Takeover.TAKE_OVER  # resuming our own deploy after its process died
    if holder_journal in (HolderJournal.FINISHED, HolderJournal.MISSING):
        return Takeover.TAKE_OVER
    return Takeover.RESUME_FIRST


class ServiceLock:
    """The lock of one service in one state store."""

    def __init__(
        self,
        store: StateStore,
        service: str,
        *,
        clock: Callable[[], datetime] = _utcnow,
        ttl: timedelta = LOCK_TTL,
    ) -> None:
        self.store, self.service, self.clock, self.ttl = store, service, clock, ttl
        self.key = lock_key(service)

    @property
    def where(self) -> str:
        """Where the lease is (``gs://…`` or a file), for messages."""
        return self.store.where(self.key)

    def read(self) -> LockInfo | None:
        try:
            got = read_json(self.store, self.key)
        except CorruptStateError as exc:  # left as it is: only `unlock --force` removes it, journaled
            raise CorruptStateError(
                f"the lock {self.where} is unreadable: {exc.fields.get('problem') or exc.message}",
                hint="inspect it; `deployer unlock --force --reason ...` removes it",
            ) from exc
        if got is None:
            return None
        doc, generation = got
        try:
            return LockInfo.model_validate({**doc, "generation": generation})
        except (ValidationError, TypeError) as exc:
            raise CorruptStateError(
                f"the lock {self.where} is unreadable",
                hint=f"inspect it; `deployer unlock --force --reason ...` removes it ({exc.__class__.__name__})",
            ) from exc

    def acquire(
        self,
        deploy_id: str,
        owner: Owner,
        *,
        purpose: str = "deploy",
        holder_journal: Callable[[LockInfo], HolderJournal] | None = None,
        preempt: bool = False,
        holder_dead: Callable[[LockInfo], bool] | None = None,
    ) -> Lease:
        """Take the lock for ``deploy_id`` or raise ``LockHeldError`` naming the holder.

        ``holder_journal(lease)`` is asked only for an expired (or dead) lease (read the holder's journal);
        ``holder_dead(lease)`` only for a lease that has not expired (``holder_alive`` is the usual one)."""
        for _ in range(5):  # only a race with another taker loops
            current = self.read()
            now = self.clock()
            journal_state = None
            dead = False
            if current is not None and not current.expired(now) and holder_dead is not None and not preempt:
                dead = holder_dead(current)
            if current is not None and (current.expired(now) or dead) and holder_journal is not None:
                journal_state = holder_journal(current)
            verdict = may_take(
                current,
                now=now,
                deploy_id=deploy_id,
                holder_journal=journal_state,
                preempt=preempt,
                holder_dead=dead,
            )
            if verdict is Takeover.HELD and current is not None:
                raise LockHeldError(
                    f"{self.service} is locked by {current.describe(now)}",
                    hint="wait for it to finish; if it died, its lease expires and `deployer resume -c CONFIG` "
                    "finishes or rolls it back",
                    holder=current.model_dump(mode="json"),
                )
            if verdict is Takeover.RESUME_FIRST and current is not None:
                known = "is not finished" if journal_state is HolderJournal.RUNNING else "was not checked"
                gone = " (its process is gone)" if dead else ""
                raise LockHeldError(
                    f"{self.service} is locked by {current.describe(now)}{gone}, and that deploy's journal {known}: "
                    "it may have left resources half-changed",
                    hint=f"run `deployer resume -c CONFIG` to finish or roll back {current.deploy_id} first",
                    holder=current.model_dump(mode="json"),
                )
            info = LockInfo(
                service=self.service,
                deploy_id=deploy_id,
                purpose=purpose,
                owner=owner,
                acquired_at=now,
                heartbeat_at=now,
                expires_at=now + self.ttl,
            )
            expect = 0 if current is None else current.generation
            try:
                generation = self.store.write(self.key, dump_json(info.model_dump(mode="json")), if_generation=expect)
            except StaleStateError:
                continue
            info = info.model_copy(update={"generation": generation})
            _log.info(
                "lock.acquired",
                service=self.service,
                deploy_id=deploy_id,
                purpose=purpose,
                took_over_from=current.deploy_id if current is not None else None,
                preempted=bool(preempt and current is not None and not current.expired(now)),
            )
            return Lease(self, info)
        raise LockHeldError(
            f"{self.service}: the lock keeps changing hands; another deploy is taking it right now",
            hint="try again in a minute",
        )

    def force_unlock_unreadable(self, *, reason: str, by: Owner) -> bool:
        """Remove a lease that cannot be read (corrupt JSON, a wrong shape, a broken header): what
        ``read`` refuses, ``unlock --force`` must still be able to clear. Conditional on the generation
        when the store can tell it, so a lease rewritten meanwhile is not removed blind."""
        try:
            got = self.store.read(self.key)
        except CorruptStateError:
            generation = None  # not even a generation (a local file without deployer's header)
        else:
            if got is None:
                return False
            generation = got[1]
        try:
            removed = self.store.delete(self.key, if_generation=generation)
        except StaleStateError as exc:
            raise StateError(
                f"the lock of {self.service} changed while it was being removed", hint="look at it again"
            ) from exc
        _log.warning("lock.forced_unlock", service=self.service, unreadable=True, reason=reason, by=by.describe())
        return removed

    def force_unlock(self, *, reason: str, by: Owner) -> LockInfo | None:
        """Remove whatever lease is there (``deployer unlock --force --reason``); returns it, or
        ``None`` when there was none. The caller journals it (decision ``force_unlock``)."""
        current = self.read()
        if current is None:
            return None
        try:
            self.store.delete(self.key, if_generation=current.generation)
        except StaleStateError as exc:
            raise StateError(
                f"the lock of {self.service} changed while it was being removed", hint="look at it again"
            ) from exc
        _log.warning(
            "lock.forced_unlock",
            service=self.service,
            deploy_id=current.deploy_id,
            holder=current.owner.describe(),
            reason=reason,
            by=by.describe(),
        )
        return current


class Lease:
    """A held lock. Thread-safe: the heartbeat thread and the deploy share it."""

    def __init__(self, lock: ServiceLock, info: LockInfo) -> None:
        self._lock_ref = lock
        self._info = info
        self._mutex = threading.Lock()
        self.lost = threading.Event()
        self.released = False

    @property
    def info(self) -> LockInfo:
        with self._mutex:
            return self._info

    def _lost(self, why: str, cause: BaseException | None = None) -> LockLostError:
        self.lost.set()
        lock = self._lock_ref
        now_holder = None
        with contextlib.suppress(StateError):
            now_holder = lock.read()
        who = f"; it is now held by {now_holder.describe(lock.clock())}" if now_holder else "; it was removed"
        _log.error("lock.lost", service=lock.service, deploy_id=self._info.deploy_id, why=why)
        err = LockLostError(
            f"{lock.service}: this deploy ({self._info.deploy_id}) lost its lock ({why}){who}",
            hint="another deploy, a rollback or `unlock --force` took it; this deploy stops here",
        )
        err.__cause__ = cause
        return err

    def heartbeat(self) -> LockInfo:
        """Extend the lease; ``LockLostError`` when anyone else wrote or removed it."""
        lock = self._lock_ref
        with self._mutex:
            if self.released:
                raise LockLostError(f"{lock.service}: the lease of {self._info.deploy_id} was already released")
            now = lock.clock()
            new = self._info.model_copy(update={"heartbeat_at": now, "expires_at": now + lock.ttl})
            try:
                generation = lock.store.write(
                    lock.key, dump_json(new.model_dump(mode="json")), if_generation=self._info.generation
                )
            except StaleStateError as exc:
                raise self._lost("the lease changed under us", exc) from exc
            self._info = new.model_copy(update={"generation": generation})
            return self._info

    def confirm(self) -> None:
        """Re-read the lease (one state read) and raise ``LockLostError`` unless it is still ours, at the
        generation we last wrote: what a deploy calls right before each mutating call."""
        self.check()
        lock = self._lock_ref
        with self._mutex:  # not between a heartbeat's write and its record of the new generation
            current = lock.read()
            ours = current is not None and current.generation == self._info.generation and not self.released
        if not ours:
            raise self._lost("it was taken or removed")

    def check(self) -> None:
        """Raise ``LockLostError`` if a heartbeat found the lease gone (call between steps)."""
        if self.lost.is_set():
            raise LockLostError(
                f"{self._lock_ref.service}: this deploy ({self._info.deploy_id}) lost its lock",
                hint="another deploy, a rollback or `unlock --force` took it; this deploy stops here",
            )

    def release(self) -> None:
        """Remove the lease; ``LockLostError`` when it is no longer ours (nothing is removed then)."""
        lock = self._lock_ref
        with self._mutex:
            if self.released:
                return
            try:
                lock.store.delete(lock.key, if_generation=self._info.generation)
            except StaleStateError as exc:
                raise self._lost("it changed before release", exc) from exc
            self.released = True
        _log.info("lock.released", service=lock.service, deploy_id=self._info.deploy_id)

    @contextlib.contextmanager
    def keep_alive(
        self, every: timedelta = HEARTBEAT_EVERY, *, on_lost: Callable[[], None] | None = None
    ) -> Iterator[Lease]:
        """Heartbeat in a daemon thread while the block runs. A lost lease sets ``lost``, calls
        ``on_lost`` (e.g. interrupt a bake or a gate) and stops the thread; a store error is logged and
        retried at the next beat (if it lasts past the TTL, someone may take the lease and the next beat
        finds it lost)."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(every.total_seconds()):
                try:
                    self.heartbeat()
                except LockLostError:
                    if on_lost is not None:
                        on_lost()
                    return
                except StateError as exc:
                    _log.warning("lock.heartbeat_failed", service=self._lock_ref.service, error=str(exc))

        thread = threading.Thread(target=beat, name=f"lease-{self._lock_ref.service}", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(timeout=max(5.0, every.total_seconds()))

    def __repr__(self) -> str:
        info: Any = self._info
        return f"Lease({info.service!r}, {info.deploy_id!r}, generation={info.generation})"
