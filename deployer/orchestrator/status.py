"""``deployer status``: what serves now, what the journal says happened last, who holds the lock, any
pin, and how the live resources differ from the config.

``build_status(...)`` is pure: it takes the observed service (``gcp.observe``), the newest journal's
summary, the lock as read, the pin, the plan of config × live (``plan.make_plan``) and the traffic
drift against the last deploy, and returns a ``ServiceStatus`` value; ``render_status`` prints it
(rich on a TTY, the same lines plain otherwise) and ``ServiceStatus.to_json`` is the ``--json`` shape.
Reading those inputs is ``show.gather_status`` (the thin I/O).

- **Traffic** comes from ``trafficStatuses`` (what serves, not what was asked), per revision with its
  tags; a LATEST target is resolved through ``latestReadyRevision`` (gcp-facts §4.1 "Allocates
  instances to the Service's latest ready Revision") and marked as such.
- **Drift** is the plan's non-no-op changes, each with the fields that differ; secret env values are
  masked (``redact.SecretMask``), as ``deployer plan`` masks them. The plan compares the config with what
  SERVES; a service template that differs from it (changed by hand while traffic stays pinned: a revision
  at 0 %) is shown beside the drift as a note (``plan.unserved_template``), so "none" is never silent about it.
- **A dead deploy** is not "running": a journal that never finished whose process is gone
  (``history.process_gone``: the lock's holder pid is dead on this host, its lease expired, or it no
  longer holds the lock) shows as ``interrupted``, with ``deployer resume`` to finish or roll it back.
- **A state store that cannot be read** (``state_error``) still shows what is live; the journal, lock
  and pin parts say why they are missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from deployer.orchestrator.history import (
    GONE_STYLE,
    INCOMPLETE_HINT,
    RESUME_HINT,
    DeploySummary,
    duration_text,
    outcome_text,
    resource_label,
    revision_text,
    short,
    when_text,
)
from deployer.orchestrator.lock import LockInfo
from deployer.plan import ANNOTATION_LAST_GOOD, ANNOTATION_PREVIOUS, Plan, UnservedTemplate, unserved_template
from deployer.redact import SecretMask

_SYMBOL = {"create": "+", "update": "~", "delete": "-", "no-op": "="}
DRIFT_FIELDS_SHOWN = 6


def _is_latest(entry: Mapping[str, Any]) -> bool:
    kind = str(entry.get("type") or "")
    return kind.endswith("LATEST") or (not kind and not entry.get("revision"))


@dataclass(frozen=True)
class TrafficRow:
    """One revision that serves or is tagged: its share, its tags, and whether LATEST names it."""

    revision: str
    percent: int
    tags: tuple[str, ...] = ()
    via_latest: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"revision": self.revision, "percent": self.percent, "tags": list(self.tags), "latest": self.via_latest}


def traffic_rows(service: Mapping[str, Any]) -> tuple[TrafficRow, ...]:
    """The service's ``trafficStatuses`` per revision (LATEST resolved), in the API's order."""
    latest = short(service.get("latestReadyRevision"))
    order: list[str] = []
    percent: dict[str, int] = {}
    tags: dict[str, list[str]] = {}
    via_latest: set[str] = set()
    for status in service.get("trafficStatuses") or []:
        revision = short(status.get("revision"))
        if _is_latest(status):
            revision = revision or latest or "LATEST (no ready revision)"
            via_latest.add(revision)
        if revision not in percent:
            order.append(revision)
            percent[revision], tags[revision] = 0, []
        percent[revision] += int(status.get("percent") or 0)
        if status.get("tag"):
            tags[revision].append(str(status["tag"]))
    return tuple(TrafficRow(r, percent[r], tuple(tags[r]), r in via_latest) for r in order)


@dataclass(frozen=True)
class LockView:
    """The service lock: free, or who holds it and until when."""

    held: bool
    text: str = "free"
    deploy_id: str | None = None
    purpose: str | None = None
    who: str | None = None
    acquired_at: datetime | None = None
    expires_at: datetime | None = None
    expired: bool = False
    error: str | None = None  # the lock could not be read
    holder_gone: bool = False  # its holder's process is known to be gone (``lock.holder_alive`` said so)

    @classmethod
    def of(cls, info: LockInfo | None, now: datetime, *, holder_alive: bool | None = None) -> LockView:
        if info is None:
            return cls(held=False)
        text = info.describe(now)
        if holder_alive is False:
            text += f"; its process (pid {info.owner.pid}) is gone"
        return cls(
            held=True,
            text=text,
            deploy_id=info.deploy_id,
            purpose=info.purpose,
            who=info.owner.describe(),
            acquired_at=info.acquired_at,
            expires_at=info.expires_at,
            expired=info.expired(now),
            holder_gone=holder_alive is False,
        )

    @classmethod
    def unreadable(cls, error: str) -> LockView:
        return cls(held=True, text=f"unreadable: {error}", error=error)

    def to_json(self) -> dict[str, Any]:
        return {
            "held": self.held,
            "text": self.text,
            "deploy_id": self.deploy_id,
            "purpose": self.purpose,
            "who": self.who,
            "acquired_at": self.acquired_at.isoformat() if self.acquired_at else None,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "expired": self.expired,
            "holder_gone": self.holder_gone,
            "error": self.error,
        }


@dataclass(frozen=True)
class PinView:
    """Traffic pinned by an emergency rollback (``pins.read_pin``): deploys refuse until ``unpin``."""

    revision: str
    who: str = ""
    reason: str = ""
    at: datetime | None = None
    expires_at: datetime | None = None
    rollback_id: str | None = None  # the journal of the rollback that pinned

    def active(self, now: datetime) -> bool:
        return self.expires_at is None or now < self.expires_at

    def to_json(self, now: datetime | None = None) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "who": self.who,
            "reason": self.reason,
            "at": self.at.isoformat() if self.at else None,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "rollback_id": self.rollback_id,
            "active": self.active(now) if now is not None else None,
        }


@dataclass(frozen=True)
class DriftChange:
    """One resource that differs from the config: what a deploy would do to it, and the fields."""

    action: str
    kind: str
    resource_id: str
    fields: tuple[str, ...]

    @property
    def head(self) -> str:
        return f"{_SYMBOL.get(self.action, '?')} {self.action} {resource_label(self.kind, self.resource_id)}"

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "kind": self.kind, "resource": self.resource_id, "fields": list(self.fields)}


def config_drift(plan: Plan) -> tuple[DriftChange, ...]:
    """The plan's changes that do something, secret env values masked."""
    shown = plan.masked_copy(SecretMask())
    return tuple(
        DriftChange(c.action.value, c.kind, c.id, tuple(d.render() for d in c.diff())) for c in shown.effective()
    )


