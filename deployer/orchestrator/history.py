"""``deployer history``: every deploy and rollback of a service, newest first, from its journals.

``summarize(state)`` (pure, over the journal's fold) is one line of history: the operation, its
outcome, who ran it (user@host, or the Cloud Build id), when, how long, the revision it made (or
moved traffic to), and why it ended as it did. ``render_history`` prints them (a table on a TTY, the
same table plain otherwise); ``DeploySummary.to_json`` is the ``--json`` shape. ``read_history`` is
the thin reader over the state store: a journal that cannot be read is listed as ``unreadable`` with
the reason, never skipped in silence. Order: ``journal.newest_first_or_error`` (by when each started).

A journal that never finished says ``running`` whether its process runs or was killed: ``process_gone``
(pure, over the service lock as read and whether its holder's process is alive, ``lock.holder_alive``)
tells them apart, and ``mark_gone`` marks the dead ones, shown as ``interrupted`` with
``deployer resume`` to finish or roll them back.

Nothing here holds a secret: journals mask secret env values, and summaries carry names only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from deployer.errors import DeployerError
from deployer.orchestrator.journal import JournalState, newest_first_or_error
from deployer.orchestrator.lock import LockInfo
from deployer.orchestrator.owner import Owner
from deployer.plan import ANNOTATION_DEPLOY_ID, ANNOTATION_PREVIOUS, ARMOR_RULE, RUN_SERVICE
from deployer.state import StateStore

DEFAULT_LIMIT = 20

STATUS_STYLE = {
    "succeeded": "green",
    "rolled_back": "yellow",
    "rollback_incomplete": "bold red",
    "failed": "red",
    "aborted": "bold red",
    "running": "cyan",
    "unreadable": "bold red",
}
GONE_STYLE = "bold red"
RESUME_HINT = "`deployer resume -c CONFIG` finishes or rolls it back"
INCOMPLETE_HINT = "`deployer resume -c CONFIG` tries again to put back what is still changed"


def when_text(at: datetime | None) -> str:
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z" if at is not None else "?"


def duration_text(seconds: float | None) -> str:
    """``0.4 s``, ``42.0 s``, ``3 m 12 s``, ``1 h 04 m``."""
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} m {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} m"


def short(name: str | None) -> str:
    return (name or "").rsplit("/", 1)[-1]


def resource_label(kind: str, resource_id: str) -> str:
    """``run.service chat-backend``, ``armor.rule chat-armor/50``, ``compute.backendService chat-bs``."""
    if kind == ARMOR_RULE and "/rules/" in resource_id:
        policy, _, priority = resource_id.partition("/rules/")
        return f"{kind} {short(policy)}/{priority}"
    return f"{kind} {short(resource_id)}"


def candidate_revision_name(service_key: str, deploy_id: str) -> str:
    """The revision name a deploy gives its candidate (``deploy.revision_name``: deterministic)."""
    from deployer.orchestrator.deploy import revision_name

    return revision_name(short(service_key), deploy_id)


@dataclass(frozen=True)
class DeploySummary:
    """One deploy (or rollback) as history shows it."""

    deploy_id: str
    service: str = ""
    operation: str = "deploy"
    status: str = "running"  # running | a journal final status | unreadable
    started_at: datetime | None = None
    finished_at: datetime | None = None
    last_at: datetime | None = None
    owner: Owner | None = None
    revision: str | None = None  # the revision the deploy made (None: it changed infrastructure only)
    previous: str | None = None  # the revision that served before (tagged as the rollback target)
    why: str | None = None  # why it ended so (a step that failed, a gate verdict...)
    reason: str | None = None  # the reason it was run with (rollback, --override-freeze)
    summary: str | None = None  # the journal's closing line
    remaining: tuple[str, ...] = ()
    decisions: tuple[str, ...] = ()  # "rollback: why", "override_freeze: why", ...
    error: str | None = None  # why the journal could not be read (status "unreadable")
    gone: str | None = None  # running, but its process is known to be gone: why we know (``process_gone``)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    def duration_s(self, now: datetime | None = None) -> float | None:
        """Finished: start to finish. Running: start to ``now`` (or to its last record). Its process gone:
        start to its last record."""
        if self.started_at is None:
            return None
        end = self.finished_at or (self.last_at if self.gone else None) or now or self.last_at
        return None if end is None else max(0.0, (end - self.started_at).total_seconds())

    @property
    def who(self) -> str:
        if self.owner is None:
            return "?"
        who = f"{self.owner.user}@{self.owner.host}"
        return f"{who} (Cloud Build {self.owner.build_id})" if self.owner.build_id else who

    def to_json(self, now: datetime | None = None) -> dict[str, Any]:
        duration = self.duration_s(now)
        return {
            "deploy_id": self.deploy_id,
            "service": self.service,
            "operation": self.operation,
            "status": self.status,
            "started_at": self.started_at.astimezone(UTC).isoformat() if self.started_at else None,
            "finished_at": self.finished_at.astimezone(UTC).isoformat() if self.finished_at else None,
            "duration_s": round(duration, 3) if duration is not None else None,
            "owner": self.owner.model_dump(mode="json") if self.owner else None,
            "who": self.who,
            "revision": self.revision,
            "previous_revision": self.previous,
            "why": self.why,
            "reason": self.reason,
            "summary": self.summary,
            "remaining": list(self.remaining),
            "decisions": list(self.decisions),
            "error": self.error,
            "process_gone": self.gone,
            **dict(self.extra),
        }


def _made_revision(state: JournalState) -> tuple[str | None, str | None]:
    """The revision this deploy created (its candidate, when an update named it) and the previous
    revision its finalize recorded."""
    expected = candidate_revision_name(state.service, state.deploy_id)
    made = None
    previous = None
    for effect in state.effects.values():
        if effect.kind != RUN_SERVICE or not effect.intended:
            continue
        if short(effect.intended.get("template.revision")) == expected:
            made = expected
        annotations = effect.intended.get("annotations") or {}
        # only the finalize update writes this deploy's id (the others carry the last deploy's annotations)
        ours = isinstance(annotations, Mapping) and annotations.get(ANNOTATION_DEPLOY_ID) == state.deploy_id
        if ours and effect.outcome == "applied" and annotations.get(ANNOTATION_PREVIOUS):
            previous = str(annotations[ANNOTATION_PREVIOUS])
    return made, previous


def summarize(state: JournalState) -> DeploySummary:
    """One history line from a journal's fold (pure)."""
    finished = state.finished
    detail = finished.detail if finished else {}
    revision, previous = _made_revision(state)
    if revision is None and state.started.operation != "deploy":  # a rollback names where it moved traffic
        value = detail.get("to_revision") or detail.get("revision")
        revision = short(value) if isinstance(value, str) and value else None
    decisions = tuple(f"{d.decision}: {d.reason}" for d in state.decisions)
    why = detail.get("why") if isinstance(detail.get("why"), str) else None
    if why is None and finished is None and state.decisions:
        why = state.decisions[-1].reason
    extra: dict[str, Any] = {}
    if detail.get("pinned_latest_to"):
        extra["pinned_latest_to"] = list(detail["pinned_latest_to"])
    return DeploySummary(
        deploy_id=state.deploy_id,
        service=state.service,
        operation=state.started.operation,
        status=state.status,
        started_at=state.started.at,
        finished_at=finished.at if finished else None,
        last_at=state.last_at,
        owner=state.started.owner,
        revision=revision,
        previous=previous,
        why=why,
        reason=state.started.reason,
        summary=finished.summary if finished else None,
        remaining=finished.remaining if finished else (),
        decisions=decisions,
        extra=extra,
    )


