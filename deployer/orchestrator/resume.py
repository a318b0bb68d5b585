"""``deployer resume``: finish or undo a deploy or rollback whose process died, from its journal.

**The rule** (argo-rollouts: abort is an intent resolved in ONE place — ``decide``, pure):

- a finished journal: nothing to do;
- an emergency rollback (operation ``rollback``) is carried FORWARD: its intent — the ``rollback``
  decision naming the target revision (and ``--infra``) — is done where it had not landed yet. A
  rollback is never undone by resume; one that died before its decision changed nothing (``failed``);
- a deploy that had decided to roll back is UNDONE (a decision once taken is never reversed);
- a deploy whose finalize update had been started — the step machine (``phases``) only gets there
  after the candidate gate and the gate of every earlier traffic step passed, and resume checks that
  the journal shows every gate ``Passed`` — is FINISHED forward: the finalize is settled (re-sent only
  when it did not land and the service is exactly as the deploy left it), then the public gate at 100 %
  unless the journal already has it; a gate that does not pass rolls the deploy back;
- every other deploy — the candidate not verified, a traffic step not verified, the finalize refused —
  is UNDONE: everything it touched back to its pre-image (``rollback.Restorer``).
- ``unlock`` / ``unpin`` journals are completed (the pin cleared if their decision says so).
- a journal that FINISHED ``rollback_incomplete`` (its undo could not put everything back: a call
  failed, the cloud went away) is tried again, in the same journal: a ``resume`` decision reopens it
  (``journal.py``, "Reopening", says why the same journal and not a new one), then a deploy is undone
  again — only what is not back yet, each resource compared with what the deploy left and with its
  pre-image before anything is written, a resource someone else changed left alone and reported — and
  an emergency rollback is carried forward to its target again (and verified again if it was asked to
  be) — only while the service is as its first attempt left it (``emergency.changed_since_first_attempt``;
  else it is left alone, ``aborted``), without writing again a pin that is gone, and undoing on failure
  only the retry's own effects (``journal.this_attempt``). An undo by resume verifies when any resume of
  the journal was asked to (``verify_asked``). The journal then ends with a second ``finished``: both
  outcomes stay in it (``history``, ``why``). Only while NO journal of any kind (``unpin``, ``unlock``
  included) came after it: an operator who acted since decides (``decide``'s ``later``). Every other
  finished journal (succeeded, rolled back, failed, aborted: a foreign change is for a person to look at)
  needs nothing.

**Unknown outcomes** (an ``effect_started`` with no result: the process died during the call) are
settled first, each by re-reading the resource and comparing it with the intended after (landed:
``effect_done``) and with the pre-image (did not land: ``effect_failed not_applied``); an effect that
matches neither stays unknown, and the undo compares again before writing anything.

**The lock**: the lease of the dead operation is taken over (``lock.may_take``: the journal's own id)
only once its holder is dead — its pid is gone on this host (``lock.holder_alive``) — or its lease
expired; a live holder is exit 4. A journal left without a lease (``unlock --force``) is resumed
under a new lease. The lease is released when the journal is finished.

Exit codes: 0 the journal is finished and nothing is half-changed (succeeded, rolled back, or it had
changed nothing); 3 something remains changed (rollback incomplete, or left alone because someone else
changed it); 4 a live process holds the lock; 2 usage.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

import structlog

from deployer.config import DeployConfig
from deployer.errors import CloudError, CorruptStateError, DeployerError, JournalError, LockHeldError
from deployer.gcp.compute import BACKEND_OUTPUT_ONLY
from deployer.orchestrator import traffic
from deployer.orchestrator.cloud_apis import cloud_apis
from deployer.orchestrator.journal import (
    ADMIN_OPERATIONS,
    REOPENABLE,
    RESUME,
    ROLLBACK,
    Decision,
    EffectState,
    FinalStatus,
    Journal,
    JournalState,
    journal_key,
    list_deploys,
    load,
    newest_first_or_error,
    what_to_undo,
)
from deployer.orchestrator.lock import ServiceLock, holder_alive, holder_journal_of
from deployer.orchestrator.owner import Owner
from deployer.orchestrator.run_options import LockedRunOptions
from deployer.orchestrator.service_status import STATUS_FIELDS
from deployer.plan import ANNOTATION_DEPLOY_ID, ANNOTATION_PREVIOUS, ARMOR_RULE, BACKEND_SERVICE, RUN_SERVICE, Action
from deployer.state import StateStore, open_store

JSON = dict[str, Any]

_log = structlog.get_logger("deployer.resume")


# ---- the decision (pure) -----------------------------------------------------------------------------

Action_ = Literal["nothing", "forward", "undo", "rollback", "admin", "void"]


@dataclass(frozen=True)
class ResumePlan:
    action: Action_
    why: str


def finalize_effect(state: JournalState) -> EffectState | None:
    """The deploy's finalize: the service update that writes this deploy's id as an annotation."""
    found = None
    for e in state.effects.values():
        annotations = (e.intended or {}).get("annotations") or {}
        if e.kind == RUN_SERVICE and e.started and annotations.get(ANNOTATION_DEPLOY_ID) == state.deploy_id:
            found = e
    return found


def rollback_intent(state: JournalState) -> Decision | None:
    """An emergency rollback's intent: its ``rollback`` decision naming the target revision (or None)."""
    return next((d for d in reversed(state.decisions) if d.decision == ROLLBACK and d.detail.get("to_revision")), None)


