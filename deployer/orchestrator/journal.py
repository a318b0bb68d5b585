"""The journal: the truth of a deploy (architecture.md), append-only, in the state store.

One JSON object per deploy (or emergency rollback) at ``deploys/{service}/{deploy_id}.json``,
rewritten whole on each append with a generation precondition, so two processes can never both
append (the loser gets ``StaleStateError`` and must stop: it no longer owns the deploy).

Records, in the order a deploy writes them (schema: the pydantic classes below):

- ``started``: deploy id, service, operation (deploy | rollback | unlock | unpin), config digest, the plan (secret
  env values masked) and its digest, the owner (user, host, pid, Cloud Build ``BUILD_ID``), reason.
- ``phase``: the deploy entered a phase (preflight, infra, candidate, gate, traffic, finalize, rollback...).
- ``pre_image``: BEFORE an effect, the resource exactly as read (``None`` = it did not exist) and its
  etag / fingerprint. ``masked_paths`` name the secret values replaced (never restorable from here).
- ``effect_started``: the call about to be made (action, API method, intended result, requestId).
- ``effect_done``: AFTER it, the result and the new etag / fingerprint.
- ``effect_failed``: it failed; ``outcome`` says whether it surely did nothing (``not_applied``) or
  may have landed (``unknown``: a reset, a 5xx, Ctrl-C mid-call).
- ``gate``: a gate verdict with its evidence; ``decision``: what was decided and why (``rollback``,
  ``abort``, ``force_unlock``, ...); ``rollback_step``: one resource put back (covering one or more
  effects), started / done / failed / skipped; ``finished``: succeeded | rolled_back |
  rollback_incomplete | failed | aborted, with what remains changed.

**Reopening** (``deployer resume`` retrying a rollback that could not finish): a ``finished`` record is
final, with one exception. After ``finished rollback_incomplete`` — and only then — a ``decision``
``resume`` may follow: it reopens the same journal (the state is ``running`` again, its earlier
``finished`` records kept in ``JournalState.earlier``), and the retry's records (rollback steps,
effects, gates) and a second ``finished`` are appended to it. The status is the last ``finished``.
Why the same journal and not a new one that references it: the effects to undo, their pre-images
and how far each undo got are in this journal, and ``Restorer`` / ``what_to_undo`` work on one fold;
the lock is keyed by the journal's id, so a retry that dies leaves an unfinished newest journal that
``deploy`` refuses to act over and ``resume`` picks up again, exactly as for a first attempt; a second
journal would be a new "newest operation" with no effects of its own, which ``history``, ``why``,
``status`` and ``rollback``'s choice of target (newest journal first) would each have to see through.
Append-only still holds: nothing is rewritten, both outcomes stay readable in order (``why``).

``fold(records)`` (pure) gives a ``JournalState``; ``what_to_undo(state)`` and
``restore_targets(state)`` (pure) are what rollback and resume act on. A process killed at any
point leaves a journal that says everything needed to finish or undo: an ``effect_started``
without ``effect_done`` is an *unknown outcome* (``EffectState.outcome == "unknown"``): re-read the
resource and compare it with the pre-image and the intended result before deciding anything.
``Journal`` (the writer) validates every record against the fold *before* it is written, so an
invalid journal is never stored.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from deployer.errors import CloudError, DeployerError, JournalError, StaleStateError
from deployer.orchestrator.owner import Owner
from deployer.plan import Action, Plan
from deployer.redact import NO_MASK, SecretMask
from deployer.state import StateStore, check_key, dump_json, read_json

JOURNAL_FORMAT: Literal[1] = 1
DEPLOY_ID_RE = re.compile(r"d-\d{8}-\d{6}-[0-9a-f]{4}")

# ``unlock`` / ``unpin``: a short journal of an operator's action (``deployer unlock --force``, ``deployer
# unpin``): started, one decision, finished. It changes no cloud resource.
Operation = Literal["deploy", "rollback", "unlock", "unpin"]
ADMIN_OPERATIONS: tuple[str, ...] = ("unlock", "unpin")
FinalStatus = Literal["succeeded", "rolled_back", "rollback_incomplete", "failed", "aborted"]
FINAL_STATUSES: tuple[FinalStatus, ...] = ("succeeded", "rolled_back", "rollback_incomplete", "failed", "aborted")
Outcome = Literal["unknown", "applied", "not_applied"]
UndoStage = Literal["none", "started", "done", "failed", "skipped"]

# Decisions the orchestrator records (free text is allowed; these are the ones code reads).
ROLLBACK = "rollback"
ABORT = "abort"
FORCE_UNLOCK = "force_unlock"
RESUME = "resume"  # ``deployer resume`` took the journal over (after ``rollback_incomplete``: reopens it)
REOPENABLE: tuple[FinalStatus, ...] = ("rollback_incomplete",)  # what a ``resume`` decision may reopen


def new_deploy_id(now: datetime, token: str | None = None) -> str:
    """``d-YYYYMMDD-HHMMSS-xxxx`` in UTC; ``token`` is 4 hex digits (random when not given).

    Ids sort by time. Two deploys in the same second collide with probability 1/65536; the
    journal's create-only write then fails and the caller draws another."""
    if now.tzinfo is None:
        raise ValueError("deploy ids need a timezone-aware time")
    token = secrets.token_hex(2) if token is None else token
    deploy_id = f"d-{now.astimezone(UTC):%Y%m%d-%H%M%S}-{token}"
    if not DEPLOY_ID_RE.fullmatch(deploy_id):
        raise ValueError(f"bad deploy id token {token!r} (4 lowercase hex digits)")
    return deploy_id