@dataclass(frozen=True)
class ServiceStatus:
    service: str  # the state key: project/region/service
    service_name: str  # projects/P/locations/R/services/S
    at: datetime
    exists: bool
    traffic: tuple[TrafficRow, ...] = ()
    latest_ready: str | None = None
    latest_created: str | None = None
    reconciling: bool = False
    annotations: Mapping[str, str] = field(default_factory=dict)  # deployer.dev/ annotations
    last: DeploySummary | None = None
    last_succeeded: DeploySummary | None = None
    journal_error: str | None = None
    state_error: str | None = None  # the state store could not be read: no journal, lock or pin shown
    lock: LockView = field(default_factory=lambda: LockView(held=False))
    pin: PinView | None = None
    pin_error: str | None = None  # the pin could not be read
    drift: tuple[DriftChange, ...] = ()
    checked: int = 0  # resources compared with the config
    traffic_drift: str | None = None
    template: UnservedTemplate | None = None  # the service's template is not what serves (``unserved_template``)

    @property
    def in_sync(self) -> bool:
        return not self.drift and self.traffic_drift is None

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "service_name": self.service_name,
            "at": self.at.astimezone(UTC).isoformat(),
            "exists": self.exists,
            "traffic": [t.to_json() for t in self.traffic],
            "latest_ready_revision": self.latest_ready,
            "latest_created_revision": self.latest_created,
            "reconciling": self.reconciling,
            "annotations": dict(self.annotations),
            "last_deploy": self.last.to_json(self.at) if self.last else None,
            "last_succeeded": self.last_succeeded.to_json(self.at) if self.last_succeeded else None,
            "journal_error": self.journal_error,
            "state_error": self.state_error,
            "lock": self.lock.to_json(),
            "pin": self.pin.to_json(self.at) if self.pin else None,
            "pin_error": self.pin_error,
            "drift": {
                "in_sync": self.in_sync,
                "checked": self.checked,
                "changes": [d.to_json() for d in self.drift],
                "traffic": self.traffic_drift,
                "template": self.template.to_json() if self.template else None,
            },
        }