def _left(state: JournalState) -> str:
    """What an incomplete rollback says remains, short: ``armor.rule 50, run.service chat-backend``."""
    assert state.finished is not None
    names = []
    for line in state.finished.remaining:
        head = line.split(": ", 1)[0]
        kind, _, rid = head.partition(" ")
        names.append(f"{kind} {rid.rsplit('/', 1)[-1]}".strip())
    return f"left: {', '.join(names)}" if names else state.finished.summary


def decide(state: JournalState, later: JournalState | None = None) -> ResumePlan:
    """What resuming ``state`` does (the module docstring's rule). ``later``: the newest journal of any kind
    (``unpin`` and ``unlock`` included) started after ``state``, if any: a finished journal is reopened only
    when nothing came after it (an operator who unpinned, a deploy or rollback since, acted on what it left)."""
    op = state.started.operation
    if state.is_finished and later is not None and state.status in REOPENABLE:
        return ResumePlan(
            "nothing",
            f"{state.deploy_id} ended {state.status}, but the {later.started.operation} {later.deploy_id} came "
            "after it: resume retries it only while nothing has followed it",
        )
    if state.is_finished:
        if state.status in REOPENABLE and op == "deploy":
            return ResumePlan("undo", f"its rollback was incomplete ({_left(state)}); resume puts back what remains")
        if state.status in REOPENABLE and op == "rollback" and rollback_intent(state) is not None:
            return ResumePlan(
                "rollback", f"the rollback was incomplete ({_left(state)}); resume carries it forward to its target"
            )
        return ResumePlan("nothing", f"already {state.status}")
    if op in ADMIN_OPERATIONS:
        return ResumePlan("admin", f"complete the {op}")
    if op == "rollback":
        if rollback_intent(state) is not None:
            return ResumePlan("rollback", "an emergency rollback is carried forward to its target")
        return ResumePlan("void", "the rollback died before it chose a target: it changed nothing")
    if state.resume_action == "rollback":
        reason = next((d.reason for d in state.decisions if d.decision == ROLLBACK), "a step failed")
        return ResumePlan("undo", f"it had decided to roll back ({reason})")
    if not state.effects or not any(e.started for e in state.effects.values()):
        return ResumePlan("void", "it died before changing anything")
    fin = finalize_effect(state)
    if fin is None:
        candidate_passed = any(g.target == "candidate" and g.verdict == "Passed" for g in state.gates)
        if not candidate_passed:
            return ResumePlan("undo", "it had not verified its candidate")
        return ResumePlan("undo", "it had not verified every traffic step")
    if fin.outcome == "not_applied":
        return ResumePlan("undo", "its finalize update was refused")
    failed = [g for g in state.gates if g.verdict != "Passed"]
    if failed:
        return ResumePlan("undo", f"the gate {failed[0].target} did not pass ({failed[0].verdict})")
    return ResumePlan("forward", "every gate had passed and its finalize had started: it is finished")