def deploys_prefix(service: str) -> str:
    return f"deploys/{service}/"


def journal_key(service: str, deploy_id: str) -> str:
    if not DEPLOY_ID_RE.fullmatch(deploy_id):
        raise ValueError(f"not a deploy id: {deploy_id!r}")
    return check_key(f"{deploys_prefix(service)}{deploy_id}.json")


# ---- records ---------------------------------------------------------------------------------------


class ErrorInfo(BaseModel):
    """An error as the journal keeps it (one line, no traceback)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str
    message: str
    method: str | None = None
    status: int | None = None

    @classmethod
    def of(cls, exc: BaseException) -> ErrorInfo:
        message = " ".join(str(exc).split())[:500] or type(exc).__name__
        return cls(
            type=type(exc).__name__,
            message=message,
            method=getattr(exc, "method", None) if isinstance(exc, CloudError) else None,
            status=getattr(exc, "status", None) if isinstance(exc, CloudError) else None,
        )


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    seq: int = Field(ge=0)
    at: AwareDatetime


class Started(_Record):
    type: Literal["started"] = "started"
    deploy_id: str
    service: str
    operation: Operation = "deploy"
    config_digest: str
    plan: dict[str, Any] | None = None
    plan_digest: str | None = None
    owner: Owner
    reason: str | None = None


class PreImage(_Record):
    type: Literal["pre_image"] = "pre_image"
    effect: str
    kind: str
    resource_id: str
    resource: dict[str, Any] | None
    precondition: str | None = None
    masked_paths: tuple[str, ...] = ()


class EffectStarted(_Record):
    type: Literal["effect_started"] = "effect_started"
    effect: str
    kind: str
    resource_id: str
    action: Action
    method: str
    intended: dict[str, Any] | None = None
    request_id: str | None = None


class EffectDone(_Record):
    type: Literal["effect_done"] = "effect_done"
    effect: str
    result: dict[str, Any] | None = None
    precondition: str | None = None


class EffectFailed(_Record):
    type: Literal["effect_failed"] = "effect_failed"
    effect: str
    error: ErrorInfo
    outcome: Literal["not_applied", "unknown"]


class PhaseEntered(_Record):
    type: Literal["phase"] = "phase"
    name: str
    detail: dict[str, Any] = {}


class GateResult(_Record):
    type: Literal["gate"] = "gate"
    target: str
    verdict: str
    evidence: dict[str, Any] = {}


class Decision(_Record):
    type: Literal["decision"] = "decision"
    decision: str
    reason: str
    detail: dict[str, Any] = {}


class RollbackStep(_Record):
    type: Literal["rollback_step"] = "rollback_step"
    effects: tuple[str, ...] = Field(min_length=1)
    kind: str
    resource_id: str
    stage: Literal["started", "done", "failed", "skipped"]
    precondition: str | None = None
    error: ErrorInfo | None = None
    detail: dict[str, Any] = {}


class Finished(_Record):
    type: Literal["finished"] = "finished"
    status: FinalStatus
    summary: str
    remaining: tuple[str, ...] = ()
    detail: dict[str, Any] = {}


Record = Annotated[
    Started
    | PreImage
    | EffectStarted
    | EffectDone
    | EffectFailed
    | PhaseEntered
    | GateResult
    | Decision
    | RollbackStep
    | Finished,
    Field(discriminator="type"),
]


class JournalDocument(BaseModel):
    """The stored object."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal[1] = JOURNAL_FORMAT
    deploy_id: str
    service: str
    records: tuple[Record, ...]


