"""Freeze windows (the config's ``freeze:``), pure: which ones hold at a given time, and until when.

A deploy refuses inside an active window (``FreezeError``, exit 1, naming the window and when it
ends) unless it is given ``--override-freeze --reason TEXT``; the override is journaled (who, why,
which windows). ``deployer rollback`` never looks at freezes: an emergency does not wait.

``active_freezes(config, at)`` lists the windows holding at ``at``; ``frozen_until(windows, at)`` is
when deploys are allowed again (windows that touch or overlap are followed to their common end);
``check_freeze(config, at, override=...)`` raises or returns what was overridden. Times are
timezone-aware; the caller injects ``at`` (its clock).

Doubt: a weekly window's end is its ``to`` time on the local calendar day; across a daylight-saving
change a ``to`` that does not exist that day (02:30 in a spring-forward gap) is resolved as Python's
``zoneinfo`` resolves it (fold=0), which may be an hour off the wall clock's intent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

from deployer.config import DeployConfig, FreezeWindow
from deployer.errors import FreezeError

OVERRIDE_FREEZE = "override_freeze"  # the journal decision an override records (who, why, which windows)
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_CHAIN_MAX = 64  # windows followed end to end at most (a freeze longer than that is a config error)


def _zone(name: str) -> tzinfo:
    # config.FreezeWindow validated the name already
    return UTC if name.upper() == "UTC" else ZoneInfo(name)


def window_end(window: FreezeWindow, at: datetime) -> datetime | None:
    """When the occurrence of ``window`` that holds at ``at`` ends (None when it does not hold)."""
    if not window.active(at):
        return None
    if window.start is not None and window.end is not None:
        return window.end
    assert window.days is not None and window.from_time is not None and window.to_time is not None
    zone = _zone(window.timezone)
    local = at.astimezone(zone)
    today = local.date()
    if window.from_time <= window.to_time:
        end_day = today
    else:  # over midnight: begun today (ends tomorrow) or begun yesterday (ends today)
        now = local.time().replace(tzinfo=None)
        begun_today = _WEEKDAYS[local.weekday()] in window.days and now >= window.from_time
        end_day = today + timedelta(days=1) if begun_today else today
    return datetime.combine(end_day, window.to_time, tzinfo=zone).astimezone(UTC)


def describe_window(window: FreezeWindow) -> str:
    """``2025-12-20 00:00 UTC → 2026-01-05 00:00 UTC`` or ``fri, sat 18:00–09:00 Europe/Berlin``."""
    if window.start is not None and window.end is not None:
        return f"{_when(window.start)} → {_when(window.end)}"
    days = ", ".join(window.days or [])
    assert window.from_time is not None and window.to_time is not None
    return f"{days} {window.from_time:%H:%M}–{window.to_time:%H:%M} {window.timezone}"


def _when(at: datetime) -> str:
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


@dataclass(frozen=True)
class ActiveFreeze:
    """One window that holds now: its place in the config, the window, and when this occurrence ends."""

    index: int
    window: FreezeWindow
    ends_at: datetime
    line: int | None = None

    @property
    def key(self) -> str:
        return f"freeze[{self.index}]"

    def describe(self) -> str:
        reason = f' "{self.window.reason}"' if self.window.reason else ""
        return f"{self.key}{reason} ({describe_window(self.window)})"

    def to_json(self) -> dict[str, object]:
        return {
            "key": self.key,
            "reason": self.window.reason,
            "window": describe_window(self.window),
            "ends_at": self.ends_at.astimezone(UTC).isoformat(),
            "line": self.line,
        }


def active_freezes(config: DeployConfig, at: datetime) -> list[ActiveFreeze]:
    """The config's windows that hold at ``at`` (timezone-aware), in config order."""
    if at.tzinfo is None:
        raise ValueError("freeze windows are judged at a timezone-aware time")
    out = []
    for i, window in enumerate(config.freeze):
        end = window_end(window, at)
        if end is not None:
            out.append(ActiveFreeze(i, window, end, config.line_of(f"freeze[{i}]")))
    return out


def frozen_until(windows: list[FreezeWindow], at: datetime) -> datetime | None:
    """When no window holds any more, following windows that begin as (or before) another ends;
    None when none holds at ``at``."""
    t = at
    for _ in range(_CHAIN_MAX):
        ends = [e for e in (window_end(w, t) for w in windows) if e is not None]
        if not ends:
            return None if t == at else t
        t = max(ends)
    return t


@dataclass(frozen=True)
class FreezeOverride:
    """``--override-freeze --reason TEXT``: deploy anyway, and journal who and why."""

    reason: str


def check_freeze(
    config: DeployConfig, at: datetime, *, override: FreezeOverride | None = None, what: str = "deploy"
) -> list[ActiveFreeze]:
    """The windows holding at ``at`` that ``override`` overrides (empty: not frozen); ``FreezeError``
    when one holds and there is no override."""
    active = active_freezes(config, at)
    if not active or override is not None:
        return active
    until = frozen_until(list(config.freeze), at) or max(a.ends_at for a in active)
    first = active[0]
    where = f"{config.source.file}:{first.line}" if first.line else config.source.file
    more = f" (and {len(active) - 1} more window(s))" if len(active) > 1 else ""
    raise FreezeError(
        f"{config.service.name}: {what}s are frozen by {first.describe()} at {where}{more} until {_when(until)}; "
        "nothing was changed",
        hint="wait until then, or pass --override-freeze --reason TEXT (journaled with who and why); "
        "`deployer rollback` is never frozen",
        windows=[a.to_json() for a in active],
        until=until.isoformat(),
    )


def frozen_message(active: list[ActiveFreeze]) -> str:
    """One line for the journal and the log: which windows an override overrode."""
    return "; ".join(f"{a.describe()} until {_when(a.ends_at)}" for a in active)