def unreadable(deploy_id: str, error: str, service: str = "") -> DeploySummary:
    return DeploySummary(deploy_id=deploy_id, service=service, operation="?", status="unreadable", error=error)


def read_history(store: StateStore, service_key: str, *, limit: int | None = DEFAULT_LIMIT) -> list[DeploySummary]:
    """The newest ``limit`` deploys of ``service_key`` (None: all), newest first by when they started."""
    out: list[DeploySummary] = []
    for deploy_id, state in newest_first_or_error(store, service_key):
        if limit is not None and len(out) >= limit:
            break
        if isinstance(state, DeployerError):
            out.append(unreadable(deploy_id, state.message, service_key))
        else:
            out.append(summarize(state))
    return out


def process_gone(item: DeploySummary, lock: LockInfo | None, *, now: datetime, holder_alive: bool | None) -> str | None:
    """Why ``item``, whose journal says ``running``, has no live process behind it; ``None`` when it may
    still run (or is not running at all). Pure: ``lock`` is the service lock as read (``None``: free) and
    ``holder_alive`` what ``lock.holder_alive`` says of its holder (``None``: cannot tell, another host).

    A deploy holds the lock from before its journal starts until after it finishes (resume takes it
    under the same id), so a running journal whose id does not hold the lock lost its process — what
    ``deploy`` itself concludes before it refuses (``its process died``)."""
    if item.status != "running" or item.finished:
        return None
    if lock is None:
        return "its process is gone: it never finished and the service lock is free"
    if lock.deploy_id != item.deploy_id:
        return f"its process is gone: the service lock is held by {lock.purpose} {lock.deploy_id}"
    if holder_alive is False:
        return f"its process is gone (pid {lock.owner.pid} on {lock.owner.host})"
    if lock.expired(now):
        ago = (now - lock.expires_at).total_seconds()
        return f"its process is gone or stuck: its lease expired {ago:.0f} s ago"
    return None