_RECORD = TypeAdapter(Record)


def parse_record(doc: Mapping[str, Any]) -> Record:
    return _RECORD.validate_python(doc)


# ---- the fold (pure) -------------------------------------------------------------------------------


@dataclass(frozen=True)
class EffectState:
    """One effect as the journal tells it: its pre-image, the call, its outcome, its undo."""

    effect: str
    kind: str
    resource_id: str
    pre_image: dict[str, Any] | None
    pre_precondition: str | None
    masked_paths: tuple[str, ...] = ()
    phase: str | None = None
    action: Action | None = None
    method: str | None = None
    intended: dict[str, Any] | None = None
    request_id: str | None = None
    started_seq: int | None = None
    outcome: Outcome | None = None  # None: pre-image read, call never started
    result: dict[str, Any] | None = None
    post_precondition: str | None = None
    error: ErrorInfo | None = None
    undo: UndoStage = "none"
    undo_error: ErrorInfo | None = None
    undo_precondition: str | None = None  # the etag / fingerprint the undo's own write left (its rollback_step)

    @property
    def started(self) -> bool:
        return self.outcome is not None

    @property
    def outcome_unknown(self) -> bool:
        """Started, and nobody knows whether it landed: re-read before deciding."""
        return self.outcome == "unknown"

    @property
    def needs_undo(self) -> bool:
        return self.started and self.outcome != "not_applied" and self.undo not in ("done", "skipped")


@dataclass(frozen=True)
class JournalState:
    """Everything the records say, folded."""

    started: Started
    next_seq: int
    last_at: datetime
    phase: str | None = None
    phases: tuple[PhaseEntered, ...] = ()
    effects: Mapping[str, EffectState] = field(default_factory=dict)  # in pre-image order
    gates: tuple[GateResult, ...] = ()
    decisions: tuple[Decision, ...] = ()
    rolling_back: bool = False
    finished: Finished | None = None
    earlier: tuple[Finished, ...] = ()  # ``finished`` records a resume reopened, oldest first
    reopened_seq: int | None = None  # the seq of the ``resume`` decision that last reopened it

    @property
    def reopened(self) -> bool:
        """A resume took over this journal after it had finished (``rollback_incomplete``)."""
        return bool(self.earlier)

    @property
    def deploy_id(self) -> str:
        return self.started.deploy_id

    @property
    def service(self) -> str:
        return self.started.service

    @property
    def status(self) -> str:
        """``running`` until finished, then the final status."""
        return self.finished.status if self.finished else "running"

    @property
    def is_finished(self) -> bool:
        return self.finished is not None

    @property
    def resume_action(self) -> Literal["none", "rollback", "undecided"]:
        """What resuming this journal must do: nothing, continue the rollback it began (a decision
        once taken is never reversed), or choose (issue 7: finish or undo)."""
        if self.finished:
            return "none"
        return "rollback" if self.rolling_back else "undecided"

    @property
    def unknown_outcomes(self) -> list[EffectState]:
        return [e for e in self.effects.values() if e.outcome_unknown]


