"""``deployer rollback``: the emergency rollback — traffic back to the last good revision, now.

    lock (preempting a deploy in flight) ∥ GetService → journal ``rollback`` → [--infra: backend service
    and owned Cloud Armor rules back to the last deploy's pre-images] → ONE UpdateService (etag) → wait
    → pin → the displaced deploy's journal closed → [--verify: the gate] → finished → lock released

Fast by design: no preflight, no plan, no gate unless ``--verify``; the only calls are one GetService,
one UpdateService and one operation wait (plus one GetRevision when the target's template must come
from the revision, and the Compute calls of ``--infra``). ``google.cloud.compute_v1`` is imported only
with ``--infra``. The GetService runs while the lock and the journal are written (a stale read only
costs a retry: the UpdateService carries the etag it read, gcp-facts §4.2).

**Which revision** (``rollback_target.choose_target``, pure), first that applies:

1. ``--to REVISION``.
2. The journal: the newest journal that still has an effect on the service. A deploy that is running,
   aborted, incomplete or succeeded → the revision that served before it (its service pre-image; when
   that pre-image served one revision, its traffic is written back exactly, tags included). A deploy
   that failed or rolled back left nothing: look further back. An earlier emergency rollback → the same
   revision again (running ``rollback`` twice never walks further back; ``--to`` does).
3. The service's ``deployer.dev/previous-revision`` annotation (written by the deploy's finalize).
4. The previous serving revision: the revision tagged ``previous``, else the newest Ready revision
   created before the one serving now.

**What is written**: 100 % to the target; tags kept at 0 % (the journal case: the pre-image's tags);
the template of the target revision (the pre-image's template, or the one the revision was made from),
so the next ``deploy`` of the bad release makes a new candidate instead of finding "nothing to change";
``deployer.dev/deploy-id`` = this rollback and ``deployer.dev/last-good-revision`` = the target (the
drift check then agrees with what serves). Labels and other annotations stay as they are now.

**Preemption**: a lease held by a deploy is taken (``lock.may_take(preempt=True)``); the deploy finds
its lease gone at its next check (before each mutating call, at each step, at each heartbeat), stops
without rolling anything back and finishes ``aborted``. A lease held by a live rollback, resume or
unpin is not taken (exit 4). When the displaced deploy is dead (or had no lease), this rollback closes
its journal: decision ``superseded``, finished ``aborted``, with what remains changed.

**--infra** is all or nothing: the infrastructure is restored FIRST (backend service ∥ the chain of
rule writes), then traffic; if any of it fails for good, what this rollback already changed is put back
from its own journal (``rollback.Restorer``) and it ends ``failed``: exit 1, nothing changed. Without
``--infra`` the infrastructure is left as the deploy made it (journaled as remaining).

**Ctrl-C / SIGTERM**: before it acted (no call that changes anything was started) the journal is
finished ``failed`` (nothing changed) and the CLI says only that it was interrupted. Once it acted,
the journal is left unfinished for ``deployer resume`` (which carries it forward to its target), and
the error says so: ``errors.Interrupted``, still a ``KeyboardInterrupt`` (exit 130 / 143).

Exit codes: 0 traffic moved (and infra restored, pinned, verified when asked); 1 nothing was changed
(refused, or it failed and undid its own changes); 3 incomplete (something changed and could not be
finished or undone, or ``--verify`` did not pass); 2 usage; 4 a live rollback/resume holds the lock.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import structlog

from deployer.config import DeployConfig
from deployer.errors import CloudError, ConflictError, DeployerError, Interrupted, LockHeldError, StaleStateError
from deployer.gcp.clients import Clients
from deployer.gcp.run_rest import RunRest
from deployer.orchestrator import traffic
from deployer.orchestrator.journal import (
    ADMIN_OPERATIONS,
    FinalStatus,
    Journal,
    JournalState,
    RestoreTarget,
    before_reopening,
    load,
    new_deploy_id,
    restore_targets,
    this_attempt,
    what_to_undo,
)
from deployer.orchestrator.lock import LockInfo, ServiceLock, holder_alive
from deployer.orchestrator.owner import Owner
from deployer.orchestrator.pins import DEFAULT_PIN_TTL, Pin, new_pin, read_pin, write_pin
from deployer.orchestrator.rollback_target import (
    ROLLBACK,
    Target,
    already_moved,
    choose_target,
    rollback_body,
    service_key,
    template_from_revision,
    want_of,
)
from deployer.orchestrator.rollback_target import _service_pre_image as _service_pre_image
from deployer.orchestrator.rollback_target import norm_traffic as norm_traffic
from deployer.orchestrator.rollback_target import rollback_traffic as rollback_traffic
from deployer.orchestrator.run_options import LockedRunOptions
from deployer.plan import (
    ARMOR_RULE,
    BACKEND_SERVICE,
    RUN_SERVICE,
    Action,
)
from deployer.state import StateStore, open_store

JSON = dict[str, Any]
T = TypeVar("T")

SUPERSEDED = "superseded"  # the decision written into a displaced deploy's journal
CONFLICT_RETRIES = 3  # a foreign write between our read and our write: read again, at most this often
OP_WAIT_S = 600.0  # one operations.wait call answers when the operation is done or after this

_log = structlog.get_logger("deployer.rollback")


# ---- the command ---------------------------------------------------------------------------------------


@dataclass
class RollbackOptions(LockedRunOptions):
    reason: str
    to_revision: str | None = None
    infra: bool = False
    verify: bool = False
    pin_for: timedelta = DEFAULT_PIN_TTL


@dataclass
class RollbackResult:
    service: str
    status: str  # succeeded | failed | rollback_incomplete
    exit_code: int
    rollback_id: str | None = None
    revision: str | None = None
    source: str | None = None
    why: str | None = None
    traffic_before: list[JSON] = field(default_factory=list)
    traffic_after: list[JSON] = field(default_factory=list)
    preempted: str | None = None
    superseded: list[str] = field(default_factory=list)
    pin: Pin | None = None
    restored: list[JSON] = field(default_factory=list)
    remaining: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)
    verdict: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    journal: str | None = None  # its key in the state store
    journal_location: str | None = None  # where it is: gs://bucket/prefix/<key> or the file (StateStore.where)
    resume: str | None = None  # ``deployer resume -c CONFIG`` when it ended incomplete: it tries again

    def finished_incomplete(self, config: DeployConfig) -> None:
        self.status, self.exit_code = "rollback_incomplete", 3
        self.resume = f"deployer resume -c {config.source.file}"

    def to_json(self) -> JSON:
        return {
            "service": self.service,
            "operation": "rollback",
            "status": self.status,
            "exit_code": self.exit_code,
            "rollback_id": self.rollback_id,
            "to_revision": self.revision,
            "source": self.source,
            "why": self.why,
            "traffic_before": self.traffic_before,
            "traffic_after": self.traffic_after,
            "preempted": self.preempted,
            "superseded": self.superseded,
            "pin": self.pin.model_dump(mode="json") if self.pin else None,
            "restored": self.restored,
            "remaining": self.remaining,
            "hints": self.hints,
            "resume": self.resume,
            "verify": self.verdict,
            "timings": self.timings,
            "journal": self.journal,
            "journal_location": self.journal_location,
        }


class RollbackFailed(Exception):
    """A step failed for good; ``changed``: something may have been changed by this rollback."""

    def __init__(self, why: str, *, changed: bool, hint: str | None = None) -> None:
        super().__init__(why)
        self.why = why
        self.changed = changed
        self.hint = hint


def rollback(config: DeployConfig, options: RollbackOptions) -> RollbackResult:
    """``deployer rollback`` (sync). Refusals before anything changed raise ``DeployerError``."""
    return EmergencyRollback(config, options).run()


class EmergencyRollback:
    def __init__(self, config: DeployConfig, options: RollbackOptions) -> None:
        self.config = config
        self.options = options
        self.clients = Clients(endpoint=config.endpoint, project=config.project)
        # plain REST, not run_v2: its import alone is ~0.3 s of an emergency's budget (run_rest.py)
        self.run_api = RunRest(config.endpoint, policy=options.policy, read_policy=options.read_policy)
        self._compute: Any = None
        self.key = service_key(config)
        self.name = config.service_path
        self.timings: dict[str, float] = {}
        self._t0 = time.monotonic()
        self.log: Any = _log.bind(service=self.key)

    @property
    def compute(self) -> Any:
        if self._compute is None:  # google.cloud.compute_v1 (over 1 s) only when infra is touched
            from deployer.gcp.compute import Compute

            self._compute = Compute(
                self.clients, self.config.project, policy=self.options.policy, read_policy=self.options.read_policy
            )
        return self._compute

    def _mark(self, name: str) -> None:
        self.timings[name] = round(time.monotonic() - self._t0, 3)

    # ---- the whole rollback -------------------------------------------------------------------------
    def run(self) -> RollbackResult:
        options = self.options
        owner = options.owner or Owner.current()
        rid = new_deploy_id(options.clock())
        self.log = self.log.bind(deploy_id=rid)
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="rollback") as pool:
            read: Future[JSON | None] = pool.submit(self.run_api.get_service, self.name)
            revision_read: Future[JSON | None] | None = None
            if options.to_revision:
                revision_read = pool.submit(self.run_api.get_revision, f"{self.name}/revisions/{options.to_revision}")
            store = open_store(self.config.state, self.clients, base=options.state_base)
            lock = ServiceLock(store, self.key, clock=options.clock, ttl=options.lock_ttl)
            displaced = self._refuse_live_operator(lock)
            lease = lock.acquire(rid, owner, purpose="rollback", preempt=True)
            self._mark("locked")
            try:
                return self._locked(store, lease, rid, owner, read, revision_read, displaced)
            finally:
                with contextlib.suppress(DeployerError):
                    lease.release()

    def _refuse_live_operator(self, lock: ServiceLock) -> LockInfo | None:
        """Preempt deploys only: a live rollback, resume or unpin keeps the lock (exit 4)."""
        current = lock.read()
        if current is None:
            return None
        now = self.options.clock()
        alive = not current.expired(now) and holder_alive(current) is not False
        if current.purpose != "deploy" and alive:
            raise LockHeldError(
                f"{self.key} is locked by {current.describe(now)}; an emergency rollback preempts deploys only",
                hint="let it finish (it is putting the service back already), then look at `deployer status`",
                holder=current.model_dump(mode="json"),
            )
        return current

    def _locked(
        self,
        store: StateStore,
        lease: Any,
        rid: str,
        owner: Owner,
        read: Future[JSON | None],
        revision_read: Future[JSON | None] | None,
        displaced: LockInfo | None,
    ) -> RollbackResult:
        options = self.options
        journals = self._journals(store)
        try:
            journal = Journal.begin(
                store,
                service=self.key,
                deploy_id=rid,
                config_digest="",
                owner=owner,
                operation="rollback",
                reason=options.reason,
                clock=options.clock,
            )
            self._mark("journal")
            return self._journaled(store, journal, journals, read, revision_read, displaced, owner)
        except KeyboardInterrupt as exc:
            told = self._interrupted(store, rid, exc)
            if told is exc:
                raise
            raise told from exc

    def _journaled(
        self,
        store: StateStore,
        journal: Journal,
        journals: list[JournalState],
        read: Future[JSON | None],
        revision_read: Future[JSON | None] | None,
        displaced: LockInfo | None,
        owner: Owner,
    ) -> RollbackResult:
        """From the journal begun to finished: read, choose the target, decide, carry it out."""
        options = self.options
        rid = journal.deploy_id
        live = self._unless_failed(journal, read.result)
        self._mark("read")
        if live is None:
            journal.finish("failed", "the service does not exist", why="not found")
            raise DeployerError(f"{self.name} does not exist: there is nothing to roll back")
        before = [s.to_json() for s in traffic.effective(live)]
        revisions = None
        target = choose_target(live, journals, to_revision=options.to_revision)
        if target.revision is None and target.source == "previous revision":
            revisions = self._unless_failed(journal, self._revisions)
            target = choose_target(live, journals, to_revision=options.to_revision, revisions=revisions)
        preempted = displaced.deploy_id if displaced is not None and displaced.purpose == "deploy" else None
        result = RollbackResult(
            service=self.key,
            status="failed",
            exit_code=1,
            rollback_id=rid,
            revision=target.revision,
            source=target.source,
            traffic_before=before,
            preempted=preempted,
            journal=journal.key,
            journal_location=journal.where,
        )
        if target.revision is None:
            journal.finish("failed", "no revision to roll back to", why=target.why)
            raise DeployerError(
                f"{self.config.service.name}: no revision to roll back to ({target.why})",
                hint="name one with --to REVISION (`gcloud run revisions list --service ...`)",
            )
        journal.decision(
            ROLLBACK,
            options.reason,
            to_revision=target.revision,
            source=target.source,
            why=target.why,
            from_deploy=target.journal_id,
            infra=options.infra,
            verify=options.verify,
            preempted=preempted,
            traffic_before=before,
            pin_for_s=options.pin_for.total_seconds(),
        )
        self.log.warning(
            "rollback.started",
            to_revision=target.revision,
            source=target.source,
            preempted=preempted,
            infra=options.infra,
            reason=options.reason,
        )
        return self.carry_out(
            store,
            journal,
            live,
            target,
            journals,
            result,
            displaced=displaced,
            owner=owner,
            pinned_at=options.clock(),
            revision_read=revision_read,
        )

    def _interrupted(self, store: StateStore, rid: str, exc: KeyboardInterrupt) -> KeyboardInterrupt:
        """Ctrl-C / SIGTERM while the journal was begun or after: what to tell (``exc`` itself: nothing is left
        for resume). Whether it acted is read from the stored journal (the interrupt may have landed between a
        write and the writer's own bookkeeping)."""
        try:
            state = load(store, self.key, rid)
        except DeployerError:  # never written (interrupted before), or unreadable: nothing this can add
            return exc
        if state.is_finished:
            return exc
        if not any(e.started for e in state.effects.values()):
            try:  # nothing was sent: close the journal, so nothing is left for resume
                Journal.open(store, self.key, rid, clock=self.options.clock).finish(
                    "failed", "nothing was changed", why="interrupted before it acted"
                )
                return exc
            except DeployerError as failed:
                self.log.warning("rollback.close_failed", deploy=rid, error=str(failed))
        self.log.error("rollback.interrupted", deploy=rid)
        return Interrupted(
            f"rollback {rid} had begun changing {self.config.service.name} and is left unfinished",
            hint=f"run `deployer resume -c {self.config.source.file}` to finish it (its journal says how far it got)",
        )

    @staticmethod
    def _unless_failed(journal: Journal, read: Callable[[], T]) -> T:
        """A read before the rollback acts; if it fails (the cloud unreachable, a 403, Ctrl-C), the journal is
        finished as failed with nothing changed, so the next deploy is not told this rollback "died"."""
        try:
            return read()
        except (DeployerError, KeyboardInterrupt) as exc:
            why = exc.message if isinstance(exc, DeployerError) else "interrupted"
            with contextlib.suppress(DeployerError):
                journal.finish("failed", "nothing was changed", why=why)
            raise

    def carry_out(
        self,
        store: StateStore,
        journal: Journal,
        live: JSON,
        target: Target,
        journals: Sequence[JournalState],
        result: RollbackResult,
        *,
        displaced: LockInfo | None,
        owner: Owner,
        pinned_at: datetime,
        revision_read: Future[JSON | None] | None = None,
    ) -> RollbackResult:
        """Everything after the ``rollback`` decision: infra (--infra), the traffic move, the pin, the
        displaced journals, --verify, finished. ``deployer resume`` calls it again for a rollback whose
        process died: every step first looks whether it is done already."""
        options = self.options
        assert target.revision is not None
        rid = journal.deploy_id
        undo_from = next((s for s in journals if s.deploy_id == target.journal_id), None)
        if journal.state.reopened:
            foreign = changed_since_first_attempt(journal.state, live)
            if foreign is not None:
                return self._left_alone(journal, result, live, foreign)
        infra = self._infra_targets(undo_from) if options.infra else []
        try:
            if infra:
                result.restored = self._restore_infra(journal, infra)
            template = self._template(target, live, revision_read)
            after = self._move_traffic(journal, live, target, template, rid)
        except RollbackFailed as failed:
            return self._undo_own(journal, result, failed)
        except DeployerError as exc:
            changed = bool(what_to_undo(journal.state))
            return self._undo_own(journal, result, RollbackFailed(exc.message, changed=changed, hint=exc.hint))
        result.traffic_after = [s.to_json() for s in traffic.effective(after)]
        result.why = target.why
        pin: Pin | None
        if journal.state.reopened and any(d.decision == "pin" for d in journal.state.decisions):
            # a retry whose first attempt pinned: its pin stays as it is, and one that is gone (unpinned, or
            # replaced) is not written again: only an operator's ``deployer rollback`` pins anew
            found = read_pin(store, self.key)
            pin = found if found is not None and found.rollback_id == rid else None
        else:
            pin = write_pin(
                store,
                new_pin(
                    self.key,
                    revision=target.revision,
                    reason=options.reason,
                    owner=owner,
                    now=pinned_at,
                    ttl=options.pin_for,
                    rollback_id=rid,
                ),
            )
            journal.decision("pin", options.reason, revision=target.revision, expires_at=pin.expires_at.isoformat())
        result.pin = pin
        self._mark("pinned")
        remaining = self._remaining_infra(undo_from) if not options.infra else []
        result.remaining = remaining
        result.superseded = self._close_displaced(store, journals, displaced, rid, target, remaining)
        status: FinalStatus = "succeeded"
        if options.verify:
            result.verdict = self._verify(journal, after)
            if result.verdict != "Passed":
                status = "rollback_incomplete"
        owned = self._owned_after(journals, undo_from if options.infra else None)
        journal.finish(
            status,
            f"traffic moved to {target.revision}" + (" (verify did not pass)" if status != "succeeded" else ""),
            remaining=remaining,
            to_revision=target.revision,
            source=target.source,
            traffic_after=result.traffic_after,
            owned_armor_priorities=owned,
            pinned_until=pin.expires_at.isoformat() if pin is not None else None,
            why=target.why,
        )
        result.status = status
        result.exit_code = 0
        if status != "succeeded":
            result.finished_incomplete(self.config)
        self._mark("finished")
        result.timings = self.timings
        self.log.info("rollback.finished", status=status, to_revision=target.revision, timings=self.timings)
        return result

    # ---- reading the journals ----------------------------------------------------------------------------
    def _journals(self, store: StateStore) -> list[JournalState]:
        """Newest first, as far back as ``choose_target`` needs (usually one read)."""
        from deployer.orchestrator.resume import newest_first

        out: list[JournalState] = []
        for state in newest_first(store, self.key):
            out.append(state)
            if state.started.operation not in ADMIN_OPERATIONS and state.status not in ("failed", "rolled_back"):
                break
        return out

    def _revisions(self) -> list[JSON]:
        return self.run_api.list_revisions(self.name)

    # ---- the traffic move ----------------------------------------------------------------------------------
    def _template(self, target: Target, live: JSON, revision_read: Future[JSON | None] | None) -> JSON:
        if target.pre_image is not None:
            pre = target.pre_image
            template = dict(pre.get("template") or {})
            created = traffic.short(pre.get("latestCreatedRevision")) or template.get("revision")
            if created:
                template["revision"] = created
            if target.masked_paths:
                from deployer.orchestrator.rollback import fill_masked

                revision = self.run_api.get_revision(f"{self.name}/revisions/{created}")
                template = fill_masked({"template": template}, target.masked_paths, revision)["template"]
            return template
        assert target.revision is not None
        revision = revision_read.result() if revision_read is not None else None
        if revision is None:
            revision = self.run_api.get_revision(f"{self.name}/revisions/{target.revision}")
        if revision is None:
            raise DeployerError(
                f"revision {target.revision} of {self.config.service.name} does not exist",
                hint="`gcloud run revisions list --service ...` lists them",
            )
        return template_from_revision(revision)

    def _move_traffic(self, journal: Journal, live: JSON, target: Target, template: JSON, rid: str) -> JSON:
        """One UpdateService (etag), waited for; a foreign write in between: read again and retry."""
        current = live
        for attempt in range(1, CONFLICT_RETRIES + 2):
            body, new_traffic = rollback_body(current, target, template=template, rollback_id=rid)
            want = want_of(new_traffic)
            if already_moved(current, new_traffic, template, rid):  # resumed after it landed
                self._mark("traffic_moved")
                return current
            etag = str(current.get("etag") or "")
            try:
                with journal.effect(
                    kind=RUN_SERVICE,
                    resource_id=self.name,
                    before=current,
                    precondition=etag,
                    action=Action.UPDATE,
                    method="run.services.patch",
                    intended={
                        "template.revision": template.get("revision"),
                        "traffic": new_traffic,
                        "annotations": {k: v for k, v in body["annotations"].items() if k.startswith("deployer.dev/")},
                    },
                ) as handle:
                    op = self.run_api.update_service({**body, "name": self.name}, etag=etag)
                    meta = self.run_api.metadata(op) or {}
                    handle.done({"etag": meta.get("etag"), "step": "rollback"}, precondition=meta.get("etag"))
                self._mark("update_sent")
            except ConflictError as exc:
                fresh = self.run_api.get_service(self.name)
                if fresh is None:
                    raise RollbackFailed("the service disappeared", changed=False) from exc
                if fresh.get("etag") == etag:  # not a write in between (e.g. a revision name clash): final
                    raise RollbackFailed(f"the traffic update was refused: {exc}", changed=False) from exc
                if attempt > CONFLICT_RETRIES:
                    raise RollbackFailed(f"the service kept changing under the rollback: {exc}", changed=False) from exc
                self.log.warning("rollback.conflict", attempt=attempt, error=str(exc))
                current = fresh
                continue
            except CloudError as exc:
                if exc.outcome_unknown:
                    landed = self._landed(want)
                    if landed is not None:
                        return landed
                raise RollbackFailed(f"the traffic update failed: {exc}", changed=exc.outcome_unknown) from exc
            try:
                after = self.run_api.wait(op)
            except CloudError as exc:
                landed = self._landed(want)
                if landed is not None:
                    return landed
                raise RollbackFailed(f"the traffic update did not complete: {exc}", changed=True) from exc
            self._mark("traffic_moved")
            got = traffic.effective(after)
            if not traffic.same_effective(got, want):
                landed = self._landed(want)
                if landed is not None:
                    return landed
                raise RollbackFailed(
                    f"traffic reads back {_show(got)}, not {_show(want)}",
                    changed=True,
                )
            self.log.warning(
                "rollback.traffic_moved",
                to_revision=target.revision,
                traffic=_show(got),
                at=time.time(),
                seconds=self.timings.get("traffic_moved"),
            )
            return after
        raise AssertionError("unreachable")  # pragma: no cover

    def _landed(self, want: Sequence[traffic.Served], settle_s: float = 30.0) -> JSON | None:
        """After an unknown outcome: the service (once it is no longer reconciling) when its traffic is
        already what we wanted, else ``None``."""
        deadline = time.monotonic() + settle_s
        while True:
            fresh = self.run_api.get_service(self.name)
            if fresh is None:
                return None
            if not fresh.get("reconciling") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if not fresh.get("reconciling") and traffic.same_effective(traffic.effective(fresh), want):
            self._mark("traffic_moved")
            return fresh
        return None

    # ---- infrastructure ------------------------------------------------------------------------------------
    @staticmethod
    def _infra_targets(state: JournalState | None) -> list[RestoreTarget]:
        if state is None:
            return []
        return [t for t in restore_targets(state) if t.kind in (BACKEND_SERVICE, ARMOR_RULE)]

    def _restore_infra(self, journal: Journal, targets: list[RestoreTarget]) -> list[JSON]:
        """The backend service ∥ the chain of rule writes (one policy: one at a time), each journaled in
        this rollback's journal with its own pre-image (so it can be undone)."""
        backend = [t for t in targets if t.kind == BACKEND_SERVICE]
        rules = sorted((t for t in targets if t.kind == ARMOR_RULE), key=lambda t: t.resource_id)
        done: list[JSON] = []
        errors: list[BaseException] = []

        def chain(items: list[RestoreTarget]) -> None:
            for t in items:
                if errors:
                    return
                try:
                    done.append(self._restore_one(journal, t))
                except BaseException as exc:
                    errors.append(exc)
                    return

        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="rollback-infra") as pool:
            futures = [pool.submit(chain, backend), pool.submit(chain, rules)]
            for f in futures:
                f.result()
        self._mark("infra")
        if errors:
            first = errors[0]
            raise RollbackFailed(f"restoring the infrastructure failed: {first}", changed=True) from first
        return done

    def _restore_one(self, journal: Journal, target: RestoreTarget) -> JSON:
        from deployer.gcp.compute import new_request_id
        from deployer.orchestrator.rollback import _BS_ID, _RULE_ID, backend_restore_write, rule_restore_write

        pre = target.pre_image
        for attempt in range(1, CONFLICT_RETRIES + 2):
            if target.kind == BACKEND_SERVICE:
                m = _BS_ID.match(target.resource_id)
                if m is None or pre is None:
                    raise DeployerError(f"cannot restore {target.resource_id}")
                name = m.group("name")
                current = self.compute.get_backend_service(name)
                if current is None:
                    raise DeployerError(f"the backend service {name} no longer exists")
                write = backend_restore_write(current, pre)
                if write is None:
                    return {"kind": target.kind, "resource": target.resource_id, "stage": "skipped"}
                verb, body = write
                fingerprint = str(current.get("fingerprint") or "")
                request_id = new_request_id()
                try:
                    with journal.effect(
                        kind=BACKEND_SERVICE,
                        resource_id=target.resource_id,
                        before=current,
                        precondition=fingerprint,
                        action=Action.UPDATE,
                        method=f"compute.backendServices.{verb}",
                        intended=body,
                        request_id=request_id,
                    ) as handle:
                        self.compute.wait(
                            self.compute.write_backend_service(
                                verb, name, body, fingerprint=fingerprint, request_id=request_id
                            )
                        )
                        after = self.compute.get_backend_service(name)
                        handle.done(after, precondition=(after or {}).get("fingerprint"))
                except ConflictError:
                    if attempt > CONFLICT_RETRIES:
                        raise
                    continue  # a foreign write moved the fingerprint: read it again
                return {"kind": target.kind, "resource": target.resource_id, "stage": "done", "detail": verb}
            m = _RULE_ID.match(target.resource_id)
            if m is None:
                raise DeployerError(f"not a Cloud Armor rule id: {target.resource_id}")
            policy, priority = m.group("policy"), int(m.group("priority"))
            current = self.compute.get_rule(policy, priority)
            rule_write = rule_restore_write(current, pre)
            if rule_write is None:
                return {"kind": target.kind, "resource": target.resource_id, "stage": "skipped"}
            verb, rule_body, clear = rule_write
            action = {"add": Action.CREATE, "remove": Action.DELETE, "patch": Action.UPDATE}[verb]
            method = {"add": "addRule", "patch": "patchRule", "remove": "removeRule"}[verb]
            with journal.effect(
                kind=ARMOR_RULE,
                resource_id=target.resource_id,
                before=current,
                precondition=None,
                action=action,
                method=f"compute.securityPolicies.{method}",
                intended=rule_body,
            ) as handle:
                if verb == "add":
                    assert rule_body is not None
                    op = self.compute.add_rule(policy, rule_body)
                elif verb == "patch":
                    assert rule_body is not None
                    op = self.compute.patch_rule(policy, priority, rule_body, clear=clear)
                else:
                    op = self.compute.remove_rule(policy, priority)
                self.compute.wait(op)
                handle.done(rule_body)
            return {"kind": target.kind, "resource": target.resource_id, "stage": "done", "detail": verb}
        raise AssertionError("unreachable")  # pragma: no cover

    def _remaining_infra(self, state: JournalState | None) -> list[str]:
        if state is None:
            return []
        return [
            f"{t.kind} {t.resource_id}: left as deploy {state.deploy_id} made it (rollback without --infra)"
            for t in self._infra_targets(state)
        ]

    @staticmethod
    def _owned_after(journals: Sequence[JournalState], undone: JournalState | None) -> list[int]:
        """The Cloud Armor priorities owned after this rollback: those of the newest finished deploy or
        rollback, skipping the one whose infrastructure was just restored."""
        for state in journals:
            if state.started.operation in ADMIN_OPERATIONS or state.finished is None:
                continue
            if undone is not None and state.deploy_id == undone.deploy_id and state.status == "succeeded":
                continue  # its rules were just put back: what the one before it owned counts
            owned = state.finished.detail.get("owned_armor_priorities")
            if isinstance(owned, list):
                return [int(p) for p in owned]
        return []

    def _left_alone(self, journal: Journal, result: RollbackResult, live: JSON, changed: str) -> RollbackResult:
        """A retry that finds the service changed since its first attempt: nothing is written (a hand-made fix,
        hours later, is not moved back); finished ``aborted``, reported as changed by someone else."""
        line = f"{RUN_SERVICE} {self.name}: {changed}"
        self.log.error("rollback.left_alone", why=changed)
        result.why = changed
        result.traffic_after = [s.to_json() for s in traffic.effective(live)]
        result.restored = [
            {
                "kind": RUN_SERVICE,
                "resource": self.name,
                "stage": "failed",
                "detail": changed,
                "changed_by_someone_else": True,
            }
        ]
        result.remaining = [line]
        result.hints = [
            "look at the service as it is now (`deployer status`); run `deployer rollback` if it still must move"
        ]
        journal.finish(
            "aborted",
            "resume left the service alone: someone else changed it since the first attempt",
            remaining=[line],
            traffic_after=result.traffic_after,
            why=changed,
        )
        result.status, result.exit_code = "aborted", 3
        return result

    # ---- failure: put back what this rollback changed --------------------------------------------------------
    def _undo_own(self, journal: Journal, result: RollbackResult, failed: RollbackFailed) -> RollbackResult:
        from deployer.orchestrator.rollback import Restorer

        self.log.error("rollback.failed", why=failed.why)
        result.why = failed.why
        if journal.state.reopened:
            return self._undo_retry(journal, result, failed)
        if not what_to_undo(journal.state):
            journal.finish("failed", "nothing was changed", why=failed.why)
            result.status, result.exit_code = "failed", 1
            result.traffic_after = list(result.traffic_before)  # nothing moved
            if failed.hint:
                result.hints.append(failed.hint)
            return result
        journal.decision(ROLLBACK, f"undo this rollback's own changes: {failed.why}")
        from deployer.gcp.cloudrun import CloudRun  # the failure path: run_v2's import cost does not matter

        run = CloudRun(self.clients, policy=self.options.policy, read_policy=self.options.read_policy)
        report = Restorer(run, self.compute, journal).restore_all()
        result.restored = [i.to_json() for i in report.items]
        result.remaining = report.remaining
        result.hints = report.hints
        if report.ok:
            journal.finish("failed", "failed; its own changes were put back", why=failed.why)
            result.status, result.exit_code = "failed", 1
        else:
            journal.finish("rollback_incomplete", "failed, and could not put back", remaining=report.remaining)
            result.finished_incomplete(self.config)
        self.log.error("rollback.finished", status=result.status, remaining=result.remaining)
        return result

    def _undo_retry(self, journal: Journal, result: RollbackResult, failed: RollbackFailed) -> RollbackResult:
        """A retry (reopened journal) that failed: only what THIS attempt changed is put back — the first
        attempt's changes (a traffic move that landed) stay — and it ends ``rollback_incomplete`` again, with
        what the first attempt left."""
        from deployer.orchestrator.rollback import Restorer

        own = this_attempt(journal.state)
        earlier = journal.state.earlier[-1].remaining if journal.state.earlier else ()
        remaining = list(earlier)
        if what_to_undo(own):
            journal.decision(ROLLBACK, f"undo this retry's own changes: {failed.why}")
            from deployer.gcp.cloudrun import CloudRun

            run = CloudRun(self.clients, policy=self.options.policy, read_policy=self.options.read_policy)
            report = Restorer(run, self.compute, journal).restore_all(this_attempt(journal.state))
            result.restored = [i.to_json() for i in report.items]
            result.hints = report.hints
            remaining = [*report.remaining, *remaining]
        journal.finish("rollback_incomplete", f"the retry failed: {failed.why}", remaining=remaining, why=failed.why)
        result.remaining = remaining
        if failed.hint:
            result.hints.append(failed.hint)
        result.finished_incomplete(self.config)
        self.log.error("rollback.finished", status=result.status, remaining=result.remaining)
        return result

    # ---- the displaced deploy ----------------------------------------------------------------------------------
    def _close_displaced(
        self,
        store: StateStore,
        journals: Sequence[JournalState],
        displaced: LockInfo | None,
        rid: str,
        target: Target,
        remaining: list[str],
    ) -> list[str]:
        """Close the journals of deploys that cannot close their own any more: unfinished, and their
        holder dead (or gone without a lease). A live displaced deploy closes its own ``aborted``."""
        closed: list[str] = []
        live_holder = None
        if (
            displaced is not None
            and holder_alive(displaced) is not False
            and not displaced.expired(self.options.clock())
        ):
            live_holder = displaced.deploy_id
        for state in journals:
            if state.is_finished or state.deploy_id == live_holder or state.started.operation in ADMIN_OPERATIONS:
                continue
            for _ in range(3):
                try:
                    j = Journal.open(store, self.key, state.deploy_id, clock=self.options.clock)
                    if j.state.is_finished:
                        break
                    j.decision(
                        SUPERSEDED,
                        f"emergency rollback {rid} moved traffic to {target.revision}",
                        rollback_id=rid,
                    )
                    j.finish(
                        "aborted",
                        f"superseded by rollback {rid}",
                        remaining=[r for r in remaining if state.deploy_id in r],
                        why=f"superseded by emergency rollback {rid}",
                        superseded_by=rid,
                    )
                    closed.append(state.deploy_id)
                    break
                except StaleStateError:
                    continue
                except DeployerError as exc:
                    self.log.warning("rollback.close_failed", deploy=state.deploy_id, error=str(exc))
                    break
        return closed

    # ---- --verify ------------------------------------------------------------------------------------------
    def _verify(self, journal: Journal, service: JSON) -> str:
        import asyncio

        from deployer.gate import run_gate
        from deployer.orchestrator import gates

        spec = gates.public_spec(self.config.gate.public, service)
        verdict = asyncio.run(run_gate(spec, env=self.options.gate_env))
        journal.gate("restored", verdict.outcome.value, verdict.to_json())
        self._mark("verified")
        return str(verdict.outcome.value)


