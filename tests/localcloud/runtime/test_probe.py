"""Startup probe plans and schedules, with a fake clock (no sockets, no waiting)."""

from __future__ import annotations

from types import SimpleNamespace

from google.cloud import run_v2

from deployer.localcloud.runtime.probe import ProbePlan, ProbeResult, plan_for, run_probe


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def attempts_that(results, t: FakeTime, cost=0.0):
    calls: list[float] = []
    it = iter(results)

    async def attempt(timeout_s: float) -> bool:
        calls.append(t.now)
        t.now += cost
        return next(it, False)

    return attempt, calls


def test_no_probe_and_cloud_runs_default_probe_become_the_local_deadline():
    assert plan_for(None, 7.0) == ProbePlan(kind="tcp", deadline_s=7.0)
    default = run_v2.Probe(timeout_seconds=240, period_seconds=240, failure_threshold=1, tcp_socket={"port": 8080})
    plan = plan_for(default, 7.0)
    assert not plan.configured and plan.budget_s == 7.0


def test_explicit_probes_keep_their_values_and_proto_defaults():
    http = run_v2.Probe(http_get={"path": "/health", "http_headers": [{"name": "X-A", "value": "1"}]}, period_seconds=2)
    plan = plan_for(http, 7.0)
    assert plan == ProbePlan(
        kind="http",
        path="/health",
        headers=(("X-A", "1"),),
        initial_delay_s=0.0,
        period_s=2.0,
        timeout_s=1.0,
        failure_threshold=3,
        configured=True,
    )
    tcp = run_v2.Probe(tcp_socket={"port": 8080}, timeout_seconds=1, period_seconds=1, failure_threshold=5)
    assert plan_for(tcp, 7.0).configured and plan_for(tcp, 7.0).failure_threshold == 5


async def test_default_plan_polls_until_ready():
    t = FakeTime()
    attempt, calls = attempts_that([False, False, True], t)
    result = await run_probe(ProbePlan(kind="tcp", deadline_s=5), attempt, sleep=t.sleep, clock=t.clock)
    assert result is ProbeResult.READY and len(calls) == 3


async def test_default_plan_fails_at_its_deadline():
    t = FakeTime()
    attempt, calls = attempts_that([], t)
    result = await run_probe(ProbePlan(kind="tcp", deadline_s=1.0), attempt, sleep=t.sleep, clock=t.clock)
    assert result is ProbeResult.FAILED
    assert t.now == 1.0 and 18 <= len(calls) <= 21  # every 50 ms for one second


async def test_configured_plan_waits_the_initial_delay_then_counts_failures():
    t = FakeTime()
    plan = ProbePlan(kind="http", initial_delay_s=3, period_s=2, timeout_s=1, failure_threshold=3, configured=True)
    attempt, calls = attempts_that([], t, cost=0.5)
    assert await run_probe(plan, attempt, sleep=t.sleep, clock=t.clock) is ProbeResult.FAILED
    assert calls == [3.0, 5.0, 7.0]  # each attempt one period after the previous one began


async def test_configured_plan_succeeds_on_a_later_attempt():
    t = FakeTime()
    plan = ProbePlan(kind="tcp", period_s=1, failure_threshold=3, configured=True)
    attempt, calls = attempts_that([False, True], t)
    assert await run_probe(plan, attempt, sleep=t.sleep, clock=t.clock) is ProbeResult.READY
    assert calls == [0.0, 1.0]


def test_plan_for_accepts_duck_typed_probes():
    probe = SimpleNamespace(http_get=None, timeout_seconds=0, period_seconds=0, failure_threshold=0)
    assert not plan_for(probe, 3.0).configured