# ---- settling unknown outcomes (pure comparisons) -----------------------------------------------------


def _strip(doc: Mapping[str, Any] | None, fields: Sequence[str]) -> JSON | None:
    return None if doc is None else {k: v for k, v in doc.items() if k not in fields}


def service_landed(effect: EffectState, current: Mapping[str, Any]) -> bool:
    """The service holds what ``effect`` intended: traffic spec, template revision, deployer annotations."""
    from deployer.orchestrator.emergency import norm_traffic

    intended = effect.intended or {}
    if "traffic" in intended and norm_traffic(current.get("traffic") or []) != norm_traffic(
        intended.get("traffic") or []
    ):
        return False
    revision = intended.get("template.revision")
    if revision and traffic.short((current.get("template") or {}).get("revision")) != traffic.short(revision):
        return False
    annotations = current.get("annotations") or {}
    return all(annotations.get(k) == v for k, v in (intended.get("annotations") or {}).items())


def settle(effect: EffectState, current: Mapping[str, Any] | None) -> Literal["applied", "not_applied"] | None:
    """Compare the resource as it is now with the effect's intended after and its pre-image."""
    from deployer.orchestrator.rollback import backend_restore_write, rule_restore_write

    if effect.kind == RUN_SERVICE:
        if current is None:
            return None
        if effect.pre_precondition and current.get("etag") == effect.pre_precondition:
            return "not_applied"
        return "applied" if service_landed(effect, current) else None
    if effect.kind == BACKEND_SERVICE:
        if current is None or effect.pre_image is None:
            return None
        intended = _strip(effect.intended, BACKEND_OUTPUT_ONLY) or {}
        now = _strip(current, BACKEND_OUTPUT_ONLY) or {}
        if backend_restore_write(current, effect.pre_image) is None:
            return "not_applied"
        if intended and all(now.get(k) == v for k, v in intended.items()):
            return "applied"
        return None
    if effect.kind == ARMOR_RULE:
        if rule_restore_write(current, effect.intended) is None:
            return "applied"
        if rule_restore_write(current, effect.pre_image) is None:
            return "not_applied"
        return None
    return None


# ---- the command ---------------------------------------------------------------------------------------


@dataclass
class ResumeOptions(LockedRunOptions):
    verify: bool = False  # after an undo, the gate on the restored public path


@dataclass
class ResumeResult:
    service: str
    status: str  # the journal's final status, or "nothing"
    exit_code: int
    deploy_id: str | None = None
    operation: str | None = None
    action: str | None = None
    why: str | None = None
    settled: list[str] = field(default_factory=list)
    restored: list[JSON] = field(default_factory=list)
    remaining: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)
    traffic_after: list[JSON] = field(default_factory=list)
    message: str = ""
    journal_location: str | None = None  # where the journal it resumed is (``Journal.where``)

    def to_json(self) -> JSON:
        return {
            "service": self.service,
            "status": self.status,
            "exit_code": self.exit_code,
            "deploy_id": self.deploy_id,
            "operation": self.operation,
            "action": self.action,
            "why": self.why,
            "settled": self.settled,
            "restored": self.restored,
            "remaining": self.remaining,
            "hints": self.hints,
            "traffic_after": self.traffic_after,
            "message": self.message,
            "journal_location": self.journal_location,
        }


def exit_code_of(status: str) -> int:
    return 0 if status in ("succeeded", "rolled_back", "failed", "nothing") else 3


def resume(config: DeployConfig, options: ResumeOptions | None = None) -> ResumeResult:
    """``deployer resume`` (sync)."""
    return Resumer(config, options or ResumeOptions()).run()


