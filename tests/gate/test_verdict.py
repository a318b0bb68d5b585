"""The verdict is pure: observations + thresholds → outcome. Every rule, no network."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deployer.errors import UsageError
from deployer.gate.verdict import (
    Kind,
    Observation,
    Outcome,
    Thresholds,
    classify_close,
    decide,
    percentile,
)


def ok(i: int, handshake: float = 10.0, ping: float = 1.0, app: float | None = None) -> Observation:
    return Observation(
        i,
        connect_ms=1.0,
        upgrade_ms=handshake - 1.0,
        handshake_ms=handshake,
        status=101,
        accept_valid=True,
        ping_ms=[ping],
        app_ms=app,
        close_code=1000,
    )


def failed(i: int, kind: Kind, **fields: object) -> Observation:
    return Observation(i, failure=kind, **fields)  # type: ignore[arg-type]


T = Thresholds(min_samples=5, max_failure_ratio=0.0, max_error_ratio=0.0, handshake_p95_ms=100.0)


def test_enough_healthy_samples_pass():
    v = decide([ok(i) for i in range(5)], T)
    assert v.outcome is Outcome.PASSED
    assert v.counts.ok == 5 and v.counts.failed == 0
    assert v.exit_code == 0


def test_below_min_samples_is_inconclusive_never_passed():
    v = decide([ok(i) for i in range(4)], T)
    assert v.outcome is Outcome.INCONCLUSIVE
    assert "fewer than the 5 required" in v.reasons[0]
    assert v.exit_code == 3


def test_zero_observations_is_inconclusive():
    assert decide([], T).outcome is Outcome.INCONCLUSIVE


def test_one_failure_over_a_zero_budget_fails_even_with_few_samples():
    v = decide([ok(0), failed(1, Kind.UPGRADE_REFUSED, status=403)], T)
    assert v.outcome is Outcome.FAILED
    assert v.exit_code == 1
    assert "upgrade_refused HTTP 403 ×1" in v.reasons[0]


def test_failure_budget_is_a_ratio_of_measured_connections():
    obs = [ok(i) for i in range(9)] + [failed(9, Kind.PING_TIMEOUT)]
    within = Thresholds(min_samples=5, max_failure_ratio=0.1, handshake_p95_ms=None)
    assert decide(obs, within).outcome is Outcome.PASSED
    obs.append(failed(10, Kind.PING_TIMEOUT))  # 2 of 11 > floor(1.1) = 1
    assert decide(obs, within).outcome is Outcome.FAILED


def test_could_not_measure_is_error_not_failed():
    obs = [failed(i, Kind.DNS, detail="could not resolve x") for i in range(5)]
    v = decide(obs, T)
    assert v.outcome is Outcome.ERROR
    assert v.counts.errors == 5 and v.counts.failed == 0 and v.counts.measured == 0
    assert v.errors[0].group == "dns" and v.errors[0].count == 5
    assert v.exit_code == 3


def test_error_budget_is_separate_from_failure_budget():
    obs = [ok(i) for i in range(10)] + [failed(10, Kind.NETWORK)]
    assert decide(obs, Thresholds(min_samples=5, max_error_ratio=0.1)).outcome is Outcome.PASSED  # 1 ≤ floor(1.1)
    assert decide(obs, Thresholds(min_samples=5, max_error_ratio=0.0)).outcome is Outcome.ERROR


def test_errors_within_budget_but_too_few_measured_is_inconclusive():
    obs = [ok(0), ok(1), failed(2, Kind.NETWORK)]
    v = decide(obs, Thresholds(min_samples=3, max_error_ratio=0.5))
    assert v.outcome is Outcome.INCONCLUSIVE


def test_a_measured_failure_outranks_an_inability_to_measure():
    obs = [failed(0, Kind.DNS), failed(1, Kind.DNS), failed(2, Kind.UPGRADE_REFUSED, status=502)]
    assert decide(obs, T).outcome is Outcome.FAILED


def test_probe_bug_counts_as_could_not_measure():
    v = decide([failed(0, Kind.PROBE, detail="KeyError: x")], T)
    assert v.outcome is Outcome.ERROR


def test_setup_error_is_error_with_its_reason():
    v = decide([], T, setup_error="no Google ID token for audience https://x: DefaultCredentialsError")
    assert v.outcome is Outcome.ERROR
    assert "no Google ID token" in v.reasons[0]


@pytest.mark.parametrize(
    ("field", "limit"),
    [("handshake_p50_ms", 50.0), ("handshake_p95_ms", 50.0), ("handshake_max_ms", 50.0)],
)
def test_handshake_latency_thresholds(field, limit):
    obs = [ok(i, handshake=200.0) for i in range(10)]
    th = Thresholds(**{"min_samples": 5, "handshake_p95_ms": None, field: limit})
    v = decide(obs, th)
    assert v.outcome is Outcome.FAILED
    check = next(c for c in v.checks if c.name == field)
    assert not check.ok and check.observed == 200.0 and check.limit == limit
    assert any(r.startswith(field.removesuffix("_ms").replace("_", " ")) for r in v.reasons)


def test_handshake_max_catches_one_slow_connection_that_p95_forgives():
    obs = [ok(i, handshake=10.0) for i in range(99)] + [ok(99, handshake=900.0)]
    assert decide(obs, Thresholds(min_samples=5, handshake_p95_ms=100.0)).outcome is Outcome.PASSED
    th = Thresholds(min_samples=5, handshake_p95_ms=100.0, handshake_max_ms=500.0)
    assert decide(obs, th).outcome is Outcome.FAILED


def test_ping_rtt_threshold():
    obs = [ok(i, ping=80.0) for i in range(10)]
    assert decide(obs, Thresholds(min_samples=5, ping_p95_ms=100.0)).outcome is Outcome.PASSED
    assert decide(obs, Thresholds(min_samples=5, ping_p95_ms=50.0)).outcome is Outcome.FAILED


def test_app_round_trip_threshold():
    obs = [ok(i, app=300.0) for i in range(10)]
    v = decide(obs, Thresholds(min_samples=5, app_p95_ms=250.0))
    assert v.outcome is Outcome.FAILED
    assert "app p95 300 ms > 250 ms" in v.reasons


def test_latency_rule_skipped_when_nothing_was_measured_for_it():
    v = decide([ok(i) for i in range(5)], Thresholds(min_samples=5, app_p95_ms=1.0))
    assert v.outcome is Outcome.PASSED
    assert all(c.name != "app_p95_ms" for c in v.checks)


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (1000, "normal"),
        (1001, "normal"),
        (1006, "abnormal"),
        (1011, "abnormal"),
        (1012, "abnormal"),
        (1013, "abnormal"),
        (4000, "abnormal"),
        (None, "abnormal"),
    ],
)
def test_close_code_classification(code, cls):
    assert classify_close(code) == cls


def test_closed_during_hold_fails_survival_even_with_a_normal_code():
    obs = [ok(i) for i in range(5)]
    obs.append(failed(5, Kind.CLOSED, close_code=1001, closed_in="hold", held_s=1.2))
    v = decide(obs, T)
    assert v.outcome is Outcome.FAILED
    assert v.failures[0].group == "closed 1001 (normal) during hold"


def test_abnormal_final_close_is_a_failure_even_when_every_step_worked():
    obs = [ok(i) for i in range(5)]
    obs[2].close_code = 1006  # the server never answered our close
    v = decide(obs, T)
    assert v.outcome is Outcome.FAILED
    assert v.failures[0].group == "unclean_close 1006"
    assert v.failures[0].kind == "unclean_close"
    assert v.close_codes == {"1000": 4, "1006": 1}


def test_failures_are_grouped_by_reason_biggest_first_with_examples():
    obs = [failed(i, Kind.UPGRADE_REFUSED, status=403, body="denied") for i in range(4)]
    obs += [failed(4 + i, Kind.UPGRADE_REFUSED, status=502) for i in range(2)]
    obs += [failed(6, Kind.NO_UPGRADE, status=200)]
    v = decide(obs, T, examples=2)
    assert [(g.group, g.count) for g in v.failures] == [
        ("upgrade_refused HTTP 403", 4),
        ("upgrade_refused HTTP 502", 2),
        ("no_upgrade HTTP 200", 1),
    ]
    assert len(v.failures[0].examples) == 2 and v.failures[0].examples[0].body == "denied"


def test_to_json_is_serialisable_and_carries_the_evidence():
    obs = [ok(i) for i in range(5)] + [failed(5, Kind.BAD_ACCEPT, status=101, accept_valid=False)]
    v = decide(obs, T, context={"target": {"url": "ws://x/ws"}})
    data = json.loads(json.dumps(v.to_json(include_samples=True)))
    assert data["verdict"] == "Failed"
    assert data["counts"] == {"attempted": 6, "measured": 6, "ok": 5, "failed": 1, "errors": 0}
    assert data["latency_ms"]["handshake"]["n"] == 5
    assert data["failures"][0]["kind"] == "bad_accept"
    assert data["failures"][0]["examples"][0]["accept_valid"] is False
    assert data["thresholds"]["min_samples"] == 5
    assert data["context"]["target"]["url"] == "ws://x/ws"
    assert len(data["samples"]) == 6
    assert "samples" not in v.to_json()


def test_percentile_is_nearest_rank():
    assert percentile([], 0.5) is None
    assert percentile([5.0], 0.95) == 5.0
    assert percentile([float(i) for i in range(1, 101)], 0.95) == 95.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=50), st.floats(0.01, 1.0))
def test_percentile_is_one_of_the_values_and_monotone(values, q):
    p = percentile(values, q)
    assert p in values
    assert p <= max(values)
    assert percentile(values, 1.0) == max(values)


@pytest.mark.parametrize(
    "kwargs",
    [{"min_samples": 0}, {"max_failure_ratio": 1.5}, {"max_error_ratio": -0.1}, {"handshake_p95_ms": 0.0}],
)
def test_bad_thresholds_are_usage_errors(kwargs):
    with pytest.raises(UsageError):
        Thresholds(**kwargs)


def test_error_kinds_are_exactly_the_prober_side_ones():
    assert {k for k in Kind if k.is_error} == {Kind.DNS, Kind.NETWORK, Kind.PROBE}
    assert all(k.meaning for k in Kind)
