"""Pins: the value, durations, reading/writing/clearing on every state store, and ``unpin`` journaled."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from deployer.errors import LockHeldError, StaleStateError, StateError, UsageError
from deployer.orchestrator.journal import latest, list_deploys
from deployer.orchestrator.lock import ServiceLock, lock_key
from deployer.orchestrator.owner import Owner
from deployer.orchestrator.pins import (
    UNPIN,
    Pin,
    active_pin,
    clear_pin,
    new_pin,
    parse_duration,
    pin_key,
    read_pin,
    unpin,
    write_pin,
)
from deployer.state import StateStore, dump_json

T0 = datetime(2026, 11, 26, 3, 14, 0, tzinfo=UTC)
ONCALL = Owner(user="oncall", host="laptop", pid=77)
OPS = Owner(user="ops", host="other-host", pid=5)
SERVICE = "proj/us-central1/api"


def a_pin(**kw: object) -> Pin:
    base: dict[str, object] = {
        "revision": "api-00001-abc",
        "reason": "5xx after v2",
        "owner": ONCALL,
        "now": T0,
        "ttl": timedelta(hours=24),
        "rollback_id": "d-20261126-031400-beef",
    }
    base.update(kw)
    return new_pin(SERVICE, **base)  # type: ignore[arg-type]


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


# ---- the value (pure) ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("30min", 1800), ("24h", 86400), ("7d", 604800), ("2", 7200), (" 1.5h ", 5400)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "soon", "-1h", "0", "1w", "h"])
def test_a_bad_duration_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_duration(text)
    assert info.value.exit_code == 2 and "--pin-for" in info.value.message


def test_a_pin_holds_until_it_expires_and_says_who_why_when() -> None:
    pin = a_pin(ttl=timedelta(hours=2))
    assert pin.expires_at == T0 + timedelta(hours=2)
    assert pin.active(T0 + timedelta(minutes=119)) and not pin.active(T0 + timedelta(hours=2))
    assert pin.expired(T0 + timedelta(hours=3))
    assert pin.describe(T0 + timedelta(minutes=30)) == (
        "pinned to api-00001-abc by oncall@laptop pid 77 at 2026-11-26 03:14:00Z "
        "(for another 1 h 30 min; rollback d-20261126-031400-beef): 5xx after v2"
    )
    assert "expired 1 h 00 min ago" in pin.describe(T0 + timedelta(hours=3))


# ---- on a store ------------------------------------------------------------------------------------------


def test_write_read_and_clear(store: StateStore) -> None:
    assert read_pin(store, SERVICE) is None and active_pin(store, SERVICE, T0) is None
    written = write_pin(store, a_pin())
    got = read_pin(store, SERVICE)
    assert got == written and got is not None and got.generation == written.generation != 0
    assert active_pin(store, SERVICE, T0 + timedelta(hours=23)) == got
    assert active_pin(store, SERVICE, T0 + timedelta(hours=25)) is None  # expired: shown, not enforced
    assert read_pin(store, SERVICE) is not None
    assert clear_pin(store, got) is True
    assert read_pin(store, SERVICE) is None
    assert clear_pin(store, got) is False  # gone already


def test_a_pin_written_since_it_was_read_is_never_cleared_unseen(store: StateStore) -> None:
    first = write_pin(store, a_pin())
    write_pin(store, a_pin(revision="api-00002-def", rollback_id="d-20261126-031500-cafe"))
    with pytest.raises(StaleStateError):
        clear_pin(store, first)
    still = read_pin(store, SERVICE)
    assert still is not None and still.revision == "api-00002-def"


def test_an_unreadable_pin_is_a_state_error_naming_unpin(store: StateStore) -> None:
    store.write(pin_key(SERVICE), dump_json({"revision": 3}), if_generation=None)
    with pytest.raises(StateError) as info:
        read_pin(store, SERVICE)
    assert info.value.message == f"the pin {store.where('pins/proj/us-central1/api.json')} is unreadable"
    assert "deployer unpin" in str(info.value.hint)


# ---- deployer unpin --------------------------------------------------------------------------------------


def test_unpin_is_journaled_and_releases_the_lock(store: StateStore) -> None:
    write_pin(store, a_pin())
    result = unpin(store, SERVICE, reason="fixed in v3", owner=OPS, clock=Clock(T0 + timedelta(hours=1)))
    assert result.pin is not None and result.pin.revision == "api-00001-abc"
    assert read_pin(store, SERVICE) is None
    assert store.read(lock_key(SERVICE)) is None
    assert list_deploys(store, SERVICE) == [result.journal_id]
    state = latest(store, SERVICE)
    assert state is not None and state.started.operation == "unpin" and state.started.reason == "fixed in v3"
    assert state.status == "succeeded"
    decision = state.decisions[0]
    assert decision.decision == UNPIN and decision.reason == "fixed in v3"
    assert decision.detail["pin"]["rollback_id"] == "d-20261126-031400-beef"
    assert decision.detail["by"] == "ops@other-host pid 5"
    assert "unpinned (pinned to api-00001-abc" in result.message(T0)


def test_unpin_without_a_pin_writes_nothing(store: StateStore) -> None:
    result = unpin(store, SERVICE, reason="just in case", owner=OPS, clock=Clock())
    assert (result.pin, result.journal_id) == (None, None)
    assert result.message(T0) == "not pinned: nothing to clear"
    assert list_deploys(store, SERVICE) == [] and store.read(lock_key(SERVICE)) is None


def test_unpin_waits_for_a_live_lock_holder(store: StateStore) -> None:
    write_pin(store, a_pin())
    clock = Clock()
    ServiceLock(store, SERVICE, clock=clock).acquire("d-20261126-031400-aaaa", OPS)  # alive, another host
    with pytest.raises(LockHeldError) as info:
        unpin(store, SERVICE, reason="fixed", owner=ONCALL, clock=clock)
    assert info.value.exit_code == 4
    assert read_pin(store, SERVICE) is not None  # untouched