def _fail(record: Record, why: str) -> JournalError:
    return JournalError(f"journal record {record.seq} ({record.type}) is invalid: {why}")


def step(state: JournalState | None, record: Record) -> JournalState:
    """Fold one record into the state; ``JournalError`` when the record breaks the journal's rules."""
    if state is None:
        if not isinstance(record, Started):
            raise _fail(record, "a journal begins with 'started'")
        if record.seq != 0:
            raise _fail(record, "the first record has seq 0")
        return JournalState(started=record, next_seq=1, last_at=record.at)
    if record.seq != state.next_seq:
        raise _fail(record, f"expected seq {state.next_seq}")
    base = replace(state, next_seq=state.next_seq + 1, last_at=record.at)
    if state.finished is not None:
        if isinstance(record, Decision) and record.decision == RESUME and state.finished.status in REOPENABLE:
            return replace(
                base,
                finished=None,
                earlier=(*state.earlier, state.finished),
                reopened_seq=record.seq,
                decisions=(*state.decisions, record),
            )
        if isinstance(record, Decision) and record.decision == RESUME:
            raise _fail(record, f"a journal finished {state.finished.status} cannot be reopened")
        raise _fail(record, "nothing may follow 'finished' (but a 'resume' decision after rollback_incomplete)")
    effects = state.effects

    def effect_of(eid: str) -> EffectState:
        found = effects.get(eid)
        if found is None:
            raise _fail(record, f"unknown effect {eid!r}")
        return found

    def with_effect(e: EffectState) -> dict[str, EffectState]:
        return {**effects, e.effect: e}

    if isinstance(record, Started):
        raise _fail(record, "a journal has one 'started'")
    if isinstance(record, PhaseEntered):
        return replace(base, phase=record.name, phases=(*state.phases, record))
    if isinstance(record, PreImage):
        if record.effect in effects:
            raise _fail(record, f"effect {record.effect!r} already has a pre-image")
        new = EffectState(
            effect=record.effect,
            kind=record.kind,
            resource_id=record.resource_id,
            pre_image=record.resource,
            pre_precondition=record.precondition,
            masked_paths=record.masked_paths,
            phase=state.phase,
        )
        return replace(base, effects=with_effect(new))
    if isinstance(record, EffectStarted):
        e = effect_of(record.effect)
        if e.started:
            raise _fail(record, f"effect {record.effect!r} already started")
        if (e.kind, e.resource_id) != (record.kind, record.resource_id):
            raise _fail(record, f"effect {record.effect!r} is on {e.kind} {e.resource_id}, not {record.resource_id}")
        started = replace(
            e,
            action=record.action,
            method=record.method,
            intended=record.intended,
            request_id=record.request_id,
            started_seq=record.seq,
            outcome="unknown",
            phase=state.phase,
        )
        return replace(base, effects=with_effect(started))
    if isinstance(record, EffectDone | EffectFailed):
        e = effect_of(record.effect)
        if e.outcome != "unknown":
            raise _fail(record, f"effect {record.effect!r} is {'not started' if e.outcome is None else e.outcome}")
        if e.undo != "none":
            raise _fail(record, f"effect {record.effect!r} is already being undone")
        if isinstance(record, EffectDone):
            new = replace(e, outcome="applied", result=record.result, post_precondition=record.precondition)
        else:
            new = replace(e, outcome=record.outcome, error=record.error)
        return replace(base, effects=with_effect(new))
    if isinstance(record, GateResult):
        return replace(base, gates=(*state.gates, record))
    if isinstance(record, Decision):
        rolling = state.rolling_back or record.decision == ROLLBACK
        return replace(base, decisions=(*state.decisions, record), rolling_back=rolling)
    if isinstance(record, RollbackStep):
        updated = dict(effects)
        for eid in record.effects:
            e = effect_of(eid)
            if not e.started:
                raise _fail(record, f"effect {eid!r} never started: nothing to undo")
            if e.undo in ("done", "skipped"):
                raise _fail(record, f"effect {eid!r} is already undone")
            if (e.kind, e.resource_id) != (record.kind, record.resource_id):
                raise _fail(record, f"effect {eid!r} is on {e.kind} {e.resource_id}, not {record.resource_id}")
            undo_pre = record.precondition if record.precondition is not None else e.undo_precondition
            updated[eid] = replace(e, undo=record.stage, undo_error=record.error, undo_precondition=undo_pre)
        return replace(base, effects=updated, rolling_back=True)
    if isinstance(record, Finished):
        return replace(base, finished=record)
    raise _fail(record, "unknown record type")  # pragma: no cover - the union is closed


