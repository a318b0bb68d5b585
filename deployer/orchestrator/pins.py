"""Pins: "traffic stays on this revision until a person says otherwise", at ``pins/{service}.json``.

An emergency rollback (``deployer rollback``) records a pin after it moved traffic: who pinned, why,
when, until when (24 h by default, ``--pin-for``), to which revision, and the rollback's journal id.
While an unexpired pin holds, ``deployer deploy`` refuses (exit 4, like a held lock: someone is in
charge of this service) unless ``--unpin`` — then the deploy clears the pin first, journaled — and
``deployer unpin -c CONFIG --reason TEXT`` clears it on its own, journaled. An expired pin is shown
(``deployer status``) but no longer refuses anything.

The API other commands read (``deployer status`` shows the pin):

- ``read_pin(store, service) -> Pin | None``: the stored pin, expired or not (``Pin.active(now)``,
  ``Pin.describe(now)``); ``service`` is the state key ``project/region/service`` (``deploy.state_key``).
- ``active_pin(store, service, now)``: the pin only while it holds.
- ``write_pin`` / ``clear_pin``: the rollback and unpin write them while holding the service lock;
  ``clear_pin`` deletes at the generation read, so a pin written meanwhile is never removed unseen.
- ``unpin(...)``: the whole ``deployer unpin`` (lock, journal ``unpin``, delete, release).

Times come from an injected clock; ``parse_duration("24h")`` reads ``--pin-for``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from deployer.errors import StaleStateError, StateError, UsageError
from deployer.orchestrator.owner import Owner
from deployer.state import StateStore, check_key, dump_json, read_json

DEFAULT_PIN_TTL = timedelta(hours=24)
UNPIN = "unpin"  # the decision recorded when a pin is cleared


def pin_key(service: str) -> str:
    return check_key(f"pins/{service}.json")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Pin(BaseModel):
    """A pin as stored, plus the ``generation`` it was read at (not stored)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    service: str
    revision: str  # the revision traffic was moved to (short name)
    reason: str  # why (the rollback's --reason)
    owner: Owner  # who
    pinned_at: AwareDatetime  # when
    expires_at: AwareDatetime  # until when it refuses deploys
    rollback_id: str  # the journal of the rollback that pinned
    generation: int = Field(default=0, exclude=True)

    def active(self, now: datetime) -> bool:
        return now < self.expires_at

    def expired(self, now: datetime) -> bool:
        return not self.active(now)

    def describe(self, now: datetime) -> str:
        left = (self.expires_at - now).total_seconds()
        until = f"for another {_human(left)}" if left > 0 else f"expired {_human(-left)} ago"
        return (
            f"pinned to {self.revision} by {self.owner.describe()} "
            f"at {self.pinned_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z ({until}; rollback {self.rollback_id}): "
            f"{self.reason}"
        )