def changed_since_first_attempt(state: JournalState, live: JSON) -> str | None:
    """For a reopened rollback: why the service is no longer as its first attempt left it (someone else wrote
    it since), or ``None`` when the retry may act on it. As it was left: the etag its last update on the
    service left (``effect_done``), or the one that update's undo left (``rollback_step``), or the one read
    before an update that did not land; or the service reads as that update intended (or, undone, as its
    pre-image). No update on the service in the first attempt: its traffic is still what the rollback read
    (the ``rollback`` decision's ``traffic_before``)."""
    from deployer.orchestrator.resume import service_landed

    etag = live.get("etag")
    moves = [e for e in before_reopening(state) if e.kind == RUN_SERVICE]
    if not moves:
        intent = next(
            (d for d in reversed(state.decisions) if d.decision == ROLLBACK and d.detail.get("to_revision")), None
        )
        before = (intent.detail.get("traffic_before") if intent is not None else None) or []
        wanted = [traffic.Served(str(s["revision"]), int(s["percent"]), str(s.get("tag") or "")) for s in before]
        if not before or traffic.same_effective(traffic.effective(live), wanted):
            return None
        return f"changed by someone else since the first attempt (traffic now {_show(traffic.effective(live))})"
    last = moves[-1]
    if last.undo in ("done", "skipped"):
        ok = etag is not None and etag in (last.undo_precondition, last.pre_precondition)
        ok = ok or (
            last.pre_image is not None
            and traffic.same_effective(traffic.effective(live), traffic.effective(last.pre_image))
        )
        expected = last.undo_precondition or last.pre_precondition
    elif last.outcome == "not_applied":
        ok = etag is not None and etag == last.pre_precondition
        expected = last.pre_precondition
    else:
        ok = (etag is not None and etag == last.post_precondition) or service_landed(last, live)
        expected = last.post_precondition
    if ok:
        return None
    return f"changed by someone else since the first attempt (etag {expected} → {etag}); deployer did not overwrite it"


def _show(served: Sequence[traffic.Served]) -> str:
    return ", ".join(f"{s.revision} {s.percent}%" + (f" tag {s.tag}" if s.tag else "") for s in served) or "nothing"