def fold(records: Iterable[Record]) -> JournalState:
    """The state a sequence of records describes; ``JournalError`` for an empty or invalid one."""
    state: JournalState | None = None
    for record in records:
        state = step(state, record)
    if state is None:
        raise JournalError("an empty journal has no state")
    return state


def what_to_undo(state: JournalState) -> list[EffectState]:
    """Every effect started and not yet undone (nor known to have done nothing), newest first.

    Effects with ``outcome_unknown`` are included: the caller re-reads the resource; if it equals
    the pre-image the undo is ``skipped``, otherwise it is put back."""
    todo = [e for e in state.effects.values() if e.needs_undo]
    return sorted(todo, key=lambda e: e.started_seq or 0, reverse=True)


def this_attempt(state: JournalState) -> JournalState:
    """``state`` with only the effects of the current attempt: for a reopened journal, those started after
    the ``resume`` decision that reopened it (what a failing retry may undo: the first attempt's changes
    were its own, and undoing them would take back what it got right); otherwise ``state`` itself."""
    cut = state.reopened_seq
    if cut is None:
        return state
    return replace(state, effects={k: e for k, e in state.effects.items() if (e.started_seq or -1) > cut})


def before_reopening(state: JournalState) -> list[EffectState]:
    """The effects started before the ``resume`` decision that reopened ``state`` (all of them when it was not
    reopened), in the order they were started."""
    cut = state.reopened_seq
    started = [e for e in state.effects.values() if e.started and (cut is None or (e.started_seq or 0) < cut)]
    return sorted(started, key=lambda e: e.started_seq or 0)


@dataclass(frozen=True)
class RestoreTarget:
    """One resource to put back: to the pre-image of the *first* effect on it not yet undone."""

    kind: str
    resource_id: str
    pre_image: dict[str, Any] | None  # None: it did not exist before (the undo deletes it)
    pre_precondition: str | None
    masked_paths: tuple[str, ...]
    effects: tuple[str, ...]  # every effect this restore undoes (the rollback_step's ``effects``)
    outcome_unknown: bool  # some effect's outcome is unknown: compare before writing
    expected_precondition: str | None  # the etag / fingerprint the last applied effect left, if known


def restore_targets(state: JournalState) -> list[RestoreTarget]:
    """``what_to_undo`` collapsed per resource, the most recently touched resource first."""
    groups: dict[tuple[str, str], list[EffectState]] = {}
    for e in what_to_undo(state):  # newest first
        groups.setdefault((e.kind, e.resource_id), []).append(e)
    out = []
    for (kind, resource_id), newest_first in groups.items():
        first, last = newest_first[-1], newest_first[0]
        out.append(
            RestoreTarget(
                kind=kind,
                resource_id=resource_id,
                pre_image=first.pre_image,
                pre_precondition=first.pre_precondition,
                masked_paths=first.masked_paths,
                effects=tuple(e.effect for e in reversed(newest_first)),
                outcome_unknown=any(e.outcome_unknown for e in newest_first),
                expected_precondition=last.post_precondition if last.outcome == "applied" else None,
            )
        )
    return out