class Resumer:
    def __init__(self, config: DeployConfig, options: ResumeOptions) -> None:
        from deployer.orchestrator.deploy import state_key

        self.config = config
        self.options = options
        self.clients, self.run_api, self.compute = cloud_apis(
            config, policy=options.policy, read_policy=options.read_policy
        )
        self.key = state_key(config)
        self.name = config.service_path
        self.log: Any = _log.bind(service=self.key)

    def run(self) -> ResumeResult:
        options = self.options
        store = open_store(self.config.state, self.clients, base=options.state_base)
        lock = ServiceLock(store, self.key, clock=options.clock, ttl=options.lock_ttl)
        owner = options.owner or Owner.current()
        holder = lock.read()
        now = options.clock()
        if holder is not None:
            target_id = holder.deploy_id
            try:
                load(store, self.key, target_id)
            except DeployerError as exc:
                if _journal_exists(store, self.key, target_id):  # there, but unreadable: not "died before it"
                    raise JournalError(
                        f"{self.key}: the journal of {target_id}, which holds the lock, cannot be read, so what it "
                        f"changed is unknown: {exc.message}",
                        hint=UNREADABLE_JOURNAL_HINT,
                    ) from exc
                return self._stale_lease(lock, holder, owner)
        else:
            newest = newest_operation(store, self.key)
            if newest is None:
                return ResumeResult(self.key, "nothing", 0, message="no journal: nothing to resume")
            target_id = newest.deploy_id
            if newest.is_finished:
                plan = decide(newest, later_than(store, self.key, newest))
                if plan.action == "nothing":
                    return self._nothing(newest, plan)
        lease = lock.acquire(
            target_id,
            owner,
            purpose="resume",
            holder_journal=lambda info: holder_journal_of(store, info),
            holder_dead=lambda info: holder_alive(info) is False,
        )
        self.log = self.log.bind(deploy_id=target_id)
        self.log.info("resume.locked", took_over_from=holder.describe(now) if holder else None)
        try:
            journal = Journal.open(store, self.key, target_id, clock=options.clock)
            if journal.state.is_finished:
                # reopening a finished journal: only while it is still the newest and still to retry (a deploy
                # or another resume may have come and gone between the read above and the lock)
                newest = newest_operation(store, self.key)
                plan = decide(journal.state, later_than(store, self.key, journal.state))
                if newest is None or newest.deploy_id != target_id or plan.action == "nothing":
                    return self._nothing(newest or journal.state, plan if newest is not None else None)
            return self._resume(store, journal, owner)
        finally:
            with contextlib.suppress(DeployerError):
                lease.release()

    def _nothing(self, newest: JournalState, plan: ResumePlan | None = None) -> ResumeResult:
        if plan is not None and plan.action == "nothing" and newest.status in REOPENABLE:
            message = f"nothing to resume: {plan.why}"
        else:
            message = f"nothing to resume: the newest journal ({newest.deploy_id}) is {newest.status}"
        return ResumeResult(
            self.key,
            "nothing",
            0,
            deploy_id=newest.deploy_id,
            operation=newest.started.operation,
            why=plan.why if plan is not None else None,
            message=message,
        )

    def _stale_lease(self, lock: ServiceLock, holder: Any, owner: Owner) -> ResumeResult:
        """A lease whose journal was never written: the holder died before acting. Remove it once dead."""
        now = self.options.clock()
        if not holder.expired(now) and holder_alive(holder) is not False:
            raise LockHeldError(
                f"{self.key} is locked by {holder.describe(now)}, which is still running (or may be)",
                hint="wait for it; resume only takes over a lease whose process is gone or whose lease expired",
            )
        lock.force_unlock(reason="resume: its holder died before writing a journal", by=owner)
        return ResumeResult(
            self.key,
            "nothing",
            0,
            deploy_id=holder.deploy_id,
            message=f"removed the lease of {holder.deploy_id}: it died before writing its journal (nothing changed)",
        )

    # ---- one journal -------------------------------------------------------------------------------------
    def _resume(self, store: StateStore, journal: Journal, owner: Owner) -> ResumeResult:
        state = journal.state
        plan = decide(state)
        result = ResumeResult(
            self.key,
            state.status,
            exit_code_of(state.status),
            deploy_id=state.deploy_id,
            operation=state.started.operation,
            action=plan.action,
            why=plan.why,
            journal_location=journal.where,
        )
        if plan.action == "nothing":
            result.message = f"{state.deploy_id} is {state.status}: nothing to resume"
            return result
        self.log.warning(
            "resume.decided",
            action=plan.action,
            why=plan.why,
            operation=state.started.operation,
            retry_of=state.status if state.is_finished else None,
        )
        if state.finished is not None:  # a retry of an incomplete rollback: the decision reopens the journal
            journal.decision(
                RESUME,
                plan.why,
                action=plan.action,
                by=owner.describe(),
                retry_of=state.finished.status,
                remaining=list(state.finished.remaining),
                verify=self.options.verify,
            )
            journal.phase("resume")
        else:
            journal.decision(RESUME, plan.why, action=plan.action, by=owner.describe(), verify=self.options.verify)
        result.settled = self._settle_unknown(journal)
        if plan.action == "void":
            journal.finish("failed", "died before changing anything", why=plan.why)
            return self._done(journal, result)
        if plan.action == "admin":
            return self._admin(store, journal, result)
        if plan.action == "rollback":
            return self._rollback_forward(store, journal, result)
        if plan.action == "forward":
            return self._forward(journal, result)
        return self._undo(store, journal, result, plan.why)

    def _done(self, journal: Journal, result: ResumeResult) -> ResumeResult:
        state = journal.state
        result.status = state.status
        result.exit_code = exit_code_of(state.status)
        if state.finished is not None:
            result.traffic_after = list(state.finished.detail.get("traffic_after") or [])
            result.remaining = list(state.finished.remaining)
        result.message = f"{state.deploy_id}: {result.action} → {state.status} ({result.why})"
        self.log.warning("resume.finished", status=state.status, action=result.action)
        return result

    def _read(self, effect: EffectState) -> JSON | None:
        from deployer.orchestrator.rollback import _BS_ID, _RULE_ID

        if effect.kind == RUN_SERVICE:
            return self._settled_service()
        if effect.kind == BACKEND_SERVICE:
            m = _BS_ID.match(effect.resource_id)
            return self.compute.get_backend_service(m.group("name")) if m else None
        if effect.kind == ARMOR_RULE:
            m = _RULE_ID.match(effect.resource_id)
            return self.compute.get_rule(m.group("policy"), int(m.group("priority"))) if m else None
        return None

    def _settled_service(self, wait_s: float = 60.0) -> JSON | None:
        """The service once it is no longer reconciling (an update the dead process sent may be rolling out)."""
        import time

        deadline = time.monotonic() + wait_s
        while True:
            svc = self.run_api.get_service(self.name)
            if svc is None or not svc.get("reconciling") or time.monotonic() > deadline:
                return svc
            time.sleep(0.1)

    def _settle_unknown(self, journal: Journal) -> list[str]:
        out = []
        for e in list(journal.state.effects.values()):
            if not e.outcome_unknown or e.undo != "none":
                continue
            current = self._read(e)
            verdict = settle(e, current)
            if verdict == "applied":
                journal.effect_done(
                    e.effect,
                    result={"settled_by": "resume", "landed": True},
                    precondition=(current or {}).get("etag") or (current or {}).get("fingerprint"),
                )
            elif verdict == "not_applied":
                journal.effect_failed(
                    e.effect, DeployerError("settled by resume: it never landed"), outcome="not_applied"
                )
            out.append(f"{e.effect} {e.kind} {e.resource_id}: {verdict or 'still unknown'}")
            self.log.info("resume.settled", effect=e.effect, kind=e.kind, verdict=verdict or "unknown")
        return out

    # ---- undo -------------------------------------------------------------------------------------------
    def _undo(self, store: StateStore, journal: Journal, result: ResumeResult, why: str) -> ResumeResult:
        from deployer.orchestrator.rollback import Restorer

        state = journal.state
        if not what_to_undo(state) and not state.reopened:
            journal.finish("failed", "nothing it started had landed", why=why, traffic_after=self._traffic())
            return self._done(journal, result)
        if not state.rolling_back:
            journal.decision(ROLLBACK, f"resume: {why}")
        report = Restorer(self.run_api, self.compute, journal).restore_all()
        result.restored = [i.to_json() for i in report.items]
        result.hints = report.hints
        status: FinalStatus = "rolled_back" if report.ok else ("aborted" if report.foreign else "rollback_incomplete")
        if report.ok and verify_asked(journal.state, self.options.verify):
            verdict = self._gate(journal, "restored", None)
            if verdict != "Passed":
                status = "rollback_incomplete"
        summary = {
            "rolled_back": "rolled back by resume: every touched resource is back to its pre-image",
            "aborted": "resume left a resource someone else changed",
            "rollback_incomplete": "resume could not put everything back",
        }[status]
        journal.finish(
            status,
            summary,
            remaining=report.remaining,
            why=why,
            traffic_after=self._traffic(),
            revision=_candidate(state),
            owned_armor_priorities=_owned_before(store, self.key, state.deploy_id),
            resumed=True,
        )
        return self._done(journal, result)

    def _traffic(self, service: Mapping[str, Any] | None = None) -> list[JSON]:
        svc = service if service is not None else self.run_api.get_service(self.name)
        return [s.to_json() for s in traffic.effective(svc or {})]

    # ---- forward: finish a deploy whose finalize had started --------------------------------------------------
    def _forward(self, journal: Journal, result: ResumeResult) -> ResumeResult:
        state = journal.state
        fin = finalize_effect(state)
        assert fin is not None
        current = self._settled_service()
        if current is None:
            return self._undo_store(journal, result, "the service is gone")
        if fin.outcome != "applied" and not service_landed(fin, current):
            if current.get("etag") != fin.pre_precondition:
                return self._undo_store(journal, result, "the service changed since the finalize was sent")
            try:
                current = self._resend(journal, fin, current)
            except CloudError as exc:
                return self._undo_store(journal, result, f"re-sending the finalize failed: {exc}")
        state = journal.state
        if not any(g.target.startswith("public 100") and g.verdict == "Passed" for g in state.gates):
            verdict = self._gate(journal, "public 100%", current)
            if verdict != "Passed":
                return self._undo_store(journal, result, f"the public gate at 100% did not pass ({verdict})")
        intended = fin.intended or {}
        annotations = intended.get("annotations") or {}
        journal.finish(
            "succeeded",
            f"deployed {_candidate(state)} (finished by resume)",
            traffic_after=self._traffic(current),
            revision=_candidate(state),
            previous=annotations.get(ANNOTATION_PREVIOUS),
            owned_armor_priorities=_owned_by_plan(state),
            why=None,
            resumed=True,
        )
        return self._done(journal, result)

    def _undo_store(self, journal: Journal, result: ResumeResult, why: str) -> ResumeResult:
        store = journal.store
        result.why = why
        result.action = "undo"
        return self._undo(store, journal, result, why)

    def _resend(self, journal: Journal, fin: EffectState, current: JSON) -> JSON:
        """The finalize again, on the service exactly as the deploy left it (its etag checked)."""
        intended = fin.intended or {}
        body = {k: copy.deepcopy(v) for k, v in current.items() if k not in STATUS_FIELDS}
        body["traffic"] = copy.deepcopy(intended.get("traffic") or [])
        body["annotations"] = {**(current.get("annotations") or {}), **(intended.get("annotations") or {})}
        etag = str(current.get("etag") or "")
        with journal.effect(
            kind=RUN_SERVICE,
            resource_id=self.name,
            before=current,
            precondition=etag,
            action=Action.UPDATE,
            method="run.services.patch",
            intended=intended,
        ) as handle:
            op = self.run_api.update_service({**body, "name": self.name}, etag=etag)
            meta = self.run_api.metadata(op) or {}
            handle.done({"etag": meta.get("etag"), "step": "finalize (resume)"}, precondition=meta.get("etag"))
        return self.run_api.wait(op)

    def _gate(self, journal: Journal, target: str, service: Mapping[str, Any] | None) -> str:
        from deployer.gate import run_gate
        from deployer.orchestrator import gates

        svc = service if service is not None else (self.run_api.get_service(self.name) or {})
        spec = gates.public_spec(self.config.gate.public, svc)
        verdict = asyncio.run(run_gate(spec, env=self.options.gate_env))
        journal.gate(target, verdict.outcome.value, verdict.to_json())
        return str(verdict.outcome.value)

    # ---- an emergency rollback, carried forward --------------------------------------------------------------
    def _rollback_forward(self, store: StateStore, journal: Journal, result: ResumeResult) -> ResumeResult:
        from deployer.orchestrator.emergency import (
            EmergencyRollback,
            RollbackOptions,
            RollbackResult,
            Target,
            _service_pre_image,
        )

        state = journal.state
        intent = rollback_intent(state)
        assert intent is not None  # decide() chose "rollback" only with one
        detail = intent.detail
        journals: list[JournalState] = []
        undo_from = None
        for other in newest_first(store, self.key):
            if other.deploy_id == state.deploy_id:
                continue
            journals.append(other)
            if other.deploy_id == detail.get("from_deploy"):
                undo_from = other
        pre, masked = _service_pre_image(undo_from) if undo_from is not None else (None, ())
        if undo_from is not None and undo_from.started.operation != "deploy":
            pre, masked = None, ()
        target = Target(
            str(detail["to_revision"]),
            str(detail.get("source") or "journal"),
            journal_id=detail.get("from_deploy"),
            pre_image=pre,
            masked_paths=masked,
            why=str(detail.get("why") or ""),
        )
        # verified again when it was asked to be (--verify, recorded in its decision; older journals: a gate on
        # the restored path), or when resume is run with --verify
        verify = self.options.verify or bool(detail.get("verify")) or any(g.target == "restored" for g in state.gates)
        options = RollbackOptions(
            reason=state.started.reason or intent.reason,
            infra=bool(detail.get("infra")),
            verify=verify,
            pin_for=timedelta(seconds=float(detail.get("pin_for_s") or 86400)),
            clock=self.options.clock,
            policy=self.options.policy,
            read_policy=self.options.read_policy,
            lock_ttl=self.options.lock_ttl,
            state_base=self.options.state_base,
            gate_env=self.options.gate_env,
        )
        runner = EmergencyRollback(self.config, options)
        live = self._settled_service()
        if live is None:
            # a retry (reopened) had changed things in its first attempt: not "nothing changed"
            status: FinalStatus = "rollback_incomplete" if state.reopened else "failed"
            journal.finish(status, "the service is gone", why="not found")
            return self._done(journal, result)
        out = RollbackResult(service=self.key, status="failed", exit_code=1, rollback_id=state.deploy_id)
        runner.carry_out(
            store,
            journal,
            live,
            target,
            journals,
            out,
            displaced=None,
            owner=state.started.owner,
            pinned_at=state.started.at,
        )
        result.restored = out.restored
        result.hints = out.hints
        return self._done(journal, result)

    # ---- unlock / unpin ------------------------------------------------------------------------------------
    def _admin(self, store: StateStore, journal: Journal, result: ResumeResult) -> ResumeResult:
        from deployer.orchestrator.pins import UNPIN, clear_pin, read_pin

        state = journal.state
        unpin = next((d for d in state.decisions if d.decision == UNPIN), None)
        if state.started.operation == "unpin" and unpin is not None:
            pin = read_pin(store, self.key)
            wanted = (unpin.detail.get("pin") or {}).get("rollback_id")
            if pin is not None and pin.rollback_id == wanted:
                clear_pin(store, pin)
            journal.finish("succeeded", "unpinned (finished by resume)", resumed=True)
        elif state.decisions and state.started.operation == "unlock":
            journal.finish("succeeded", "unlocked (finished by resume)", resumed=True)
        else:
            journal.finish("failed", f"the {state.started.operation} died before acting", resumed=True)
        return self._done(journal, result)


