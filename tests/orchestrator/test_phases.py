"""phases.next_step: the deploy's "what next", pure (no I/O, no clock)."""

from __future__ import annotations

import pytest

from deployer.orchestrator.phases import INTERRUPTED, Result, Shape, Status, Step, StepKind, forward, next_step

CANARY = Shape(infra=True, candidate=True, steps=(10, 50, 100), bake_s=5)


def run_through(shape: Shape, *, fail_at: str | None = None, abort_at: str | None = None) -> list[Step]:
    """Drive next_step to the end, every step succeeding except ``fail_at`` (by label)."""
    results: list[Result] = []
    taken: list[Step] = []
    abort = None
    for _ in range(50):
        step = next_step(shape, results, abort=abort)
        taken.append(step)
        if step.kind is StepKind.FINISH:
            return taken
        if step.label == abort_at:
            abort = "SIGINT received"
        results.append(Result(step, ok=step.label != fail_at, why="boom" if step.label == fail_at else ""))
    raise AssertionError("did not finish")


def labels(steps: list[Step]) -> list[str]:
    return [s.label for s in steps]


def test_a_good_canary_runs_every_step_in_order():
    assert labels(run_through(CANARY)) == [
        "apply",
        "gate_candidate",
        "shift 10%",
        "bake 10%",
        "gate_public 10%",
        "shift 50%",
        "bake 50%",
        "gate_public 50%",
        "shift 100%",
        "bake 100%",
        "gate_public 100%",
        "finish succeeded",
    ]


def test_only_the_last_shift_finalizes_and_no_bake_when_bake_is_zero():
    steps = forward(Shape(infra=False, candidate=True, steps=(50, 100), bake_s=0))
    shifts = [s for s in steps if s.kind is StepKind.SHIFT]
    assert [(s.percent, s.final) for s in shifts] == [(50, False), (100, True)]
    assert not any(s.kind is StepKind.BAKE for s in steps)


def test_infra_only_gates_the_public_path_once():
    assert labels(run_through(Shape(infra=True, candidate=False))) == ["apply", "gate_public", "finish succeeded"]


def test_nothing_to_do_finishes_at_once():
    assert labels(run_through(Shape(infra=False, candidate=False))) == ["finish succeeded"]


def test_a_failed_gate_rolls_back_then_verifies_then_finishes_rolled_back():
    steps = run_through(CANARY, fail_at="gate_public 50%")
    assert labels(steps)[-3:] == ["rollback", "verify", "finish rolled_back"]
    rollback = steps[-3]
    assert rollback.reason == "gate_public 50% failed: boom"
    assert steps[-1].status is Status.ROLLED_BACK and steps[-1].status.exit_code == 1
    assert "shift 100%" not in labels(steps)


def test_a_failed_apply_that_touched_nothing_finishes_failed_without_rollback():
    results = [Result(Step(StepKind.APPLY), ok=False, why="400 Invalid value")]
    step = next_step(CANARY, results, touched=False)
    assert step.kind is StepKind.FINISH and step.status is Status.FAILED
    assert step.reason == "apply failed: 400 Invalid value (nothing was changed)"
    assert step.status.exit_code == 1


def test_a_step_interrupted_midway_reads_as_an_interruption_not_a_failure():
    results = [Result(Step(StepKind.APPLY), ok=True), Result(Step(StepKind.GATE_CANDIDATE), ok=False,
               why=f"{INTERRUPTED}SIGINT received")]  # fmt: skip
    step = next_step(CANARY, results, abort="SIGINT received")
    assert step.kind is StepKind.ROLLBACK
    assert step.reason == "interrupted during gate_candidate: SIGINT received"


def test_an_abort_between_steps_rolls_back_before_the_next_one():
    steps = run_through(CANARY, abort_at="shift 10%")
    assert labels(steps)[-3:] == ["rollback", "verify", "finish rolled_back"]
    assert steps[-3].reason == "aborted before bake 10%: SIGINT received"


def test_an_incomplete_rollback_finishes_rollback_incomplete_with_exit_3():
    results = [
        Result(Step(StepKind.APPLY), ok=True),
        Result(Step(StepKind.GATE_CANDIDATE), ok=False, why="Failed"),
        Result(Step(StepKind.ROLLBACK, reason="gate_candidate failed: Failed"), ok=False, why="backend service: 500"),
    ]
    step = next_step(CANARY, results)
    assert (step.kind, step.status) == (StepKind.FINISH, Status.ROLLBACK_INCOMPLETE)
    assert step.reason == "gate_candidate failed: Failed; the rollback left: backend service: 500"
    assert step.status is not None and step.status.exit_code == 3


def test_a_rollback_that_met_a_foreign_change_finishes_aborted():
    results = [
        Result(Step(StepKind.APPLY), ok=True),
        Result(Step(StepKind.SHIFT, percent=10, index=0), ok=False, why="409"),
        Result(Step(StepKind.ROLLBACK, reason="x"), ok=False, why="changed by someone else", foreign=True),
    ]
    step = next_step(CANARY, results)
    assert step.status is Status.ABORTED and step.status.exit_code == 3


def test_no_verify_when_disabled():
    shape = Shape(infra=True, candidate=True, steps=(100,), verify_rollback=False)
    results = [Result(Step(StepKind.APPLY), ok=False, why="x"), Result(Step(StepKind.ROLLBACK), ok=True)]
    assert next_step(shape, results).status is Status.ROLLED_BACK


def test_a_failed_verify_still_finishes_rolled_back():
    results = [
        Result(Step(StepKind.APPLY), ok=False, why="x"),
        Result(Step(StepKind.ROLLBACK, reason="apply failed: x"), ok=True),
        Result(Step(StepKind.VERIFY), ok=False, why="Failed"),
    ]
    step = next_step(CANARY, results)
    assert step.status is Status.ROLLED_BACK and step.reason == "apply failed: x"


def test_preempted_stops_at_once_even_mid_rollback():
    results = [Result(Step(StepKind.APPLY), ok=False, why="x")]
    step = next_step(CANARY, results, preempted="lock lost")
    assert (step.status, step.reason) == (Status.ABORTED, "lock lost")


def test_an_abort_after_the_last_step_does_not_undo_a_finished_deploy():
    results = [Result(s, ok=True) for s in forward(CANARY) if s.kind is not StepKind.FINISH]
    assert next_step(CANARY, results, abort="SIGTERM received").status is Status.SUCCEEDED


def test_steps_must_end_at_100():
    with pytest.raises(ValueError, match="end at 100"):
        Shape(infra=False, candidate=True, steps=(10, 50))
