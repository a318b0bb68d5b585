"""Cloud Armor rule checks, pure (gcp-facts §3.1, §3.2): properties over the documented value sets."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deployer import facts
from deployer.cloudarmor.policy import (
    RATE_LIMIT_OPTIONS_MESSAGE,
    RuleError,
    default_rule,
    render_value,
    validate_action_change,
    validate_priorities,
    validate_rate_limit_options,
    validate_rule,
)

INTERVALS = st.sampled_from(facts.ARMOR_RATE_LIMIT_INTERVALS_S)
BAD_INTERVALS = st.integers(min_value=-10, max_value=10_000).filter(
    lambda v: v not in facts.ARMOR_RATE_LIMIT_INTERVALS_S
)
EXCEED = st.sampled_from([*facts.ARMOR_DENY_ACTIONS, "redirect"])
KEYS = st.sampled_from([k for k in facts.ARMOR_ENFORCE_ON_KEYS if k not in ("HTTP_HEADER", "HTTP_COOKIE")])


def options(action: str, count: int, interval: int, exceed: str = "deny(429)", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "conformAction": "allow",
        "exceedAction": exceed,
        "rateLimitThreshold": {"count": count, "intervalSec": interval},
        **extra,
    }
    if action == "rate_based_ban" and "banDurationSec" not in extra:
        out["banDurationSec"] = 600
    return out


def field_of(action: str, opts: Any) -> str:
    with pytest.raises(RuleError) as info:
        validate_rate_limit_options(action, opts)
    return info.value.field


# ---- properties over §3.2 ----------------------------------------------------------------------
@given(st.integers(1, facts.ARMOR_THROTTLE_COUNT_MAX), INTERVALS, EXCEED, KEYS)
def test_every_documented_throttle_is_accepted(count, interval, exceed, key):
    validate_rate_limit_options("throttle", options("throttle", count, interval, exceed, enforceOnKey=key))


@given(
    st.integers(1, facts.ARMOR_BAN_COUNT_MAX),
    INTERVALS,
    st.sampled_from(facts.ARMOR_BAN_DURATIONS_S),
    st.integers(1, facts.ARMOR_BAN_COUNT_MAX),
    INTERVALS,
)
def test_every_documented_rate_based_ban_is_accepted(count, interval, ban, ban_count, ban_interval):
    validate_rate_limit_options(
        "rate_based_ban",
        options(
            "rate_based_ban",
            count,
            interval,
            banDurationSec=ban,
            banThreshold={"count": ban_count, "intervalSec": ban_interval},
        ),
    )


@given(st.sampled_from(["throttle", "rate_based_ban"]), BAD_INTERVALS)
def test_any_other_interval_is_refused_naming_the_field(action, interval):
    assert field_of(action, options(action, 10, interval)) == "rateLimitOptions.rateLimitThreshold.intervalSec"


@given(st.integers(facts.ARMOR_BAN_COUNT_MAX + 1, facts.ARMOR_THROTTLE_COUNT_MAX))
def test_counts_between_the_two_limits_are_a_throttle_only(count):
    validate_rate_limit_options("throttle", options("throttle", count, 60))
    assert field_of("rate_based_ban", options("rate_based_ban", count, 60)) == (
        "rateLimitOptions.rateLimitThreshold.count"
    )


@given(
    st.sampled_from(["throttle", "rate_based_ban"]),
    st.one_of(st.integers(max_value=0), st.integers(min_value=1_000_001)),
)
def test_counts_outside_every_range_are_refused(action, count):
    assert field_of(action, options(action, count, 60)) == "rateLimitOptions.rateLimitThreshold.count"


@given(st.integers(-100, 5000).filter(lambda v: v not in facts.ARMOR_BAN_DURATIONS_S))
def test_ban_durations_outside_the_set_are_refused(duration):
    opts = options("rate_based_ban", 10, 60, banDurationSec=duration)
    assert field_of("rate_based_ban", opts) == "rateLimitOptions.banDurationSec"


@given(st.text(min_size=1, max_size=12).filter(lambda s: s != "allow"))
def test_conform_action_is_allow_only(conform):
    opts = options("throttle", 10, 60)
    opts["conformAction"] = conform
    assert field_of("throttle", opts) == "rateLimitOptions.conformAction"


@given(st.text(max_size=12).filter(lambda s: s not in (*facts.ARMOR_DENY_ACTIONS, "redirect")))
def test_exceed_action_is_a_documented_deny_or_redirect(exceed):
    assert field_of("throttle", options("throttle", 10, 60, exceed)) == "rateLimitOptions.exceedAction"


@given(st.sampled_from(["allow", "deny(403)", "deny(404)", "deny(502)", "redirect"]))
def test_rate_limit_options_are_forbidden_for_other_actions(action):
    with pytest.raises(RuleError) as info:
        validate_rate_limit_options(action, options("throttle", 10, 60))
    assert info.value.reason == RATE_LIMIT_OPTIONS_MESSAGE
    validate_rate_limit_options(action, None)


@given(st.sampled_from(["throttle", "rate_based_ban"]))
def test_rate_limit_options_are_required_for_rate_limit_actions(action):
    with pytest.raises(RuleError) as info:
        validate_rate_limit_options(action, None)
    assert info.value.message() == (
        "Invalid value for field 'resource.rateLimitOptions': ''. " + RATE_LIMIT_OPTIONS_MESSAGE
    )


def test_ban_settings_are_for_rate_based_ban_only():
    assert field_of("throttle", options("throttle", 10, 60, banDurationSec=600)) == "rateLimitOptions.banDurationSec"
    ban_threshold = {"count": 10, "intervalSec": 60}
    assert field_of("throttle", options("throttle", 10, 60, banThreshold=ban_threshold)) == (
        "rateLimitOptions.banThreshold"
    )


def test_enforce_on_key_rules():
    assert field_of("throttle", options("throttle", 10, 60, enforceOnKey="HTTP_HEADER")) == (
        "rateLimitOptions.enforceOnKeyName"
    )
    validate_rate_limit_options(
        "throttle", options("throttle", 10, 60, enforceOnKey="HTTP_HEADER", enforceOnKeyName="x")
    )
    configs = [{"enforceOnKeyType": "IP"}, {"enforceOnKeyType": "HTTP_PATH"}]
    validate_rate_limit_options("throttle", options("throttle", 10, 60, enforceOnKeyConfigs=configs))
    assert field_of("throttle", options("throttle", 10, 60, enforceOnKeyConfigs=configs * 2)) == (
        "rateLimitOptions.enforceOnKeyConfigs"
    )
    assert field_of("throttle", options("throttle", 10, 60, enforceOnKey="IP", enforceOnKeyConfigs=configs)) == (
        "rateLimitOptions.enforceOnKey"
    )


@given(st.sampled_from(facts.ARMOR_RULE_ACTIONS[:-1]), st.sampled_from(facts.ARMOR_RULE_ACTIONS[:-1]))
def test_only_rate_based_ban_to_throttle_is_a_forbidden_change(old, new):
    if (old, new) == ("rate_based_ban", "throttle"):
        with pytest.raises(RuleError):
            validate_action_change(old, new)
    else:
        validate_action_change(old, new)


# ---- rules -------------------------------------------------------------------------------------
@given(st.lists(st.integers(0, facts.ARMOR_DEFAULT_RULE_PRIORITY), max_size=8))
def test_priorities_must_be_unique(values):
    rules = [{"priority": p} for p in values]
    if len(set(values)) == len(values):
        validate_priorities(rules)
    else:
        with pytest.raises(RuleError) as info:
            validate_priorities(rules)
        assert info.value.field.endswith("].priority")


def test_the_default_rule_is_valid_and_allows():
    rule = default_rule()
    validate_rule(rule)
    assert (rule["priority"], rule["action"]) == (facts.ARMOR_DEFAULT_RULE_PRIORITY, "allow")


def test_rule_errors_render_in_computes_words():
    with pytest.raises(RuleError) as info:
        validate_rule(
            {"priority": 5, "action": "allow", "match": {"expr": {"expression": "request.path.matches('(x)')"}}}
        )
    assert info.value.message("resource.rules[3]") == (
        "Invalid value for field 'resource.rules[3].match.expr': '{  \"expression\": "
        '"request.path.matches(\\u0027(x)\\u0027)"}\'. Error parsing Cloud Armor rule matcher expression: '
        "Invalid regular expression: (x), Capture Groups are not allowed."
    )
    with pytest.raises(RuleError) as info:
        validate_rule({"action": "allow"})
    assert info.value.message() == "Required field 'resource.priority' not specified"


def test_long_values_are_truncated_like_google_does():
    text = render_value({"expression": "x" * 300})
    assert text.endswith("...") and len(text) == 103