def mark_gone(
    items: Iterable[DeploySummary], lock: LockInfo | None, *, now: datetime, holder_alive: bool | None
) -> list[DeploySummary]:
    """``items`` with ``gone`` set on each running one whose process is gone (``process_gone``)."""
    return [replace(i, gone=process_gone(i, lock, now=now, holder_alive=holder_alive)) for i in items]


def outcome_text(item: DeploySummary) -> Text:
    if item.gone:
        return Text("interrupted", style=GONE_STYLE)
    word = item.status.replace("_", " ")
    return Text(word, style=STATUS_STYLE.get(item.status, "bold"))


def revision_text(item: DeploySummary) -> str:
    if item.revision is None:
        return "—" if item.operation == "deploy" and item.status != "unreadable" else ""
    if item.operation == "deploy" and item.status != "succeeded" and item.status != "running":
        return f"{item.revision} (not kept)"
    return item.revision


TABLE_MIN_WIDTH = 150  # below this a table cannot show id, outcome, who, revision and why: one block each


def _why_text(item: DeploySummary) -> str:
    if item.gone:
        return f"{item.gone}; {RESUME_HINT}"
    why = item.error or item.why or item.reason or ""
    if item.reason and item.why and item.reason != item.why:
        why = f"{item.why} (reason: {item.reason})"
    return why


def _took_text(item: DeploySummary, now: datetime | None) -> str:
    took = duration_text(item.duration_s(now))
    return f"{took}…" if not item.finished and item.status == "running" and not item.gone else took


def _started_text(item: DeploySummary) -> str:
    return f"{item.started_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}" if item.started_at else "?"


def _cell_len(value: str | Text) -> int:
    return Text(value).cell_len if isinstance(value, str) else value.cell_len


def render_history(
    items: Iterable[DeploySummary], console: Console, *, service: str, now: datetime | None = None
) -> None:
    """The history, newest first (``—`` in revision: a deploy of infrastructure only): a table on a wide
    console (and when piped), one block per deploy on a narrow one. The deploy id (what ``why`` takes)
    and the outcome are never cut; ``why`` wraps."""
    rows = list(items)
    if not rows:
        console.print(f"no deploys of {service} in the journal yet")
        return
    if console.width < TABLE_MIN_WIDTH:
        _render_blocks(rows, console, service=service, now=now)
        return
    cells = [
        (
            item.deploy_id,
            item.operation,
            outcome_text(item),
            _started_text(item),
            _took_text(item, now),
            item.who,
            revision_text(item),
            _why_text(item),
        )
        for item in rows
    ]

    def widest(column: int) -> int:
        return max(_cell_len(c[column]) for c in cells)

    table = Table(title=f"history of {service} (newest first)", title_justify="left", box=None, pad_edge=False)
    # never cut: the id (what `why` takes), op, outcome, start, duration and the revision name
    table.add_column("deploy", no_wrap=True, min_width=widest(0))
    table.add_column("op", no_wrap=True, min_width=widest(1))
    table.add_column("outcome", no_wrap=True, min_width=widest(2))
    table.add_column("started (UTC)", no_wrap=True, min_width=widest(3))
    table.add_column("took", justify="right", no_wrap=True, min_width=widest(4))
    table.add_column("who", overflow="fold")
    table.add_column("revision", no_wrap=True, min_width=widest(6))
    table.add_column("why", overflow="fold", ratio=1)  # the one column that grows
    for row in cells:
        table.add_row(*row)
    console.print(table)


def _render_blocks(rows: list[DeploySummary], console: Console, *, service: str, now: datetime | None) -> None:
    """A narrow console: per deploy, its id, op, outcome, start and duration on one line (never cut), then
    who and the revision, then why, each wrapped under it."""
    console.print(Text(f"history of {service} (newest first)", style="italic"))
    for item in rows:
        head = Text(item.deploy_id, style="bold", no_wrap=True)
        head.append(f"  {item.operation}  ")
        head.append(outcome_text(item))
        head.append(f"  {_started_text(item)}Z  took {_took_text(item, now)}", style="dim")
        console.print(head, overflow="fold")
        detail = f"by {item.who}"
        revision = revision_text(item)
        if revision:
            detail += f" · revision {revision}"
        console.print(Padding(Text(detail, overflow="fold"), (0, 0, 0, 4)))
        why = _why_text(item)
        if why:
            console.print(
                Padding(Text(f"why: {why}", style=GONE_STYLE if item.gone else "", overflow="fold"), (0, 0, 0, 4))
            )