def _human(seconds: float) -> str:
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min"
    return f"{s} s"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d)?\s*$")


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``24h``, ``7d`` (a bare number is hours); ``UsageError`` otherwise."""
    m = _DURATION.match(text or "")
    if m is None:
        raise UsageError(f"--pin-for: {text!r} is not a duration (e.g. 30m, 24h, 7d)")
    value = float(m.group(1))
    unit = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, None: 3600}[m.group(2)]
    seconds = value * unit
    if seconds <= 0:
        raise UsageError("--pin-for must be longer than 0")
    return timedelta(seconds=seconds)


def read_pin(store: StateStore, service: str) -> Pin | None:
    """The stored pin of ``service`` (expired or not), or ``None``."""
    got = read_json(store, pin_key(service))
    if got is None:
        return None
    doc, generation = got
    try:
        return Pin.model_validate({**doc, "generation": generation})
    except (ValidationError, TypeError) as exc:
        raise StateError(
            f"the pin {store.where(pin_key(service))} is unreadable",
            hint="`deployer unpin -c CONFIG --reason ...` removes it",
        ) from exc


def active_pin(store: StateStore, service: str, now: datetime) -> Pin | None:
    pin = read_pin(store, service)
    return pin if pin is not None and pin.active(now) else None


def new_pin(
    service: str,
    *,
    revision: str,
    reason: str,
    owner: Owner,
    now: datetime,
    ttl: timedelta,
    rollback_id: str,
) -> Pin:
    return Pin(
        service=service,
        revision=revision,
        reason=reason,
        owner=owner,
        pinned_at=now,
        expires_at=now + ttl,
        rollback_id=rollback_id,
    )


def write_pin(store: StateStore, pin: Pin) -> Pin:
    """Store ``pin`` over whatever pin is there (the caller holds the service lock)."""
    generation = store.write(pin_key(pin.service), dump_json(pin.model_dump(mode="json")), if_generation=None)
    return pin.model_copy(update={"generation": generation})


def clear_pin(store: StateStore, pin: Pin) -> bool:
    """Delete ``pin`` if it is still the one stored (its generation); ``False`` when it is gone already.
    A different pin written since it was read raises ``StaleStateError``."""
    try:
        return store.delete(pin_key(pin.service), if_generation=pin.generation)
    except StaleStateError:
        if read_pin(store, pin.service) is None:
            return False
        raise


@dataclass(frozen=True)
class UnpinResult:
    pin: Pin | None  # the pin that was cleared (None: there was none)
    journal_id: str | None

    def message(self, now: datetime) -> str:
        if self.pin is None:
            return "not pinned: nothing to clear"
        return f"unpinned ({self.pin.describe(now)}); journal {self.journal_id}"


def unpin(
    store: StateStore,
    service: str,
    *,
    reason: str,
    owner: Owner,
    clock: Callable[[], datetime] = _utcnow,
    lock_ttl: timedelta | None = None,
) -> UnpinResult:
    """``deployer unpin``: under the service lock, journal (operation ``unpin``) and delete the pin.

    A lock held by a live deploy or rollback is ``LockHeldError`` (exit 4): the pin is theirs to change."""
    from deployer.orchestrator.journal import new_deploy_id
    from deployer.orchestrator.lock import LOCK_TTL, ServiceLock, holder_alive, holder_journal_of

    pin = read_pin(store, service)
    if pin is None:
        return UnpinResult(None, None)
    op_id = new_deploy_id(clock())
    lock = ServiceLock(store, service, clock=clock, ttl=lock_ttl or LOCK_TTL)
    lease = lock.acquire(
        op_id,
        owner,
        purpose="unpin",
        holder_journal=lambda info: holder_journal_of(store, info),
        holder_dead=lambda info: holder_alive(info) is False,
    )
    try:
        pin = read_pin(store, service)  # read again under the lock
        if pin is None:
            return UnpinResult(None, None)
        clear_journaled(store, pin, reason=reason, owner=owner, clock=clock, op_id=op_id)
        return UnpinResult(pin, op_id)
    finally:
        lease.release()


def clear_journaled(
    store: StateStore,
    pin: Pin,
    *,
    reason: str,
    owner: Owner,
    clock: Callable[[], datetime] = _utcnow,
    op_id: str | None = None,
    by_deploy: str | None = None,
) -> str:
    """Clear ``pin`` with its own journal (operation ``unpin``: started, decision ``unpin``, finished);
    the caller holds the service lock (``unpin``, or ``deploy --unpin``). Returns the journal id."""
    from deployer.orchestrator.journal import Journal, new_deploy_id

    op_id = op_id or new_deploy_id(clock())
    journal = Journal.begin(
        store,
        service=pin.service,
        deploy_id=op_id,
        config_digest="",
        owner=owner,
        operation="unpin",
        reason=reason,
        clock=clock,
    )
    detail = {"pin": pin.model_dump(mode="json"), "by": owner.describe()}
    if by_deploy:
        detail["deploy"] = by_deploy
    journal.decision(UNPIN, reason, **detail)
    clear_pin(store, pin)
    journal.finish("succeeded", f"unpinned {pin.revision}", revision=pin.revision, unpinned=pin.rollback_id)
    return op_id
