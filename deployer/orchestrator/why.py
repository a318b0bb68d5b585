"""``deployer why DEPLOY_ID``: what one deploy did and why it ended so, read purely from its journal.

``explain(records)`` is pure: it folds the records (``journal.fold``, which also validates them) and
walks them in order, so every phase comes with its timing (from its ``phase`` record to the next
one, or to ``finished``), the effects it started (the API call, its outcome, an error), the gate
verdicts with their evidence (counts, handshake p50/p95, failures grouped by reason), the decisions
taken (``rollback`` and its reason, ``override_freeze``...) and, in the rollback phase, what was put
back and how. ``render_why`` prints it; ``Explanation.to_json`` is the ``--json`` shape. No network,
no clock: a test hands it a list of records.

Nothing here holds a secret: the journal masks secret env values, and the plan is shown from the
masked copy the journal keeps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.text import Text

from deployer.orchestrator.history import (
    DeploySummary,
    duration_text,
    outcome_text,
    resource_label,
    revision_text,
    summarize,
    when_text,
)
from deployer.orchestrator.journal import (
    Decision,
    EffectState,
    GateResult,
    JournalState,
    PhaseEntered,
    Record,
    RollbackStep,
    fold,
)
from deployer.plan import Plan

PLAN_FIELDS_SHOWN = 8  # per change, in the readable view (--json has them all)
_SYMBOL = {"create": "+", "update": "~", "delete": "-", "no-op": "="}


@dataclass(frozen=True)
class EffectView:
    effect: str
    resource: str
    method: str | None
    action: str | None
    outcome: str  # applied | not_applied | unknown | not_started
    error: str | None = None
    undo: str = "none"

    def to_json(self) -> dict[str, Any]:
        return {
            "effect": self.effect,
            "resource": self.resource,
            "method": self.method,
            "action": self.action,
            "outcome": self.outcome,
            "error": self.error,
            "undo": self.undo,
        }

    @classmethod
    def of(cls, e: EffectState) -> EffectView:
        error = f"{e.error.type}: {e.error.message}" if e.error else None
        return cls(
            effect=e.effect,
            resource=resource_label(e.kind, e.resource_id),
            method=e.method,
            action=e.action.value if e.action else None,
            outcome=e.outcome or "not_started",
            error=error,
            undo=e.undo,
        )


@dataclass(frozen=True)
class FailureView:
    group: str
    count: int
    meaning: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"group": self.group, "count": self.count, "meaning": self.meaning}


def _groups(raw: Any) -> tuple[FailureView, ...]:
    out = []
    for g in raw if isinstance(raw, list) else []:
        if isinstance(g, Mapping):
            out.append(FailureView(str(g.get("group", "?")), int(g.get("count") or 0), str(g.get("meaning") or "")))
    return tuple(out)


@dataclass(frozen=True)
class GateView:
    """One gate verdict and the evidence that decided it."""

    target: str
    verdict: str
    at: datetime
    reasons: tuple[str, ...] = ()
    counts: Mapping[str, int] = field(default_factory=dict)
    handshake_p50_ms: float | None = None
    handshake_p95_ms: float | None = None
    failures: tuple[FailureView, ...] = ()  # measured bad, grouped by reason
    errors: tuple[FailureView, ...] = ()  # could not measure, grouped by reason
    close_codes: Mapping[str, int] = field(default_factory=dict)
    url: str | None = None
    host: str | None = None
    seconds: float | None = None

    @property
    def passed(self) -> bool:
        return self.verdict == "Passed"

    @classmethod
    def of(cls, record: GateResult) -> GateView:
        ev = record.evidence
        latency = _map(ev.get("latency_ms"))
        handshake = _map(latency.get("handshake"))
        context = _map(ev.get("context"))
        target = _map(context.get("target"))
        counts = _map(ev.get("counts"))
        codes = _map(ev.get("close_codes"))
        duration = context.get("duration_s")
        return cls(
            target=record.target,
            verdict=record.verdict,
            at=record.at,
            reasons=tuple(str(r) for r in ev.get("reasons") or ()),
            counts={str(k): int(v) for k, v in counts.items() if isinstance(v, int)},
            handshake_p50_ms=_num(handshake.get("p50")),
            handshake_p95_ms=_num(handshake.get("p95")),
            failures=_groups(ev.get("failures")),
            errors=_groups(ev.get("errors")),
            close_codes={str(k): int(v) for k, v in codes.items() if isinstance(v, int)},
            url=str(target["url"]) if target.get("url") else None,
            host=str(target["host"]) if target.get("host") else None,
            seconds=_num(duration),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "verdict": self.verdict,
            "at": self.at.isoformat(),
            "reasons": list(self.reasons),
            "counts": dict(self.counts),
            "handshake_ms": {"p50": self.handshake_p50_ms, "p95": self.handshake_p95_ms},
            "failures": [f.to_json() for f in self.failures],
            "errors": [f.to_json() for f in self.errors],
            "close_codes": dict(self.close_codes),
            "url": self.url,
            "host": self.host,
            "duration_s": self.seconds,
        }


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class RollbackView:
    """One resource put back (the last stage its rollback steps reached)."""

    resource: str
    effects: tuple[str, ...]
    stage: str  # done | skipped | failed | started (no outcome recorded: the process stopped)
    detail: str = ""
    error: str | None = None
    pinned_latest_to: str | None = None
    changed_by_someone_else: bool = False

    @property
    def ok(self) -> bool:
        return self.stage in ("done", "skipped")

    def to_json(self) -> dict[str, Any]:
        return {
            "resource": self.resource,
            "effects": list(self.effects),
            "stage": self.stage,
            "detail": self.detail,
            "error": self.error,
            "pinned_latest_to": self.pinned_latest_to,
            "changed_by_someone_else": self.changed_by_someone_else,
        }


@dataclass(frozen=True)
class DecisionView:
    decision: str
    reason: str
    at: datetime
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "reason": self.reason,
            "at": self.at.isoformat(),
            "detail": dict(self.detail),
        }


@dataclass(frozen=True)
class PhaseView:
    name: str
    started_at: datetime
    seconds: float | None  # None: the journal ends inside it (a running or killed deploy)
    percent: int | None = None
    effects: tuple[EffectView, ...] = ()
    gates: tuple[GateView, ...] = ()
    decisions: tuple[DecisionView, ...] = ()
    rollback: tuple[RollbackView, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.name} {self.percent}%" if self.percent is not None else self.name

    @property
    def ok(self) -> bool | None:
        """False when something in it failed, None when it holds nothing to judge."""
        judged = [
            *(g.passed for g in self.gates),
            *(e.outcome == "applied" for e in self.effects),
            *(r.ok for r in self.rollback),
        ]
        if not judged:
            return None
        return all(judged)

    def to_json(self) -> dict[str, Any]:
        return {
            "phase": self.name,
            "percent": self.percent,
            "started_at": self.started_at.isoformat(),
            "duration_s": round(self.seconds, 3) if self.seconds is not None else None,
            "effects": [e.to_json() for e in self.effects],
            "gates": [g.to_json() for g in self.gates],
            "decisions": [d.to_json() for d in self.decisions],
            "rollback": [r.to_json() for r in self.rollback],
        }


@dataclass(frozen=True)
class PlannedChange:
    head: str
    fields: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"change": self.head, "fields": list(self.fields)}


@dataclass(frozen=True)
class Explanation:
    summary: DeploySummary
    config_digest: str
    plan: tuple[PlannedChange, ...]
    phases: tuple[PhaseView, ...]
    decisions: tuple[DecisionView, ...]
    rolled_back: tuple[RollbackView, ...]
    unknown_outcomes: tuple[str, ...] = ()  # effects started whose outcome was never recorded

    @property
    def gates(self) -> list[GateView]:
        return [g for p in self.phases for g in p.gates]

    def verdict_line(self) -> str:
        """The decision taken, and why, in one line."""
        s = self.summary
        if s.status == "succeeded" and s.operation != "deploy":
            return f"{s.operation} done: {s.summary or 'finished'}" + (f" ({s.why})" if s.why else "")
        if s.status == "succeeded":
            gates = self.gates
            passed = sum(1 for g in gates if g.passed)
            return f"kept: {passed}/{len(gates)} gates Passed; {s.summary or 'finished'}"
        if s.status == "running":
            last = self.phases[-1].label if self.phases else "start"
            return f"not finished: the journal ends in {last} (a running deploy, or one whose process died)"
        return f"{s.status.replace('_', ' ')}: {s.why or s.summary or 'no reason recorded'}"

    def to_json(self) -> dict[str, Any]:
        return {
            **self.summary.to_json(),
            "config_digest": self.config_digest,
            "decision": self.verdict_line(),
            "plan": [c.to_json() for c in self.plan],
            "phases": [p.to_json() for p in self.phases],
            "decisions": [d.to_json() for d in self.decisions],
            "rolled_back": [r.to_json() for r in self.rolled_back],
            "unknown_outcomes": list(self.unknown_outcomes),
        }


def _plan_changes(doc: Mapping[str, Any] | None) -> tuple[PlannedChange, ...]:
    if not doc:
        return ()
    try:
        plan = Plan.model_validate(doc)
    except ValidationError:
        return (PlannedChange("(the journal's plan could not be read)", ()),)
    out = []
    for change in plan.effective():  # the journal keeps the plan masked: no secret value is here
        head = f"{_SYMBOL.get(change.action.value, '?')} {change.action.value} {resource_label(change.kind, change.id)}"
        out.append(PlannedChange(head, tuple(d.render() for d in change.diff())))
    return tuple(out)


def _rollback_views(steps: Sequence[RollbackStep]) -> tuple[RollbackView, ...]:
    """The last stage per resource (and effects), in the order resources were first touched."""
    last: dict[tuple[str, tuple[str, ...]], RollbackStep] = {}
    for step in steps:
        last[(resource_label(step.kind, step.resource_id), step.effects)] = step
    out = []
    for (resource, effects), step in last.items():
        detail = step.detail
        error = f"{step.error.type}: {step.error.message}" if step.error else None
        out.append(
            RollbackView(
                resource=resource,
                effects=effects,
                stage=step.stage,
                detail=str(detail.get("detail") or ""),
                error=error,
                pinned_latest_to=str(detail["pinned_latest_to"]) if detail.get("pinned_latest_to") else None,
                changed_by_someone_else=bool(detail.get("changed_by_someone_else")),
            )
        )
    return tuple(out)


def explain(records: Sequence[Record]) -> Explanation:
    """Everything a journal says about one deploy, phase by phase (pure; ``JournalError`` if invalid)."""
    state: JournalState = fold(records)
    end = state.finished.at if state.finished else None
    # Split the records at each phase record.
    segments: list[tuple[PhaseEntered | None, list[Record]]] = [(None, [])]
    for record in records[1:]:
        if isinstance(record, PhaseEntered):
            segments.append((record, []))
        else:
            segments[-1][1].append(record)
    phases: list[PhaseView] = []
    effects_by_seq = {e.started_seq: e for e in state.effects.values() if e.started_seq is not None}
    for i, (phase, body) in enumerate(segments):
        if phase is None:
            if not body:
                continue
            name, started_at, percent = "start", state.started.at, None
        else:
            name, started_at = phase.name, phase.at
            raw = phase.detail.get("percent")
            percent = int(raw) if isinstance(raw, int) else None
        nxt = segments[i + 1][0] if i + 1 < len(segments) else None
        stop = nxt.at if nxt is not None else end
        phases.append(
            PhaseView(
                name=name,
                started_at=started_at,
                seconds=(stop - started_at).total_seconds() if stop is not None else None,
                percent=percent,
                effects=tuple(EffectView.of(effects_by_seq[r.seq]) for r in body if r.seq in effects_by_seq),
                gates=tuple(GateView.of(r) for r in body if isinstance(r, GateResult)),
                decisions=tuple(
                    DecisionView(r.decision, r.reason, r.at, r.detail) for r in body if isinstance(r, Decision)
                ),
                rollback=_rollback_views([r for r in body if isinstance(r, RollbackStep)]),
            )
        )
    all_steps = [r for r in records if isinstance(r, RollbackStep)]
    return Explanation(
        summary=summarize(state),
        config_digest=state.started.config_digest,
        plan=_plan_changes(state.started.plan),
        phases=tuple(phases),
        decisions=tuple(DecisionView(d.decision, d.reason, d.at, d.detail) for d in state.decisions),
        rolled_back=_rollback_views(all_steps),
        unknown_outcomes=tuple(
            f"{e.effect} {resource_label(e.kind, e.resource_id)} ({e.method})" for e in state.unknown_outcomes
        ),
    )


# ---- rendering -------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f} ms"


def gate_lines(gate: GateView) -> list[Text]:
    """A gate verdict and its evidence in a few lines."""
    style = "green" if gate.passed else "bold red"
    head = Text("gate ")
    head.append(gate.target, style="bold")
    head.append(": ")
    head.append(gate.verdict, style=style)
    if gate.reasons:
        head.append(f" — {'; '.join(gate.reasons)}")
    out = [head]
    c = gate.counts
    if c:
        out.append(
            Text(
                f"  connections: {c.get('attempted', 0)} attempted, {c.get('measured', 0)} measured, "
                f"{c.get('ok', 0)} ok, {c.get('failed', 0)} failed, {c.get('errors', 0)} could not measure; "
                f"handshake p50 {_ms(gate.handshake_p50_ms)}, p95 {_ms(gate.handshake_p95_ms)}",
                style="dim",
            )
        )
    for label, groups in (("failed", gate.failures), ("could not measure", gate.errors)):
        for g in groups:
            meaning = f" ({g.meaning})" if g.meaning and g.meaning != g.group else ""
            out.append(Text(f"  {label}: {g.group} ×{g.count}{meaning}"))
    abnormal = {k: v for k, v in gate.close_codes.items() if k not in ("1000", "1001")}
    if abnormal:
        out.append(Text("  abnormal close codes: " + ", ".join(f"{k} ×{v}" for k, v in abnormal.items())))
    if gate.url:
        via = f" (Host {gate.host})" if gate.host else ""
        out.append(Text(f"  probed {gate.url}{via}", style="dim"))
    return out


def _mark(phase: PhaseView) -> Text:
    if phase.name == "rollback":
        return Text("↺", style="yellow") if phase.ok is not False else Text("✗", style="bold red")
    if phase.seconds is None:
        return Text("…", style="cyan")
    if phase.ok is False:
        return Text("✗", style="bold red")
    return Text("✓", style="green")


def render_why(expl: Explanation, console: Console) -> None:
    s = expl.summary
    head = Text(f"{s.operation} ", style="bold")
    head.append(s.deploy_id, style="bold")
    head.append(f"  {s.service}", style="dim")
    console.print(head)
    outcome = Text("  outcome   ")
    outcome.append(outcome_text(s))
    if s.summary:
        outcome.append(f" — {s.summary}")
    console.print(outcome)
    console.print(f"  decision  {expl.verdict_line()}")
    took = duration_text(s.duration_s())
    console.print(f"  started   {when_text(s.started_at)} by {s.who}, took {took}" + ("" if s.finished else " so far"))
    if s.reason:
        console.print(f"  reason    {s.reason}")
    rev = revision_text(s)
    if rev and rev != "—":
        prev = f" (previous: {s.previous})" if s.previous else ""
        console.print(f"  revision  {rev}{prev}")
    if expl.plan:
        console.print(Text("plan", style="bold"))
        for change in expl.plan:
            console.print(f"  {change.head}")
            for line in change.fields[:PLAN_FIELDS_SHOWN]:
                console.print(Text(f"      {line}", style="dim"))
            if len(change.fields) > PLAN_FIELDS_SHOWN:
                console.print(Text(f"      … and {len(change.fields) - PLAN_FIELDS_SHOWN} more (--json)", style="dim"))
    console.print(Text("phases", style="bold"))
    if not expl.phases:
        console.print("  (none recorded)")
    for phase in expl.phases:
        row = Text("  ")
        row.append(_mark(phase))
        row.append(f" {phase.label:<18}", style="bold")
        took = duration_text(phase.seconds) if phase.seconds is not None else "(unfinished)"
        row.append(f"{took:>10}", style="dim")
        row.append(f"  from {phase.started_at:%H:%M:%S}", style="dim")
        console.print(row)
        for d in phase.decisions:
            console.print(Text(f"      decision {d.decision}: {d.reason}", style="bold"))
        for e in phase.effects:
            style = "" if e.outcome == "applied" else "bold red"
            text = Text(f"      {e.method or e.action or 'call'} on {e.resource}: ")
            text.append(e.outcome.replace("_", " "), style=style)
            if e.error:
                text.append(f" — {e.error}")
            console.print(text)
        for g in phase.gates:
            for gl in gate_lines(g):
                console.print(Text("      ") + gl)
        for r in phase.rollback:
            style = "" if r.ok else "bold red"
            text = Text(f"      put back {r.resource}: ")
            text.append(r.stage, style=style)
            if r.detail:
                text.append(f" — {r.detail}")
            if r.error:
                text.append(f" — {r.error}")
            if r.changed_by_someone_else:
                text.append(" (changed by someone else: left alone)")
            console.print(text)
    if s.remaining:
        console.print(Text("still changed", style="bold red"))
        for line in s.remaining:
            console.print(f"  - {line}")
    if expl.unknown_outcomes:
        console.print(Text("calls whose outcome was never recorded (re-read before acting)", style="bold red"))
        for line in expl.unknown_outcomes:
            console.print(f"  - {line}")
    pinned = s.extra.get("pinned_latest_to")
    if pinned:
        console.print(f"note: LATEST was pinned to {', '.join(pinned)} when traffic was put back")
