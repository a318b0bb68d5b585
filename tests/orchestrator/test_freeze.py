"""Freeze windows, pure: which hold at an injected time, until when, and the refusal's one line."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from deployer.config import DeployConfig, parse_config
from deployer.errors import FreezeError, UsageError
from deployer.orchestrator.freeze import (
    FreezeOverride,
    active_freezes,
    check_freeze,
    describe_window,
    frozen_until,
    window_end,
)
from deployer.orchestrator.scheduled import before_deploy, freeze_override

ROOT = Path(__file__).resolve().parents[2]
BERLIN = ZoneInfo("Europe/Berlin")


def config_with(freeze_yaml: str) -> DeployConfig:
    """configs/local.yaml with a ``freeze:`` section appended (so line numbers are real)."""
    text = (ROOT / "configs" / "local.yaml").read_text() + "\n" + freeze_yaml
    return parse_config(text, file="deploy.yaml")


YEAR_END = """freeze:
  - reason: year-end freeze
    start: 2026-12-20T00:00:00Z
    end: 2027-01-04T08:00:00Z
  - {reason: Friday evenings, days: [fri], from: '18:00', to: '09:00', timezone: Europe/Berlin}
"""


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def test_outside_every_window_nothing_is_frozen() -> None:
    config = config_with(YEAR_END)
    at = utc(2026, 12, 16, 12, 0)  # a Wednesday
    assert active_freezes(config, at) == []
    assert check_freeze(config, at) == []
    assert frozen_until(list(config.freeze), at) is None


def test_a_span_window_refuses_naming_the_window_its_line_and_its_end() -> None:
    config = config_with(YEAR_END)
    at = utc(2026, 12, 24, 15, 0)
    [active] = active_freezes(config, at)
    assert (active.key, active.ends_at, active.window.reason) == ("freeze[0]", utc(2027, 1, 4, 8, 0), "year-end freeze")
    assert active.line == config.line_of("freeze[0]") and active.line is not None
    with pytest.raises(FreezeError) as info:
        check_freeze(config, at)
    err = info.value
    assert err.exit_code == 1
    assert err.message == (
        'chat-backend: deploys are frozen by freeze[0] "year-end freeze" '
        f"(2026-12-20 00:00 UTC → 2027-01-04 08:00 UTC) at deploy.yaml:{active.line} "
        "until 2027-01-04 08:00 UTC; nothing was changed"
    )
    assert err.hint is not None and "--override-freeze --reason" in err.hint and "rollback" in err.hint
    assert err.fields["windows"][0]["ends_at"] == "2027-01-04T08:00:00+00:00"


def test_the_window_ends_at_its_end_exclusive() -> None:
    config = config_with(YEAR_END)
    assert check_freeze(config, utc(2027, 1, 4, 8, 0)) == []
    with pytest.raises(FreezeError):
        check_freeze(config, utc(2027, 1, 4, 7, 59, 59))


def test_a_weekly_window_over_midnight_ends_the_next_morning_in_its_zone() -> None:
    config = config_with(YEAR_END)
    window = config.freeze[1]
    friday_evening = datetime(2026, 3, 6, 20, 0, tzinfo=BERLIN)
    saturday_night = datetime(2026, 3, 7, 2, 0, tzinfo=BERLIN)
    saturday_nine = datetime(2026, 3, 7, 9, 0, tzinfo=BERLIN)
    assert window_end(window, friday_evening) == saturday_nine
    assert window_end(window, saturday_night) == saturday_nine
    assert window_end(window, saturday_nine) is None
    assert window_end(window, datetime(2026, 3, 5, 20, 0, tzinfo=BERLIN)) is None  # Thursday
    assert describe_window(window) == "fri 18:00–09:00 Europe/Berlin"
    with pytest.raises(FreezeError, match=r'freeze\[1\] "Friday evenings" .* until 2026-03-07 08:00 UTC'):
        check_freeze(config, friday_evening)


def test_a_same_day_weekly_window_ends_that_day() -> None:
    config = config_with("freeze:\n  - {days: [mon, tue], from: '10:00', to: '12:30'}\n")
    assert window_end(config.freeze[0], utc(2026, 3, 3, 11, 0)) == utc(2026, 3, 3, 12, 30)


def test_windows_that_overlap_are_followed_to_their_common_end() -> None:
    config = config_with(
        "freeze:\n"
        "  - {reason: release train, start: 2026-05-01T10:00:00Z, end: 2026-05-01T12:00:00Z}\n"
        "  - {reason: migration, start: 2026-05-01T11:30:00Z, end: 2026-05-01T15:00:00Z}\n"
    )
    at = utc(2026, 5, 1, 10, 30)
    assert [a.key for a in active_freezes(config, at)] == ["freeze[0]"]
    assert frozen_until(list(config.freeze), at) == utc(2026, 5, 1, 15, 0)
    with pytest.raises(FreezeError, match="until 2026-05-01 15:00 UTC"):
        check_freeze(config, at)
    with pytest.raises(FreezeError, match=r"\(and 1 more window\(s\)\)"):
        check_freeze(config, utc(2026, 5, 1, 11, 45))


def test_an_override_returns_what_it_overrides() -> None:
    config = config_with(YEAR_END)
    at = utc(2026, 12, 24, 15, 0)
    overridden = check_freeze(config, at, override=FreezeOverride("hotfix for INC-42"))
    assert [a.key for a in overridden] == ["freeze[0]"]
    assert check_freeze(config, utc(2026, 6, 1), override=FreezeOverride("x")) == []


def test_a_naive_time_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        active_freezes(config_with(YEAR_END), datetime(2026, 12, 24))


@pytest.mark.parametrize(
    ("override", "reason", "error"),
    [
        (True, None, "--override-freeze needs --reason TEXT"),
        (True, "   ", "--override-freeze needs --reason TEXT"),
        (False, "because", "--reason explains an override"),
    ],
)
def test_override_flags_are_checked(override: bool, reason: str | None, error: str) -> None:
    with pytest.raises(UsageError, match=error) as info:
        freeze_override(override, reason)
    assert info.value.exit_code == 2


def test_override_flags_give_the_override() -> None:
    assert freeze_override(True, "  hotfix  ") == FreezeOverride("hotfix")
    assert freeze_override(False, None) is None


def test_if_changed_does_not_take_a_saved_plan(tmp_path: Path) -> None:
    import io

    with pytest.raises(UsageError, match="--if-changed plans the deploy itself"):
        before_deploy(
            config_with(YEAR_END),
            plan_file=str(tmp_path / "plan.json"),
            if_changed=True,
            override=None,
            json_out=False,
            stream=io.StringIO(),
        )


def test_a_plain_deploy_is_refused_before_anything_is_read() -> None:
    import io

    # The refusal comes before observing: the config's endpoint is never contacted.
    with pytest.raises(FreezeError):
        before_deploy(
            config_with(YEAR_END),
            plan_file=None,
            if_changed=False,
            override=None,
            json_out=False,
            stream=io.StringIO(),
            clock=lambda: utc(2026, 12, 31, 23, 0),
        )