def build_status(
    *,
    service: str,
    service_name: str,
    at: datetime,
    observed_service: Mapping[str, Any] | None,
    plan: Plan | None,
    history: Sequence[DeploySummary] = (),
    journal_error: str | None = None,
    state_error: str | None = None,
    lock: LockView | None = None,
    pin: PinView | None = None,
    pin_error: str | None = None,
    traffic_drift: str | None = None,
    serving_revision: Mapping[str, Any] | None = None,
) -> ServiceStatus:
    """The status as a value (pure). ``history`` is newest first (``history.read_history``); the last
    deploy is its newest deploy or rollback, the last succeeded its newest successful deploy.
    ``serving_revision`` (``Observed.serving_revision``) is what the service's template is compared with:
    drift compares the config with what serves, so a template changed by hand at 0 % is a note of its own."""
    svc = observed_service or {}
    annotations = {k: str(v) for k, v in (svc.get("annotations") or {}).items() if k.startswith("deployer.dev/")}
    # unlock / unpin journals are history, not deploys: "last deploy" is the newest deploy or rollback
    moves = [h for h in history if h.operation in ("deploy", "rollback") or h.status == "unreadable"]
    return ServiceStatus(
        service=service,
        service_name=service_name,
        at=at,
        exists=observed_service is not None,
        traffic=traffic_rows(svc) if observed_service is not None else (),
        latest_ready=short(svc.get("latestReadyRevision")) or None,
        latest_created=short(svc.get("latestCreatedRevision")) or None,
        reconciling=bool(svc.get("reconciling")),
        annotations=annotations,
        last=moves[0] if moves else None,
        last_succeeded=next((h for h in moves if h.status == "succeeded" and h.operation == "deploy"), None),
        journal_error=journal_error or (moves[0].error if moves and moves[0].status == "unreadable" else None),
        state_error=state_error,
        lock=lock or LockView(held=False),
        pin=pin,
        pin_error=pin_error,
        drift=config_drift(plan) if plan is not None else (),
        checked=len(plan.changes) if plan is not None else 0,
        traffic_drift=traffic_drift,
        template=unserved_template(observed_service, serving_revision),
    )


# ---- rendering -------------------------------------------------------------------------------------


def _deploy_line(item: DeploySummary, now: datetime) -> Text:
    line = Text(f"{item.deploy_id} ")
    line.append(outcome_text(item))
    took = duration_text(item.duration_s(now))
    so_far = "" if item.finished else " until its last record" if item.gone else " so far"
    line.append(f", {when_text(item.started_at)}, took {took}{so_far}")
    line.append(f", by {item.who}", style="dim")
    rev = revision_text(item)
    if item.revision and rev:
        line.append(f", revision {rev}")
    return line