# ---- the writer (I/O) ------------------------------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Journal:
    """Appends records to one deploy's journal; thread-safe (infra and candidate run in parallel).

    Every append is checked against the fold first, then written with the generation this writer
    last wrote; ``StaleStateError`` means another process wrote the journal: stop acting."""

    def __init__(
        self,
        store: StateStore,
        records: Iterable[Record],
        generation: int,
        *,
        clock: Callable[[], datetime] = _utcnow,
        mask: SecretMask = NO_MASK,
    ) -> None:
        self.store = store
        self._records = list(records)
        self._dumped = [r.model_dump(mode="json") for r in self._records]
        self._state = fold(self._records)
        self._generation = generation
        self._clock = clock
        self._mask = mask
        self._lock = threading.Lock()

    # ---- opening ----
    @classmethod
    def begin(
        cls,
        store: StateStore,
        *,
        service: str,
        deploy_id: str,
        config_digest: str,
        owner: Owner,
        plan: Plan | None = None,
        operation: Operation = "deploy",
        reason: str | None = None,
        clock: Callable[[], datetime] = _utcnow,
        mask: SecretMask = NO_MASK,
    ) -> Journal:
        """Create the journal (``started``); ``JournalError`` if that deploy id exists already."""
        shown = plan.masked_copy(mask).model_dump(mode="json") if plan is not None else None
        started = Started(
            seq=0,
            at=clock(),
            deploy_id=deploy_id,
            service=service,
            operation=operation,
            config_digest=config_digest,
            plan=shown,
            plan_digest=plan.digest() if plan is not None else None,
            owner=owner,
            reason=reason,
        )
        key = journal_key(service, deploy_id)
        doc = JournalDocument(deploy_id=deploy_id, service=service, records=(started,))
        try:
            generation = store.write(key, dump_json(doc.model_dump(mode="json")), if_generation=0)
        except StaleStateError as exc:
            raise JournalError(f"a journal for {deploy_id} already exists ({store.where(key)})") from exc
        return cls(store, [started], generation, clock=clock, mask=mask)

    @classmethod
    def open(
        cls,
        store: StateStore,
        service: str,
        deploy_id: str,
        *,
        clock: Callable[[], datetime] = _utcnow,
        mask: SecretMask = NO_MASK,
    ) -> Journal:
        """Continue an existing journal (resume, rollback of a dead deploy, ``unlock --force``)."""
        records, generation = read_records(store, service, deploy_id)
        return cls(store, records, generation, clock=clock, mask=mask)

    # ---- reading ----
    @property
    def key(self) -> str:
        return journal_key(self._state.service, self._state.deploy_id)

    @property
    def where(self) -> str:
        """Where the journal is (``gs://bucket/prefix/deploys/…`` or its file), for what a person reads."""
        return self.store.where(self.key)

    @property
    def deploy_id(self) -> str:
        return self._state.deploy_id

    @property
    def records(self) -> tuple[Record, ...]:
        with self._lock:
            return tuple(self._records)

    @property
    def state(self) -> JournalState:
        with self._lock:
            return self._state

    # ---- appending ----
    def _append(self, make: Callable[[int, datetime], Record]) -> Record:
        with self._lock:
            record = make(self._state.next_seq, self._clock())
            new_state = step(self._state, record)  # never write what the fold would refuse
            dumped = [*self._dumped, record.model_dump(mode="json")]
            doc = {"format": JOURNAL_FORMAT, "deploy_id": self.deploy_id, "service": self._state.service}
            doc["records"] = dumped
            self._generation = self.store.write(self.key, dump_json(doc), if_generation=self._generation)
            self._records.append(record)
            self._dumped = dumped
            self._state = new_state
            return record

    def _masked(self, kind: str, doc: Mapping[str, Any] | None) -> tuple[dict[str, Any] | None, list[str]]:
        return self._mask.apply(kind, doc)

    def phase(self, name: str, **detail: Any) -> None:
        self._append(lambda seq, at: PhaseEntered(seq=seq, at=at, name=name, detail=detail))

    def pre_image(
        self,
        *,
        kind: str,
        resource_id: str,
        resource: Mapping[str, Any] | None,
        precondition: str | None,
        effect: str | None = None,
    ) -> str:
        """Record a resource as read, BEFORE acting on it; returns the effect id (``e<N>`` by default)."""
        masked, paths = self._masked(kind, resource)

        def make(seq: int, at: datetime) -> Record:
            eid = effect or f"e{len(self._state.effects) + 1}"
            return PreImage(
                seq=seq,
                at=at,
                effect=eid,
                kind=kind,
                resource_id=resource_id,
                resource=masked,
                precondition=precondition,
                masked_paths=tuple(paths),
            )

        record = self._append(make)
        assert isinstance(record, PreImage)
        return record.effect

    def effect_started(
        self,
        effect: str,
        *,
        action: Action,
        method: str,
        intended: Mapping[str, Any] | None = None,
        request_id: str | None = None,
    ) -> None:
        pre = self.state.effects.get(effect)
        if pre is None:
            raise JournalError(f"effect {effect!r} has no pre-image: record it before acting")
        masked, _ = self._masked(pre.kind, intended)
        self._append(
            lambda seq, at: EffectStarted(
                seq=seq,
                at=at,
                effect=effect,
                kind=pre.kind,
                resource_id=pre.resource_id,
                action=action,
                method=method,
                intended=masked,
                request_id=request_id,
            )
        )

    def effect_done(
        self, effect: str, *, result: Mapping[str, Any] | None = None, precondition: str | None = None
    ) -> None:
        e = self.state.effects.get(effect)
        masked, _ = self._masked(e.kind if e else "", result)
        self._append(
            lambda seq, at: EffectDone(seq=seq, at=at, effect=effect, result=masked, precondition=precondition)
        )

    def effect_failed(self, effect: str, error: BaseException, *, outcome: Literal["not_applied", "unknown"]) -> None:
        info = ErrorInfo.of(error)
        self._append(lambda seq, at: EffectFailed(seq=seq, at=at, effect=effect, error=info, outcome=outcome))

    @contextlib.contextmanager
    def effect(
        self,
        *,
        kind: str,
        resource_id: str,
        before: Mapping[str, Any] | None,
        precondition: str | None,
        action: Action,
        method: str,
        intended: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        effect: str | None = None,
    ) -> Iterator[EffectHandle]:
        """``pre_image`` + ``effect_started`` before the block; ``effect_done`` after it (with what
        the block passed to ``handle.done``), or ``effect_failed`` if it raised: ``not_applied``
        only for a ``CloudError`` that is sure nothing landed, ``unknown`` for anything else."""
        eid = self.pre_image(
            kind=kind, resource_id=resource_id, resource=before, precondition=precondition, effect=effect
        )
        self.effect_started(eid, action=action, method=method, intended=intended, request_id=request_id)
        handle = EffectHandle(eid)
        try:
            yield handle
        except BaseException as exc:
            definite = isinstance(exc, CloudError) and not exc.outcome_unknown
            with contextlib.suppress(DeployerError):  # never hide the effect's own error
                self.effect_failed(eid, exc, outcome="not_applied" if definite else "unknown")
            raise
        self.effect_done(eid, result=handle.result, precondition=handle.precondition)

    def gate(self, target: str, verdict: str, evidence: Mapping[str, Any] | None = None) -> None:
        ev = dict(evidence or {})
        self._append(lambda seq, at: GateResult(seq=seq, at=at, target=target, verdict=verdict, evidence=ev))

    def decision(self, decision: str, reason: str, **detail: Any) -> None:
        self._append(lambda seq, at: Decision(seq=seq, at=at, decision=decision, reason=reason, detail=detail))

    def rollback_step(
        self,
        target: RestoreTarget | EffectState,
        stage: Literal["started", "done", "failed", "skipped"],
        *,
        precondition: str | None = None,
        error: BaseException | None = None,
        **detail: Any,
    ) -> None:
        effects = target.effects if isinstance(target, RestoreTarget) else (target.effect,)
        info = ErrorInfo.of(error) if error is not None else None
        self._append(
            lambda seq, at: RollbackStep(
                seq=seq,
                at=at,
                effects=effects,
                kind=target.kind,
                resource_id=target.resource_id,
                stage=stage,
                precondition=precondition,
                error=info,
                detail=detail,
            )
        )

    def finish(self, status: FinalStatus, summary: str, *, remaining: Iterable[str] = (), **detail: Any) -> None:
        """The last record. ``rolled_back`` is refused while something remains to undo."""
        left = tuple(remaining)
        if status == "rolled_back" and what_to_undo(self.state):
            todo = ", ".join(f"{e.kind} {e.resource_id}" for e in what_to_undo(self.state))
            raise JournalError(f"cannot finish as rolled_back: still to undo: {todo}")
        self._append(
            lambda seq, at: Finished(seq=seq, at=at, status=status, summary=summary, remaining=left, detail=detail)
        )