# ---- helpers ---------------------------------------------------------------------------------------------


def verify_asked(state: JournalState, now: bool) -> bool:
    """Whether an undo by resume ends with the gate on the restored path: asked now (``--verify``), or by an
    earlier resume of this journal (its ``resume`` decision, or the ``restored`` gate it ran) — a retry after
    a gate that did not pass never finishes ``rolled_back`` without passing it."""
    if now or any(g.target == "restored" for g in state.gates):
        return True
    return any(d.decision == RESUME and d.detail.get("verify") for d in state.decisions)


def later_than(store: StateStore, key: str, state: JournalState) -> JournalState | None:
    """The newest journal of any kind (``unpin`` / ``unlock`` included) newer than ``state``, if any."""
    for other in newest_first(store, key):
        return None if other.deploy_id == state.deploy_id else other
    return None


def newest_first(store: StateStore, key: str) -> Iterator[JournalState]:
    """The service's journals, newest first, loaded as they are needed. Ids sort by time to the second;
    journals started in the same second are ordered by their ``started`` time (a rollback right after a
    deploy). Unreadable journals are skipped."""
    for _deploy_id, state in newest_first_or_error(store, key):
        if isinstance(state, JournalState):
            yield state


UNREADABLE_JOURNAL_HINT = (
    "inspect it (`deployer history` lists it as unreadable); once the service, the backend service and the "
    "Cloud Armor rules are checked by hand, move it out of the state store (deployer never deletes it)"
)