def render_status(status: ServiceStatus, console: Console) -> None:
    head = Text(status.service, style="bold")
    head.append(f"  at {when_text(status.at)}", style="dim")
    console.print(head)
    if not status.exists:
        console.print(Text("  the Cloud Run service does not exist", style="bold red"))
    else:
        table = Table(box=None, pad_edge=False, header_style="bold", show_edge=False)
        table.add_column("  revision", no_wrap=True)
        table.add_column("traffic", justify="right", no_wrap=True)
        table.add_column("tags", no_wrap=True)
        table.add_column("note")
        last_good = status.annotations.get(ANNOTATION_LAST_GOOD)
        previous = status.annotations.get(ANNOTATION_PREVIOUS)
        for row in status.traffic:
            notes = []
            if row.via_latest:
                notes.append("via LATEST")
            if row.revision == last_good:
                notes.append("last good (deployer)")
            if row.revision == previous:
                notes.append("rollback target")
            pct = Text(f"{row.percent}%", style="bold" if row.percent else "dim")
            table.add_row(f"  {row.revision}", pct, ", ".join(row.tags), ", ".join(notes))
        console.print(table)
        extra = []
        if status.latest_ready:
            extra.append(f"latest ready {status.latest_ready}")
        if status.latest_created and status.latest_created != status.latest_ready:
            extra.append(f"latest created {status.latest_created} (not ready)")
        if status.reconciling:
            extra.append("a change is still rolling out")
        if extra:
            console.print(Text("  " + "; ".join(extra), style="dim"))
    console.print()
    if status.state_error:
        console.print(Text("last deploy, lock, pin", style="bold"))
        console.print(Text(f"  not shown: the state store cannot be read: {status.state_error}", style="bold red"))
        console.print()
        _render_drift(status, console)
        return
    console.print(Text("last deploy", style="bold"))
    if status.journal_error:
        console.print(Text(f"  the newest journal is unreadable: {status.journal_error}", style="bold red"))
    if status.last is None:
        console.print("  none in the journal")
    else:
        line = Text("  ")
        line.append(_deploy_line(status.last, status.at))
        console.print(line)
        if status.last.gone:
            console.print(Text(f"    {status.last.gone}: {RESUME_HINT}", style=GONE_STYLE))
        elif status.last.why and status.last.status != "succeeded":
            console.print(f"    why: {status.last.why}")
        if status.last.status == "rollback_incomplete" and not status.last.gone:
            for item in status.last.remaining:
                console.print(Text(f"    still changed: {item}", style="bold red"))
            console.print(Text(f"    {INCOMPLETE_HINT}", style="bold"))
        if status.last_succeeded and status.last_succeeded is not status.last:
            line = Text("  last succeeded: ")
            line.append(_deploy_line(status.last_succeeded, status.at))
            console.print(line)
    lock = Text("lock  ", style="bold")
    if not status.lock.held:
        lock.append("free", style="green")
    else:
        dead = status.lock.expired or status.lock.holder_gone
        lock.append(status.lock.text, style="bold red" if dead or status.lock.error else "yellow")
        if dead:
            lock.append(f" — {RESUME_HINT}")
    console.print(lock)
    pin = Text("pin   ", style="bold")
    if status.pin is None:
        if status.pin_error:
            pin.append(f"unreadable: {status.pin_error}", style="bold red")
        else:
            pin.append("none", style="dim")
    else:
        p = status.pin
        pin.append(f"traffic pinned to {p.revision}", style="bold yellow")
        by = f" by {p.who}" if p.who else ""
        when = f" at {when_text(p.at)}" if p.at else ""
        pin.append(f"{by}{when}")
        if p.reason:
            pin.append(f": {p.reason}")
        if p.rollback_id:
            pin.append(f" (rollback {p.rollback_id})", style="dim")
        if p.active(status.at):
            until = f" until {when_text(p.expires_at)}" if p.expires_at else ""
            pin.append(f" — deploys refuse{until} unless `deployer unpin` (or deploy --unpin)", style="yellow")
        else:
            pin.append(f" — expired at {when_text(p.expires_at)}: deploys no longer refuse", style="dim")
    console.print(pin)
    console.print()
    _render_drift(status, console)


def _render_drift(status: ServiceStatus, console: Console) -> None:
    drift = Text("drift ", style="bold")
    if status.in_sync:
        if status.template is None:
            drift.append(f"none: the {status.checked} resources the config owns match what is live", style="green")
        else:
            drift.append(f"none in what serves: the {status.checked} resources the config owns match it", style="green")
        console.print(drift)
        _render_template(status, console)
        return
    n = len(status.drift)
    what = f"{n} of {status.checked} resources differ from the config" if n else "traffic moved since the last deploy"
    drift.append(what, style="yellow")
    console.print(drift)
    if status.traffic_drift:
        console.print(f"  traffic: {status.traffic_drift}")
    for change in status.drift:
        console.print(f"  {change.head}")
        for field_line in change.fields[:DRIFT_FIELDS_SHOWN]:
            console.print(Text(f"      {field_line}", style="dim"))
        if len(change.fields) > DRIFT_FIELDS_SHOWN:
            console.print(Text(f"      … and {len(change.fields) - DRIFT_FIELDS_SHOWN} more (--json)", style="dim"))
    _render_template(status, console)
    if status.drift:
        console.print(
            Text("  `deployer plan -c CONFIG` shows the whole plan; `deployer deploy` applies it", style="dim")
        )


def _render_template(status: ServiceStatus, console: Console) -> None:
    if status.template is None:
        return
    console.print(Text(f"  note: {status.template.describe()}", style="yellow"), soft_wrap=True)  # whole, greppable
    for path in status.template.fields[:DRIFT_FIELDS_SHOWN]:
        console.print(Text(f"      ~ {path}", style="dim"))
    if len(status.template.fields) > DRIFT_FIELDS_SHOWN:
        console.print(
            Text(f"      … and {len(status.template.fields) - DRIFT_FIELDS_SHOWN} more (--json)", style="dim")
        )