@dataclass
class EffectHandle:
    """What the block inside ``Journal.effect`` reports about the effect it made."""

    effect: str
    result: dict[str, Any] | None = None
    precondition: str | None = None

    def done(self, result: Mapping[str, Any] | None = None, *, precondition: str | None = None) -> None:
        self.result = dict(result) if result is not None else None
        self.precondition = precondition


# ---- reading journals back -------------------------------------------------------------------------


def read_records(store: StateStore, service: str, deploy_id: str) -> tuple[list[Record], int]:
    """A deploy's records and the journal's generation; ``JournalError`` when missing or corrupt."""
    key = journal_key(service, deploy_id)
    got = read_json(store, key)
    if got is None:
        raise JournalError(f"no journal for deploy {deploy_id} of {service} ({store.where(key)})")
    raw, generation = got
    try:
        doc = JournalDocument.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise JournalError(f"journal {store.where(key)} is corrupt: {where}: {first.get('msg')}") from exc
    if (doc.deploy_id, doc.service) != (deploy_id, service):
        raise JournalError(f"journal {store.where(key)} belongs to {doc.deploy_id} of {doc.service}")
    fold(doc.records)  # a stored journal must also satisfy the fold
    return list(doc.records), generation


def load(store: StateStore, service: str, deploy_id: str) -> JournalState:
    records, _ = read_records(store, service, deploy_id)
    return fold(records)


