"""The deploy as a state machine: a PURE "what next" over what has happened so far.

A deploy is a list of steps (argo-rollouts' shape: a rollout is steps, abort is one intent resolved
in one place, rollback = the stable version again):

    apply            infra (backend service, Cloud Armor rules)  ∥  the candidate revision (0 %, tagged)
    gate_candidate   the gate on the candidate through its tag
    shift p          traffic: the new revision p %, the previous serving revisions 100 − p;
                     the last step (100) is the finalize update (candidate tag removed, previous
                     revision tagged as the rollback target, deploy annotations written)
    bake p           wait the configured bake time (an injected sleep)
    gate_public p    the gate on the public path at that step
    finish succeeded

Without a new revision (only infra changes), ``apply`` is followed by one ``gate_public`` on the path
users take. Any failed step, or an abort (Ctrl-C, SIGTERM), leads to ``rollback`` — unless nothing
was touched, in which case the deploy finishes ``failed`` with nothing to undo — then ``verify`` (the
gate on the restored public path) and ``finish rolled_back``. A rollback that could not put
everything back finishes ``rollback_incomplete``; one that found the service changed by someone else
(and left it alone) finishes ``aborted``. A lost lock (preempted by an emergency rollback) stops at
once: that rollback owns the service now.

``next_step(shape, results, abort=..., touched=..., preempted=...)`` decides; the orchestrator
(``deploy.py``) runs the step and appends its ``Result``. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

# How a step's result begins when the deploy was interrupted in it (Ctrl-C, SIGTERM, a preempting rollback).
INTERRUPTED = "interrupted: "


class StepKind(StrEnum):
    APPLY = "apply"
    GATE_CANDIDATE = "gate_candidate"
    SHIFT = "shift"
    BAKE = "bake"
    GATE_PUBLIC = "gate_public"
    ROLLBACK = "rollback"
    VERIFY = "verify"
    FINISH = "finish"


class Status(StrEnum):
    """How a deploy ends (the journal's final statuses)."""

    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_INCOMPLETE = "rollback_incomplete"
    FAILED = "failed"  # failed before it changed anything
    ABORTED = "aborted"  # stopped without undoing everything on purpose (foreign change, preempted)

    @property
    def exit_code(self) -> int:
        """README "Exit codes": 0 deployed, 1 rolled back or refused, 3 could not finish."""
        return {"succeeded": 0, "rolled_back": 1, "failed": 1}.get(self.value, 3)


@dataclass(frozen=True)
class Step:
    kind: StepKind
    percent: int | None = None  # shift, bake, gate_public at a traffic step
    index: int | None = None  # which traffic step
    final: bool = False  # the shift that finalizes
    status: Status | None = None  # finish
    reason: str | None = None  # rollback: why; finish: why (when not succeeded)

    @property
    def label(self) -> str:
        if self.kind in (StepKind.SHIFT, StepKind.BAKE, StepKind.GATE_PUBLIC) and self.percent is not None:
            return f"{self.kind.value} {self.percent}%"
        if self.kind is StepKind.FINISH and self.status is not None:
            return f"finish {self.status.value}"
        return self.kind.value

    def same(self, other: Step) -> bool:
        """The same step of the plan (ignoring why it was taken)."""
        return (self.kind, self.percent, self.index, self.final) == (
            other.kind,
            other.percent,
            other.index,
            other.final,
        )


@dataclass(frozen=True)
class Shape:
    """What this deploy has to do: infra changes, a new revision, its traffic steps, the bake time."""

    infra: bool
    candidate: bool
    steps: tuple[int, ...] = (100,)
    bake_s: float = 0.0
    verify_rollback: bool = True

    def __post_init__(self) -> None:
        if self.candidate and (not self.steps or self.steps[-1] != 100):
            raise ValueError(f"traffic steps must end at 100 (got {self.steps})")


@dataclass(frozen=True)
class Result:
    """What running a step gave. ``foreign``: a rollback that left a resource alone because someone
    else changed it during the deploy."""

    step: Step
    ok: bool
    why: str = ""
    foreign: bool = False


def forward(shape: Shape) -> list[Step]:
    """The steps of a deploy that goes well, in order."""
    out: list[Step] = []
    if not (shape.infra or shape.candidate):
        return [Step(StepKind.FINISH, status=Status.SUCCEEDED)]
    out.append(Step(StepKind.APPLY))
    if shape.candidate:
        out.append(Step(StepKind.GATE_CANDIDATE))
        last = len(shape.steps) - 1
        for i, percent in enumerate(shape.steps):
            out.append(Step(StepKind.SHIFT, percent=percent, index=i, final=i == last))
            if shape.bake_s > 0:
                out.append(Step(StepKind.BAKE, percent=percent, index=i))
            out.append(Step(StepKind.GATE_PUBLIC, percent=percent, index=i))
    else:
        out.append(Step(StepKind.GATE_PUBLIC))
    out.append(Step(StepKind.FINISH, status=Status.SUCCEEDED))
    return out


def next_step(
    shape: Shape,
    results: Sequence[Result],
    *,
    abort: str | None = None,
    touched: bool = True,
    preempted: str | None = None,
) -> Step:
    """The next step to run, given every step's result so far (in order).

    ``abort``: why the deploy must stop (Ctrl-C, SIGTERM) — honoured before the next forward step.
    ``touched``: whether any effect may have changed a resource (the journal's ``what_to_undo``).
    ``preempted``: the lock was taken (an emergency rollback): stop at once, undo nothing.
    """
    if preempted is not None:
        return Step(StepKind.FINISH, status=Status.ABORTED, reason=preempted)
    rollback = next((r for r in results if r.step.kind is StepKind.ROLLBACK), None)
    if rollback is not None:
        if not rollback.ok:
            status = Status.ABORTED if rollback.foreign else Status.ROLLBACK_INCOMPLETE
            cause = rollback.step.reason or "a step failed"
            return Step(StepKind.FINISH, status=status, reason=f"{cause}; the rollback left: {rollback.why}")
        verified = any(r.step.kind is StepKind.VERIFY for r in results)
        if shape.verify_rollback and not verified:
            return Step(StepKind.VERIFY)
        return Step(StepKind.FINISH, status=Status.ROLLED_BACK, reason=rollback.step.reason)
    failed = next((r for r in results if not r.ok), None)
    why = None
    if failed is not None:  # an interruption is not the step's verdict: say it was stopped, not that it failed
        stopped = failed.why.removeprefix(INTERRUPTED)
        why = f"interrupted during {failed.step.label}: {stopped}" if stopped != failed.why else None
        why = why or f"{failed.step.label} failed: {failed.why}"
    if why is None and abort is not None:
        pending = [s for s in forward(shape) if not any(r.step.same(s) for r in results)]
        if pending and pending[0].kind is not StepKind.FINISH:
            why = f"aborted before {pending[0].label}: {abort}"
    if why is not None:
        if not touched:
            return Step(StepKind.FINISH, status=Status.FAILED, reason=f"{why} (nothing was changed)")
        return Step(StepKind.ROLLBACK, reason=why)
    for step in forward(shape):
        if not any(r.step.same(step) for r in results):
            return step
    return Step(StepKind.FINISH, status=Status.SUCCEEDED)  # pragma: no cover - forward() ends with finish