def _journal_exists(store: StateStore, key: str, deploy_id: str) -> bool:
    try:
        return store.read(journal_key(key, deploy_id)) is not None
    except CorruptStateError:
        return True


def newest_operation(store: StateStore, key: str) -> JournalState | None:
    """The newest deploy or rollback journal (finished ``unlock`` / ``unpin`` journals skipped): the one
    that must be finished before anything else acts on the service.

    The newest journal unreadable (damaged by hand or on disk) is ``JournalError``: whether that operation
    finished is unknown, and skipping it would let a deploy act over what it may have left half-changed."""
    ids = list_deploys(store, key)
    if ids:
        try:
            load(store, key, ids[0])
        except DeployerError as exc:
            raise JournalError(
                f"{key}: the newest journal {ids[0]} cannot be read, so whether that operation finished is "
                f"unknown: {exc.message}",
                hint=UNREADABLE_JOURNAL_HINT,
            ) from exc
    for state in newest_first(store, key):
        if state.started.operation not in ADMIN_OPERATIONS or not state.is_finished:
            return state
    return None


def _candidate(state: JournalState) -> str | None:
    from deployer.orchestrator.deploy import revision_name

    try:
        return revision_name(state.service.rsplit("/", 1)[-1], state.deploy_id)
    except (AssertionError, IndexError):  # pragma: no cover - ids are validated by the journal
        return None


def _owned_by_plan(state: JournalState) -> list[int]:
    """The Cloud Armor priorities a deploy that succeeded owns: its plan's rules that are not deleted."""
    out = []
    for change in (state.started.plan or {}).get("changes") or []:
        if change.get("kind") == ARMOR_RULE and change.get("action") != "delete":
            with contextlib.suppress(ValueError):
                out.append(int(str(change.get("id", "")).rsplit("/", 1)[-1]))
    return sorted(out)


def _owned_before(store: StateStore, key: str, deploy_id: str) -> list[int]:
    """What the newest finished journal before ``deploy_id`` owned (what an undone deploy leaves), in the one
    order journals have (``newest_first``: ids to the second, then their ``started`` time — never the random
    suffix of two ids in the same second)."""
    seen = False
    for state in newest_first(store, key):
        if not seen:
            seen = state.deploy_id == deploy_id
            continue
        if state.finished is None or state.started.operation in ADMIN_OPERATIONS:
            continue
        owned = state.finished.detail.get("owned_armor_priorities")
        if isinstance(owned, list):
            return [int(p) for p in owned]
    return []