def list_deploys(store: StateStore, service: str) -> list[str]:
    """Deploy ids of ``service`` with a journal, newest first (ids sort by time)."""
    prefix = deploys_prefix(service)
    ids = [k[len(prefix) : -len(".json")] for k in store.list(prefix) if k.endswith(".json")]
    return sorted((i for i in ids if DEPLOY_ID_RE.fullmatch(i)), reverse=True)


def newest_first_or_error(store: StateStore, service: str) -> Iterator[tuple[str, JournalState | DeployerError]]:
    """Every journal of ``service`` as ``(deploy_id, state or why it cannot be loaded)``, newest first,
    loaded as they are needed. Ids sort by time to the second only; journals whose ids share a second
    are ordered by their ``started`` time, never by their random suffix (an unpin and a deploy started
    in the same second). An unreadable journal comes after the readable ones of its second. The one
    ordering ``history``, ``why last`` and ``resume.newest_first`` share."""
    ids = list_deploys(store, service)
    i = 0
    while i < len(ids):
        second = ids[i][:17]  # d-YYYYMMDD-HHMMSS
        readable: list[tuple[str, JournalState]] = []
        broken: list[tuple[str, DeployerError]] = []
        while i < len(ids) and ids[i][:17] == second:
            try:
                readable.append((ids[i], load(store, service, ids[i])))
            except DeployerError as exc:
                broken.append((ids[i], exc))
            i += 1
        yield from sorted(readable, key=lambda pair: pair[1].started.at, reverse=True)
        yield from broken


def latest(store: StateStore, service: str) -> JournalState | None:
    """The newest deploy's state, or ``None`` when the service has none."""
    ids = list_deploys(store, service)
    return load(store, service, ids[0]) if ids else None
