"""``deployer deploy``: the phased deploy with automatic rollback, wired.

    lock → observe → preflight → drift check → plan (or a saved plan, refused if stale)
         → journal started → steps (``phases.next_step``) → journal finished → lock released

Each step's effects are journaled BEFORE and AFTER they act (``Journal.effect``: pre-image, then the
call, then its result). The steps (see ``phases``):

- **apply**: IN PARALLEL the infra — the backend-service patch (fingerprint + requestId) beside the
  chain of Cloud Armor ``addRule`` / ``patchRule`` / ``removeRule`` calls (one policy: one at a time,
  gcp-facts §5.1 [Inference] "Serialize mutations per resource") — and the candidate revision: one
  UpdateService with the config's template named ``{service}-{suffix of the deploy id}`` (≤ 63
  characters, §4.5), the live traffic kept with LATEST pinned and a 0 % target tagged ``candidate``
  (gcloud's ``--no-traffic --tag`` recipe, §4.4), guarded by the etag; then the wait until the
  revision is Ready (a failed revision ends the operation in an error, §4.1).
- **gate_candidate**: the WebSocket gate through the candidate's tag URL (``traffic_statuses[].uri``).
- **shift p / bake p / gate_public p**: the new revision at p %, the previous serving revisions scaled to
  100 − p; bake (the injected ``sleep``); the gate on the public path. The last shift (100) is the
  finalize update: candidate tag removed, the previous revision tagged ``previous`` (the rollback
  target), and the deploy id and last-good revision recorded as ``deployer.dev/`` annotations.
- on any failure, ``rollback`` (``rollback.Restorer``) from the journal, then ``verify`` (the gate on
  the restored public path).

SDK calls are blocking (there is no async REST client, clientlibs.md §0 item 9): they run in
``asyncio.to_thread``; waiting (operations, bake, gates) is asyncio, so an abort (Ctrl-C, SIGTERM, a
failed sibling) is noticed between polls. A mutation in flight is never abandoned halfway.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import structlog

from deployer.config import DeployConfig
from deployer.desired import desired_state
from deployer.errors import (
    CloudError,
    ConflictError,
    DeployerError,
    DriftError,
    GateError,
    JournalUnwritableError,
    LockHeldError,
    LockLostError,
    PinnedError,
    PreflightError,
    StaleStateError,
    StateError,
    UsageError,
)
from deployer.gate import GateSpec, Outcome, Verdict, run_gate
from deployer.gcp import retry
from deployer.gcp.clients import Clients
from deployer.gcp.compute import new_request_id
from deployer.gcp.operations import POLL, PollSchedule
from deployer.model import DesiredState, Observed
from deployer.orchestrator import gates, traffic
from deployer.orchestrator.cloud_apis import cloud_apis
from deployer.orchestrator.freeze import OVERRIDE_FREEZE, ActiveFreeze, FreezeOverride, check_freeze, frozen_message
from deployer.orchestrator.journal import (
    ADMIN_OPERATIONS,
    Journal,
    JournalState,
    list_deploys,
    load,
    new_deploy_id,
    newest_first_or_error,
    what_to_undo,
)
from deployer.orchestrator.lock import HEARTBEAT_EVERY, LOCK_TTL, HolderJournal, LockInfo, ServiceLock, holder_alive
from deployer.orchestrator.owner import Owner
from deployer.orchestrator.phases import INTERRUPTED, Result, Shape, Status, Step, StepKind, next_step
from deployer.orchestrator.report import DeployResult, NullReporter, Reporter
from deployer.orchestrator.rollback import Restorer, backend_restore_write, rule_restore_write
from deployer.plan import (
    ANNOTATION_DEPLOY_ID,
    ANNOTATION_LAST_GOOD,
    ANNOTATION_PREVIOUS,
    ARMOR_RULE,
    BACKEND_SERVICE,
    RUN_SERVICE,
    Action,
    Change,
    Plan,
    current_preconditions,
    diff_fields,
    make_plan,
)
from deployer.redact import SecretMask
from deployer.state import StateStore, open_store

T = TypeVar("T")
JSON = dict[str, Any]

REVISION_SUFFIX_MAX = 13  # a 49-character service id + "-" + 13 = 63 (gcp-facts §4.5)
PREVIOUS_TAG = "previous"
TAG_PLUS_SERVICE_MAX = 46  # gcp-facts §4.5 "Combined traffic tag and service name cannot exceed 46 characters."


def _utcnow() -> datetime:
    return datetime.now(UTC)


def revision_name(service_id: str, deploy_id: str) -> str:
    """``{service}-{MMDDHHMM}-{token}`` from ``d-YYYYMMDD-HHMMSS-token``: deterministic (a resumed deploy
    finds its revision again), ≤ 63 characters for any valid service id (< 50, gcp-facts §4.5)."""
    suffix = f"{deploy_id[6:10]}{deploy_id[11:15]}-{deploy_id[18:22]}"
    assert len(suffix) == REVISION_SUFFIX_MAX, suffix
    return f"{service_id}-{suffix}"


def state_key(config: DeployConfig) -> str:
    """The service's name in the state store (journals, lock): project/region/service."""
    return f"{config.project}/{config.region}/{config.service.name}"


def config_digest(desired: DesiredState) -> str:
    """``sha256:`` of the desired state with secret env values masked (the digest never depends on a
    secret, so nothing can be guessed back from it)."""
    doc = desired.to_json()
    doc["service"], _ = SecretMask().apply(RUN_SERVICE, doc["service"])
    canon = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canon.encode()).hexdigest()


class Aborted(Exception):
    """The deploy was told to stop (Ctrl-C, SIGTERM, a failed sibling step)."""


@dataclass
class DeployOptions:
    plan_file: str | None = None  # apply exactly this saved plan (refused if stale)
    plan: Plan | None = None  # or this plan, made and shown before (refused if stale)
    clock: Callable[[], datetime] = _utcnow
    sleep: Callable[[float], Coroutine[Any, Any, None]] = asyncio.sleep  # bake time (injected in tests)
    policy: retry.RetryPolicy = retry.DEFAULT_POLICY
    read_policy: retry.RetryPolicy = retry.READ_POLICY
    poll: PollSchedule = POLL
    reporter: Reporter = field(default_factory=NullReporter)
    owner: Owner | None = None
    lock_ttl: timedelta = LOCK_TTL
    heartbeat: timedelta = HEARTBEAT_EVERY
    handle_signals: bool = False
    state_base: Path | None = None  # a relative state path is relative to this (default: the cwd)
    gate_env: Mapping[str, str] | None = None
    previous_tag: str = PREVIOUS_TAG
    freeze_override: FreezeOverride | None = None  # deploy inside a freeze window anyway (journaled)
    unpin: bool = False  # clear an emergency rollback's pin first (journaled) instead of refusing (issue 7)
    unpin_reason: str | None = None


def deploy(config: DeployConfig, options: DeployOptions | None = None) -> DeployResult:
    """Run one deploy to its end (sync entry point); refusals raise ``DeployerError``."""
    return asyncio.run(Deployment(config, options or DeployOptions()).run())


@dataclass
class _Run:
    """What the running deploy knows beyond the journal."""

    deploy_id: str
    journal: Journal
    plan: Plan
    observed: Observed
    revision: str
    service: JSON | None  # the Cloud Run service as last known (op results)
    etag: str | None
    owned_before: list[int] = field(default_factory=list)  # Cloud Armor priorities the last deploy owned
    memory: dict[str, JSON | None] = field(default_factory=dict)  # effect id → unmasked pre-image
    previous: str | None = None
    gates: list[JSON] = field(default_factory=list)
    restored: list[JSON] = field(default_factory=list)
    pins: list[str] = field(default_factory=list)
    remaining: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)
    steps: list[JSON] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    writes: _JournalStore | None = None  # the journal's store: remembers a write that failed


class Deployment:
    def __init__(self, config: DeployConfig, options: DeployOptions) -> None:
        self.config = config
        self.options = options
        self.clients, self.run_api, self.compute = cloud_apis(
            config, policy=options.policy, read_policy=options.read_policy
        )
        self.key = state_key(config)
        self.desired = desired_state(config)
        self._abort_reason: str | None = None
        self._overridden: list[ActiveFreeze] = []
        self._saved_plan: Plan | None = None  # the `--plan FILE` plan, read before anything else
        self._abort_event: asyncio.Event | None = None
        self._journal_unwritable = False  # stopped because the journal could not be written
        self.log: Any = structlog.get_logger("deployer.deploy").bind(service=self.key)

    # ---- aborting --------------------------------------------------------------------------------
    def abort(self, reason: str) -> None:
        """Ask the deploy to stop and roll back (thread-safe; what Ctrl-C and SIGTERM call)."""
        if self._abort_reason is None:
            self._abort_reason = reason
        event, loop = self._abort_event, getattr(self, "_loop", None)
        if event is not None and loop is not None:
            loop.call_soon_threadsafe(event.set)

    async def _interruptible(self, coro: Coroutine[Any, Any, T], *extra: asyncio.Event) -> T:
        """Run ``coro`` unless an abort (or one of ``extra``) fires first: then cancel it and raise ``Aborted``."""
        assert self._abort_event is not None
        task: asyncio.Task[T] = asyncio.ensure_future(coro)
        waiters = [asyncio.ensure_future(e.wait()) for e in (self._abort_event, *extra)]
        try:
            done, _ = await asyncio.wait({task, *waiters}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise Aborted(self._abort_reason or "a parallel step failed")

    # ---- the whole deploy ------------------------------------------------------------------------
    async def run(self) -> DeployResult:
        self._loop = asyncio.get_running_loop()
        self._abort_event = asyncio.Event()
        if self._abort_reason is not None:
            self._abort_event.set()
        installed: list[signal.Signals] = []
        if self.options.handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    self._loop.add_signal_handler(sig, self.abort, f"{signal.Signals(sig).name} received")
                    installed.append(sig)
        try:
            return await self._run()
        finally:
            for sig in installed:
                self._loop.remove_signal_handler(sig)

    async def _run(self) -> DeployResult:
        options = self.options
        # A saved plan is read and checked first: a wrong `--plan FILE` is one line and exit 2, with no
        # lock taken, no journal written and no call made.
        self._saved_plan = self._read_saved_plan()
        # Freeze windows (issue 7): refused before anything is read or locked, unless overridden.
        self._overridden = check_freeze(self.config, options.clock(), override=options.freeze_override)
        store = open_store(self.config.state, self.clients, base=options.state_base)
        lock = ServiceLock(store, self.key, clock=options.clock, ttl=options.lock_ttl)
        owner = options.owner or Owner.current()
        deploy_id = new_deploy_id(options.clock())
        self.log = self.log.bind(deploy_id=deploy_id)
        structlog.contextvars.bind_contextvars(deploy_id=deploy_id, service=self.key)
        try:
            lease = await asyncio.to_thread(
                lock.acquire,
                deploy_id,
                owner,
                holder_journal=lambda info: _holder_journal(store, info),
                holder_dead=lambda info: holder_alive(info) is False,
            )
            self._lease = lease
            try:
                # Preempted (an emergency rollback took the lock): stop waiting at once, roll nothing back.
                with lease.keep_alive(options.heartbeat, on_lost=lambda: self.abort("this deploy lost its lock")):
                    await asyncio.to_thread(self._before_acting, store, deploy_id, owner)
                    return await self._locked(store, deploy_id, owner, lease)
            finally:
                # stopped because the state store refuses writes: releasing may fail too, and must not hide why
                # (a lease left behind names this process, gone by then: `resume` takes it over)
                quiet = (StateError,) if self._journal_unwritable else (LockLostError,)
                with contextlib.suppress(*quiet):
                    lease.release()
        finally:
            structlog.contextvars.unbind_contextvars("deploy_id", "service", "phase")

    def _before_acting(self, store: StateStore, deploy_id: str, owner: Owner) -> None:
        """Under the lock, before anything is read (issue 7): an operation whose process died must be
        resumed first; an emergency rollback's pin refuses the deploy unless ``--unpin`` (journaled)."""
        from deployer.orchestrator.pins import active_pin, clear_journaled

        check_resumed(store, self.key, self.config.source.file, this_deploy=deploy_id)
        pin = active_pin(store, self.key, self.options.clock())
        if pin is None:
            return
        if not self.options.unpin:
            raise PinnedError(
                f"{self.key} is {pin.describe(self.options.clock())}; deploying now would move traffic off it",
                hint="deploy with --unpin (journaled), or `deployer unpin -c CONFIG --reason ...` first",
                pin=pin.model_dump(mode="json"),
            )
        reason = self.options.unpin_reason or f"deploy {deploy_id} --unpin"
        cleared = clear_journaled(store, pin, reason=reason, owner=owner, clock=self.options.clock, by_deploy=deploy_id)
        self.log.warning("deploy.unpinned", revision=pin.revision, pinned_by=pin.owner.describe(), journal=cleared)
        self.options.reporter.note(f"unpinned {pin.revision} (pinned by {pin.owner.describe()}: {pin.reason})")

    def _confirm_lease(self) -> None:
        """Right before a mutating call: still ours? (``LockLostError`` when an emergency rollback took it)."""
        lease = getattr(self, "_lease", None)
        if lease is not None:
            lease.confirm()

    async def _locked(self, store: StateStore, deploy_id: str, owner: Owner, lease: Any) -> DeployResult:
        config, options = self.config, self.options
        t0 = time.monotonic()
        self._phase("observe")
        observed = await asyncio.to_thread(_observe, config, self.clients, options.read_policy)
        service = observed.service
        if service is not None and service.get("reconciling"):
            raise DriftError(
                f"{config.service.name} is still reconciling a change (generation {service.get('generation')}); "
                "deployer does not deploy over a rollout in progress",
                hint="wait for it to finish (gcloud run services describe shows it), then deploy again",
            )
        observe_s = time.monotonic() - t0

        self._phase("preflight")
        from deployer.preflight import Severity, run_rules

        findings = run_rules(config, observed)
        errors = [f for f in findings if f.severity is Severity.ERROR]
        if errors:
            listed = "; ".join(f"{f.code} {f.field}: {f.message}" for f in errors[:5])
            more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
            self.log.warning("deploy.refused", phase="preflight", errors=[f.code for f in errors])
            raise PreflightError(
                f"preflight found {len(errors)} error(s), nothing was changed: {listed}{more}",
                hint=f"`deployer check -c {config.source.file} --live` shows each rule and its fix",
            )

        self._phase("drift")
        last, owned_before = await asyncio.to_thread(last_deploy, store, self.key, service)
        refusal = drift_refusal(config, service, last)
        if refusal is not None:
            self.log.warning("deploy.refused", phase="drift", drift=refusal.found.describe())
            raise refusal.error()

        self._phase("plan")
        plan = self._plan(observed, owned_before)
        missing = [c for c in plan.changes if c.action is Action.CREATE and c.kind in (RUN_SERVICE, BACKEND_SERVICE)]
        if missing:
            raise DeployerError(
                f"{missing[0].kind} {missing[0].id} does not exist; deployer deploys to existing resources",
                hint="create the service (gcloud run deploy) and the load balancer first (§4.4: --no-traffic "
                "is not supported when creating a service)",
            )
        if plan.is_empty:
            self.log.info("deploy.no_changes", phase="plan", checked=len(plan.changes))
            return DeployResult(
                service=self.key,
                status="no_changes",
                exit_code=0,
                plan_summary=plan.summary(),
                traffic_before=[s.to_json() for s in traffic.effective(service or {})],
                traffic_after=[s.to_json() for s in traffic.effective(service or {})],
                timings={"observe": round(observe_s, 3)},
            )

        writes = _JournalStore(store)
        journal = Journal.begin(
            writes,
            service=self.key,
            deploy_id=deploy_id,
            config_digest=plan.config_digest,
            owner=owner,
            plan=plan,
            clock=options.clock,
            mask=SecretMask(),
            reason=options.freeze_override.reason if self._overridden and options.freeze_override else None,
        )
        if self._overridden and options.freeze_override is not None:
            journal.decision(
                OVERRIDE_FREEZE,
                options.freeze_override.reason,
                windows=[a.to_json() for a in self._overridden],
                by=owner.describe(),
            )
            self.log.warning("deploy.freeze_overridden", phase="plan", windows=frozen_message(self._overridden))
        run = _Run(
            deploy_id=deploy_id,
            journal=journal,
            plan=plan,
            observed=observed,
            revision=revision_name(config.service.name, deploy_id),
            service=copy.deepcopy(service),
            etag=(service or {}).get("etag"),
            owned_before=owned_before,
            writes=writes,
        )
        run.timings["observe"] = round(observe_s, 3)
        shape = self._shape(plan)
        self.log.info(
            "deploy.started",
            phase="plan",
            revision=run.revision if shape.candidate else None,
            changes=[f"{c.action.value} {c.kind} {c.id}" for c in plan.effective()],
        )
        n = plan.counts()
        self.options.reporter.note(
            f"deploy {deploy_id}: {n[Action.CREATE]} to create, {n[Action.UPDATE]} to update, "
            f"{n[Action.DELETE]} to delete, {n[Action.NOOP]} unchanged"
            + (f"; new revision {run.revision}" if shape.candidate else "")
        )
        return await self._steps(run, shape, lease)

    # ---- plan ------------------------------------------------------------------------------------
    def _plan(self, observed: Observed, owned_before: list[int]) -> Plan:
        now = self.options.clock()
        if self.options.plan is not None:
            return self._check_stale(self.options.plan, observed, "the plan shown")
        if self.options.plan_file is None:
            return make_plan(
                self.desired,
                observed,
                created_at=now,
                config_digest=config_digest(self.desired),
                owned_armor_priorities=owned_before,
            )
        path = Path(self.options.plan_file)
        plan = self._saved_plan or self._read_saved_plan()
        assert plan is not None
        if plan.config_digest != config_digest(self.desired):
            self.log.warning("deploy.plan_config_differs", phase="plan", plan=str(path))
            self.options.reporter.note("the config changed since this plan was made; applying the plan as saved")
        return self._check_stale(plan, observed, f"the saved plan {path}")

    def _read_saved_plan(self) -> Plan | None:
        """The ``--plan FILE`` plan, checked offline (``PlanFileError``, exit 2), or None without one."""
        if self.options.plan_file is None:
            return None
        path = self.options.plan_file
        plan = Plan.read_file(path)
        if plan.service != self.desired.service_name:
            raise UsageError(f"{path} is a plan for {plan.service}, not {self.desired.service_name}")
        return plan

    def _check_stale(self, plan: Plan, observed: Observed, what: str) -> Plan:
        """``plan`` if every etag / fingerprint it was made against still holds; else refuse."""
        moved = plan.moved(current_preconditions(plan, observed))
        if moved:
            listed = "; ".join(f"{m.key}: {m.planned} → {m.current}" for m in moved)
            self.log.warning("deploy.refused", phase="plan", stale=[m.key for m in moved])
            raise ConflictError(
                f"{what} is stale, nothing was changed: {listed}",
                hint="the resources changed since the plan was made; make a new plan and review it",
            )
        return plan

    def _shape(self, plan: Plan) -> Shape:
        run_change = _change(plan, RUN_SERVICE)
        candidate = run_change is not None and run_change.action is Action.UPDATE and _template_changed(run_change)
        service_level = run_change is not None and run_change.action is Action.UPDATE and not candidate
        infra = service_level or any(c.kind in (BACKEND_SERVICE, ARMOR_RULE) for c in plan.effective())
        rollout = self.config.rollout
        return Shape(infra=infra, candidate=candidate, steps=tuple(rollout.steps), bake_s=float(rollout.bake_seconds))

    # ---- the step loop ---------------------------------------------------------------------------
    def _phase(self, name: str) -> None:
        structlog.contextvars.bind_contextvars(phase=name)

    async def _steps(self, run: _Run, shape: Shape, lease: Any) -> DeployResult:
        results: list[Result] = []
        preempted: str | None = None
        while True:
            if not lease.lost.is_set() and preempted is None:
                # a state read: did a rollback take the lock? (a store that cannot answer now is not a lost
                # lease: the heartbeat and the check before the next write still decide)
                with contextlib.suppress(StateError):
                    await asyncio.to_thread(lease.confirm)
            if lease.lost.is_set():
                preempted = "this deploy lost its lock (an emergency rollback or unlock --force took it)"
            step = next_step(
                shape,
                results,
                abort=self._abort_reason,
                touched=bool(what_to_undo(run.journal.state)),
                preempted=preempted,
            )
            if step.kind is StepKind.FINISH:
                return await self._finish(run, step)
            self._phase(step.kind.value)
            log = self.log.bind(phase=step.kind.value)
            log.info("deploy.step", step=step.label, percent=step.percent)
            self.options.reporter.step_started(step.label)
            t = time.monotonic()
            try:
                run.journal.phase(step.kind.value, **({"percent": step.percent} if step.percent is not None else {}))
                result = await self._run_step(run, step)
            except StaleStateError as exc:  # someone else wrote our journal: we no longer own this deploy
                preempted = f"the journal changed under this deploy ({exc})"
                result = Result(step, False, preempted)
            except StateError:  # the phase record could not be written (a step's own failures come back as results)
                if run.writes is None or run.writes.failed is None:
                    raise
                result = Result(step, False, "its journal could not be written")
            if run.writes is not None and run.writes.failed is not None:
                raise self._journal_lost(run, run.writes.failed)
            seconds = time.monotonic() - t
            results.append(result)
            run.steps.append({"step": step.label, "ok": result.ok, "seconds": round(seconds, 3), "detail": result.why})
            run.timings[step.label] = round(run.timings.get(step.label, 0.0) + seconds, 3)
            log.info("deploy.step_done", step=step.label, ok=result.ok, seconds=round(seconds, 3), detail=result.why)
            self.options.reporter.step_finished(step.label, result.ok, seconds, result.why)

    async def _run_step(self, run: _Run, step: Step) -> Result:
        try:
            if step.kind is StepKind.APPLY:
                return await self._apply(run, step)
            if step.kind is StepKind.GATE_CANDIDATE:
                return await self._gate(run, step, "candidate")
            if step.kind is StepKind.SHIFT:
                return await self._shift(run, step)
            if step.kind is StepKind.BAKE:
                await self._interruptible(self.options.sleep(float(self.config.rollout.bake_seconds)))
                return Result(step, True, f"baked {self.config.rollout.bake_seconds} s at {step.percent}%")
            if step.kind is StepKind.GATE_PUBLIC:
                return await self._gate(run, step, "public")
            if step.kind is StepKind.ROLLBACK:
                return await self._rollback(run, step)
            if step.kind is StepKind.VERIFY:
                return await self._gate(run, step, "restored")
        except StaleStateError:
            raise
        except Aborted as exc:
            return Result(step, False, f"{INTERRUPTED}{exc}")
        except DeployerError as exc:
            return Result(step, False, str(exc))
        except Exception as exc:  # a bug must not leave resources half-changed: roll back, say what broke
            self.log.exception("deploy.internal_error", phase=step.kind.value, step=step.label)
            return Result(step, False, f"internal error: {type(exc).__name__}: {exc}")
        raise AssertionError(f"unknown step {step}")  # pragma: no cover

    # ---- apply: infra ∥ candidate ----------------------------------------------------------------
    async def _apply(self, run: _Run, step: Step) -> Result:
        stop = asyncio.Event()
        notes: list[str] = []
        errors: list[BaseException] = []

        async def guarded(name: str, coro: Coroutine[Any, Any, list[str]]) -> None:
            t = time.monotonic()
            try:
                notes.extend(await coro)
            except BaseException as exc:
                if not isinstance(exc, Aborted) or not errors:
                    errors.append(exc)
                stop.set()
                if isinstance(exc, asyncio.CancelledError):
                    raise
            finally:
                run.timings[name] = round(time.monotonic() - t, 3)

        shape = self._shape(run.plan)
        jobs = []
        if shape.infra:
            jobs.append(guarded("infra", self._infra(run, stop)))
        if shape.candidate:
            jobs.append(guarded("candidate", self._candidate(run, stop)))
        await asyncio.gather(*jobs)
        real = [e for e in errors if not isinstance(e, Aborted)]
        if real or errors:
            first = (real or errors)[0]
            return Result(step, False, str(first) or type(first).__name__)
        return Result(step, True, "; ".join(notes))

    async def _infra(self, run: _Run, stop: asyncio.Event) -> list[str]:
        plan = run.plan
        tasks = []
        bs = _change(plan, BACKEND_SERVICE)
        if bs is not None and bs.action is Action.UPDATE:
            tasks.append(self._backend(run, bs, stop))
        rules = [c for c in plan.effective() if c.kind == ARMOR_RULE]
        if rules:
            tasks.append(self._rules(run, rules, stop))
        run_change = _change(plan, RUN_SERVICE)
        if run_change is not None and run_change.action is Action.UPDATE and not _template_changed(run_change):
            tasks.append(self._service_fields(run, run_change, stop))
        notes: list[str] = []
        first_error: BaseException | None = None
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, BaseException):
                first_error = first_error or outcome
            else:
                notes.extend(outcome)
        if first_error is not None:
            raise first_error
        return notes

    async def _wait_compute(self, op: str | None, stop: asyncio.Event) -> None:
        if op is None:
            return
        for _ in range(1000):
            if await self._interruptible(asyncio.to_thread(self.compute.wait_once, op), stop):
                return
        raise CloudError(f"compute operation {op} is not DONE after 1000 waits")

    async def _backend(self, run: _Run, change: Change, stop: asyncio.Event) -> list[str]:
        live = run.observed.backend_service or {}
        name = change.id.rsplit("/", 1)[-1]
        merged = {**live, **(change.after or {})}
        write = backend_restore_write(live, merged)
        if write is None:
            return []
        verb, body = write
        request_id = new_request_id()
        fingerprint = str(change.precondition or live.get("fingerprint") or "")
        with run.journal.effect(
            kind=BACKEND_SERVICE,
            resource_id=change.id,
            before=live,
            precondition=fingerprint,
            action=Action.UPDATE,
            method=f"compute.backendServices.{verb}",
            intended=body,
            request_id=request_id,
        ) as handle:
            run.memory[handle.effect] = copy.deepcopy(live)
            await asyncio.to_thread(self._confirm_lease)
            op = await asyncio.to_thread(
                self.compute.write_backend_service, verb, name, body, fingerprint=fingerprint, request_id=request_id
            )
            await self._wait_compute(op, stop)
            after = await asyncio.to_thread(self.compute.get_backend_service, name)
            handle.done(after, precondition=(after or {}).get("fingerprint"))
        return [f"backend service {name}: {', '.join(sorted(body))} {'patched' if verb == 'patch' else 'updated'}"]

    async def _rules(self, run: _Run, changes: list[Change], stop: asyncio.Event) -> list[str]:
        policy = self.desired.security_policy_name or ""
        live_rules = run.observed.armor_rules()
        notes = []
        for change in changes:  # one policy: one call at a time (gcp-facts §5.1 [Inference])
            priority = int(change.id.rsplit("/", 1)[-1])
            before = live_rules.get(priority)
            write = rule_restore_write(before, change.after)
            if write is None:
                continue
            verb, body, clear = write
            method = {"add": "addRule", "patch": "patchRule", "remove": "removeRule"}[verb]
            with run.journal.effect(
                kind=ARMOR_RULE,
                resource_id=change.id,
                before=before,
                precondition=change.precondition,
                action=change.action,
                method=f"compute.securityPolicies.{method}",
                intended=body,
            ) as handle:
                run.memory[handle.effect] = copy.deepcopy(before) if before is not None else None
                await asyncio.to_thread(self._confirm_lease)
                if verb == "add":
                    assert body is not None
                    op = await asyncio.to_thread(self.compute.add_rule, policy, body)
                elif verb == "patch":
                    assert body is not None
                    op = await asyncio.to_thread(self.compute.patch_rule, policy, priority, body, clear=clear)
                else:
                    op = await asyncio.to_thread(self.compute.remove_rule, policy, priority)
                await self._wait_compute(op, stop)
                handle.done(body)
            notes.append(f"Cloud Armor rule {priority} {dict(add='added', patch='updated', remove='removed')[verb]}")
        return notes

    async def _service_fields(self, run: _Run, change: Change, stop: asyncio.Event) -> list[str]:
        """A service-level change without a new revision (ingress, labels, annotations)."""
        live = copy.deepcopy(run.service or {})
        body = _service_body(
            live, change.after or {}, template=live.get("template") or {}, traffic=live.get("traffic") or []
        )
        await self._update_service(run, body, stop, label="service fields")
        fields = ", ".join(k for k in (change.after or {}) if k != "template")
        return [f"service {self.config.service.name}: {fields} updated"]

    async def _update_service(self, run: _Run, body: JSON, stop: asyncio.Event | None, *, label: str) -> JSON:
        """One guarded UpdateService: journaled, then waited for (outside the effect: the update is
        applied once accepted, even if its rollout then fails)."""
        before = copy.deepcopy(run.service)
        etag = str(run.etag or "")
        intended = {
            "template.revision": (body.get("template") or {}).get("revision"),
            "traffic": body.get("traffic"),
            "annotations": {k: v for k, v in (body.get("annotations") or {}).items() if k.startswith("deployer.dev/")},
        }
        with run.journal.effect(
            kind=RUN_SERVICE,
            resource_id=self.desired.service_name,
            before=before,
            precondition=etag,
            action=Action.UPDATE,
            method="run.services.patch",
            intended=intended,
        ) as handle:
            run.memory[handle.effect] = before
            await asyncio.to_thread(self._confirm_lease)
            op = await asyncio.to_thread(
                self.run_api.update_service, {**body, "name": self.desired.service_name}, etag=etag
            )
            meta = self.run_api.metadata(op) or {}
            handle.done(
                {"etag": meta.get("etag"), "generation": meta.get("generation"), "step": label},
                precondition=meta.get("etag"),
            )
        if meta.get("etag"):
            run.etag = meta["etag"]
        result = await self._wait_run(op, stop)
        run.service = result
        run.etag = result.get("etag") or run.etag
        _check_settled(result, label)
        return result

    async def _wait_run(self, op: Any, stop: asyncio.Event | None) -> JSON:
        extra = (stop,) if stop is not None else ()
        deadline = time.monotonic() + self.options.poll.timeout
        for delay in self.options.poll.delays():
            if await self._interruptible(asyncio.to_thread(self.run_api.poll, op), *extra):
                return await asyncio.to_thread(self.run_api.outcome, op)
            if time.monotonic() > deadline:
                raise CloudError("the Cloud Run operation did not finish in time", method="run.operations.get")
            await self._interruptible(asyncio.sleep(delay), *extra)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _candidate(self, run: _Run, stop: asyncio.Event) -> list[str]:
        change = _change(run.plan, RUN_SERVICE)
        assert change is not None and run.service is not None
        live = run.service
        template = copy.deepcopy((change.after or {}).get("template") or {})
        template["revision"] = run.revision
        tag = self.config.rollout.tag
        new_traffic, pinned = traffic.no_traffic(live, run.revision, tag)
        body = _service_body(live, change.after or {}, template=template, traffic=new_traffic)
        etag_before = run.etag
        try:
            result = await self._update_service(run, body, stop, label="candidate")
        except CloudError as exc:
            # accepted (a new etag) and then failed to start, or refused outright (a 403, a 400): say which
            what = "did not become Ready" if run.etag != etag_before else "could not be created"
            raise CloudError(
                f"candidate revision {run.revision} {what}: {exc}", method=exc.method, status=exc.status
            ) from exc
        if traffic.short(result.get("latestReadyRevision")) != run.revision:
            raise CloudError(
                f"candidate revision {run.revision} is not the latest ready revision "
                f"({traffic.short(result.get('latestReadyRevision'))}) after its update",
                method="run.services.patch",
            )
        if gates.tag_uri(result, tag) is None and not self.config.gate.candidate.url:
            raise GateError(f"the service reports no URI for the candidate's tag {tag!r}")
        note = f"candidate {run.revision} Ready, tag {tag} at 0%"
        if pinned:
            note += f" (LATEST pinned to {pinned}, as gcloud --no-traffic does)"
        return [note]

    # ---- traffic ---------------------------------------------------------------------------------
    async def _shift(self, run: _Run, step: Step) -> Result:
        assert step.percent is not None and run.service is not None
        before = traffic.effective(run.observed.service or {})
        tag = self.config.rollout.tag
        annotations = dict(run.service.get("annotations") or {})
        if step.final:
            previous_tag = self.options.previous_tag
            if len(previous_tag) + len(self.config.service.name) > TAG_PLUS_SERVICE_MAX:
                previous_tag = ""  # gcp-facts §4.5: the tag would not fit; the annotation still names it
            new_traffic, previous = traffic.final(
                before, run.revision, candidate_tag=tag, previous_tag=previous_tag or None
            )
            run.previous = previous
            annotations[ANNOTATION_DEPLOY_ID] = run.deploy_id
            annotations[ANNOTATION_LAST_GOOD] = run.revision
            if previous:
                annotations[ANNOTATION_PREVIOUS] = previous
        else:
            new_traffic = traffic.step(before, run.revision, step.percent, candidate_tag=tag)
        body = {**run.service, "traffic": new_traffic, "annotations": annotations}
        result = await self._update_service(run, body, None, label=step.label)
        split = traffic.split(traffic.effective(result))
        detail = ", ".join(f"{r} {p}%" for r, p in split.items())
        if step.final:
            detail += (
                f"; finalized (candidate tag removed{f', {run.previous} tagged previous' if run.previous else ''})"
            )
        return Result(step, True, detail)

    # ---- gates -----------------------------------------------------------------------------------
    async def _gate(self, run: _Run, step: Step, target: str) -> Result:
        service = run.service or {}
        if target == "restored":
            fresh = await asyncio.to_thread(self.run_api.get_service, self.desired.service_name)
            service = fresh or service
        if target == "candidate":
            spec = gates.candidate_spec(self.config.gate.candidate, service, self.config.rollout.tag)
        else:
            spec = gates.public_spec(self.config.gate.public, service)
        verdict = await self._interruptible(self._probe(spec))
        evidence = verdict.to_json()
        name = f"{target} {step.percent}%" if step.percent is not None else target
        run.journal.gate(name, verdict.outcome.value, evidence)
        p95 = verdict.latency["handshake"].p95 if "handshake" in verdict.latency else None
        summary = f"{verdict.outcome.value}: {'; '.join(verdict.reasons)}"
        if p95 is not None:
            summary += f" (handshake p95 {p95:.0f} ms)"
        run.gates.append(
            {
                "target": name,
                "url": spec.url,
                "host": spec.host,
                "verdict": verdict.outcome.value,
                "reasons": list(verdict.reasons),
                "counts": verdict.counts.to_json(),
                "close_codes": dict(verdict.close_codes),
            }
        )
        self.log.info(
            "deploy.gate",
            phase=step.kind.value,
            target=name,
            verdict=verdict.outcome.value,
            reasons=list(verdict.reasons),
        )
        return Result(step, verdict.outcome is Outcome.PASSED, f"{name} gate {summary}")

    async def _probe(self, spec: GateSpec) -> Verdict:
        return await run_gate(spec, env=self.options.gate_env)

    # ---- rollback --------------------------------------------------------------------------------
    async def _rollback(self, run: _Run, step: Step) -> Result:
        # The abort that led here has been honoured: the rollback and its verify gate run to the end
        # (a second Ctrl-C still interrupts the verify gate; the restores themselves are never cut).
        if self._abort_event is not None:
            self._abort_event.clear()
        run.journal.decision("rollback", step.reason or "a step failed")
        self.log.warning("deploy.rollback", phase="rollback", why=step.reason)
        restorer = Restorer(
            self.run_api,
            self.compute,
            run.journal,
            memory=run.memory,
            known_etag=run.etag,
            known_service=run.service,
        )
        report = await asyncio.to_thread(restorer.restore_all)
        run.restored = [i.to_json() for i in report.items]
        run.pins = report.pins
        run.remaining = report.remaining
        run.hints = report.hints
        for pin in report.pins:
            self.options.reporter.note(
                f"LATEST was pinned to {pin} (after the candidate became Ready, LATEST would send users to it)"
            )
        for item in report.items:
            self.options.reporter.note(
                f"{item.stage}: {item.kind} {item.resource_id.rsplit('/', 1)[-1]} — {item.detail}"
            )
        why = "; ".join(report.remaining)
        return Result(step, report.ok, why or "every touched resource is back to its pre-image", foreign=report.foreign)

    # ---- the journal cannot be written ---------------------------------------------------------
    def _journal_lost(self, run: _Run, exc: StateError, *, ended: Status | None = None) -> StateError:
        """The error a deploy stops with when a journal write failed (``exc``); nothing more is attempted.

        Why stop — not go on, and not roll back: every call a deploy makes is journaled BEFORE it acts (its
        pre-image, then its start), and that is what a rollback, ``resume`` and the next deploy rely on. With
        the journal refusing writes, going on would make calls nobody could undo or even see; rolling back
        would be the same in reverse (restores whose outcome the journal cannot hold: a rollback that half
        landed would read, to ``resume``, like one that never ran). Stopping leaves the journal a true, if
        short, account — every call made so far has its pre-image and start recorded, at worst its outcome
        unknown — which is exactly what ``resume`` is built for: it settles unknown outcomes by reading the
        resources back, then finishes or undoes the deploy by its one rule. The journal stays unfinished
        (``status`` shows it interrupted once this process is gone; the next deploy refuses until it is
        resumed), so the answer is exit 3 and ``deployer resume`` — or, when nothing was changed yet, exit 1 as
        for any refusal, after one more try to close the journal ``failed``."""
        self._journal_unwritable = True
        resume = f"deployer resume -c {self.config.source.file}"
        touched = _touched(run.journal.state, run.revision if self._shape(run.plan).candidate else None)
        self.log.error(
            "deploy.journal_unwritable",
            error=exc.message,
            ended=ended.value if ended else None,
            may_remain_changed=touched,
        )
        self.options.reporter.close()
        if ended is not None and ended is not Status.FAILED:
            return JournalUnwritableError(
                f"{self.key}: deploy {run.deploy_id} ended {ended.value}, but its journal could not record it: "
                f"{exc.message}",
                hint=f"run `{resume}` to close its journal once the state store takes writes (deploys wait for it)",
            )
        if touched:
            return JournalUnwritableError(
                f"{self.key}: deploy {run.deploy_id} stopped, its journal could not be written ({exc.message}); "
                f"it did not roll back, so these may remain changed: {', '.join(touched)}",
                hint=f"run `{resume}` once the state store takes writes: it finishes or rolls the deploy back "
                "from its journal",
            )
        closed = False
        with contextlib.suppress(DeployerError):
            run.journal.finish("failed", "failed before changing anything: its journal could not be written")
            closed = True
        return StateError(
            f"{exc.message}; deploy {run.deploy_id} stopped before changing anything",
            hint=exc.hint if closed else f"its journal is left unfinished: `{resume}` closes it (it changed nothing)",
        )

    # ---- the end ---------------------------------------------------------------------------------
    async def _finish(self, run: _Run, step: Step) -> DeployResult:
        status = step.status or Status.FAILED
        self._phase("finish")
        if status is Status.SUCCEEDED:
            final = run.service or {}
        else:
            try:
                final = await asyncio.to_thread(self.run_api.get_service, self.desired.service_name) or {}  # type: ignore[arg-type]
            except CloudError as exc:
                # The end is journaled and reported whatever this read says (the cloud may be gone, which is
                # often why we are here): the last service we know, and why it is not fresh.
                final = run.service or {}
                self.log.warning("deploy.final_read_failed", phase="finish", error=exc.message)
                run.hints.append(f"the traffic shown is the last known: reading it again failed ({exc.message})")
        after = [s.to_json() for s in traffic.effective(final)]
        owned = sorted(self.desired.armor_rules) if status is Status.SUCCEEDED else None
        summary = {
            Status.SUCCEEDED: success_summary(self._shape(run.plan).candidate, run.revision, traffic.effective(final)),
            Status.ROLLED_BACK: "rolled back: every touched resource is back to its pre-image",
            Status.FAILED: "failed before changing anything",
            Status.ROLLBACK_INCOMPLETE: "rollback incomplete",
            Status.ABORTED: "aborted",
        }[status]
        detail: dict[str, Any] = {"traffic_after": after, "revision": run.revision, "why": step.reason}
        if owned is not None:
            detail["owned_armor_priorities"] = owned
        else:
            detail["owned_armor_priorities"] = run.owned_before
        if run.pins:
            detail["pinned_latest_to"] = run.pins
        try:
            with contextlib.suppress(StaleStateError, LockLostError):
                run.journal.finish(status.value, summary, remaining=run.remaining, **detail)
        except StateError as exc:
            if run.writes is None or run.writes.failed is None:
                raise
            raise self._journal_lost(run, exc, ended=status) from exc
        self._phase("finish")
        self.log.info("deploy.finished", phase="finish", status=status.value, why=step.reason, remaining=run.remaining)
        self.options.reporter.close()
        return DeployResult(
            service=self.key,
            status=status.value,
            exit_code=status.exit_code,
            deploy_id=run.deploy_id,
            why=step.reason,
            revision=run.revision if self._shape(run.plan).candidate else None,
            previous=run.previous,
            plan_summary=run.plan.summary(),
            traffic_before=[s.to_json() for s in traffic.effective(run.observed.service or {})],
            traffic_after=after,
            gates=run.gates,
            pins=run.pins,
            restored=run.restored,
            remaining=run.remaining,
            hints=run.hints,
            steps=run.steps,
            timings=run.timings,
            journal=run.journal.key,
            journal_location=run.journal.where,
            resume=f"deployer resume -c {self.config.source.file}" if status is Status.ROLLBACK_INCOMPLETE else None,
        )


# ---- helpers -----------------------------------------------------------------------------------------


def _observe(config: DeployConfig, clients: Clients, policy: retry.RetryPolicy) -> Observed:
    from deployer.gcp.observe import observe

    return observe(config, clients, policy=policy)


def _change(plan: Plan, kind: str) -> Change | None:
    return next((c for c in plan.changes if c.kind == kind), None)


def _template_changed(change: Change) -> bool:
    before = (change.before or {}).get("template") or {}
    after = (change.after or {}).get("template") or {}
    return bool(diff_fields(before, after))


def _service_body(live: Mapping[str, Any], after: Mapping[str, Any], *, template: JSON, traffic: list[JSON]) -> JSON:
    """The UpdateService body: the live service, the config's service-level fields over it (labels and
    annotations merged key by key: the config owns the keys it names), the given template and traffic."""
    body = copy.deepcopy(dict(live))
    for key, value in after.items():
        if key == "template":
            continue
        if key in ("labels", "annotations") and isinstance(value, Mapping):
            body[key] = {**(body.get(key) or {}), **value}
        else:
            body[key] = copy.deepcopy(value)
    body["template"] = template
    body["traffic"] = traffic
    return body


def _check_settled(service: Mapping[str, Any], label: str) -> None:
    """gcp-facts §4.1 [Inference] "done": the operation ended, ``reconciling`` is false, the terminal
    condition SUCCEEDED and ``observed_generation == generation``."""
    condition = service.get("terminalCondition") or {}
    if (
        service.get("reconciling")
        or condition.get("state") != "CONDITION_SUCCEEDED"
        or str(service.get("observedGeneration")) != str(service.get("generation"))
    ):
        state = condition.get("state", "no terminal condition")
        raise CloudError(
            f"{label}: the service did not settle ({state}, generation {service.get('generation')}, "
            f"observed {service.get('observedGeneration')}): {condition.get('message', '')}".rstrip(": "),
            method="run.services.patch",
        )


def resume_first(
    state: JournalState | None,
    *,
    newest_id: str | None,
    this_deploy: str | None,
    config_file: str,
    locked: bool = True,
) -> LockHeldError | None:
    """Why a deploy must not act before ``deployer resume`` (README "Emergency rollback, pins, resume"), or None.

    ``state``: the newest deploy or rollback journal (``resume.newest_operation``); ``newest_id``: the newest
    journal of any kind. Refused (exit 4, like a held lock: the service is someone's to finish first):
    - a journal that never finished (its process died) — only when ``locked``: without the service lock, an
      unfinished journal may be a deploy still running;
    - a journal that finished ``rollback_incomplete`` that ``resume`` would try again (nothing came after it:
      an operator who acted since decides, and resume would then do nothing) — the failed candidate may
      still be tagged, the template may still hold its image, and a plan over that says "no changes".
    An emergency ``rollback`` is never refused by this (``emergency.py`` does not call it): on-call must
    always be able to move traffic."""
    from deployer.orchestrator.resume import decide

    if state is None or state.deploy_id == this_deploy:
        return None
    op, who = state.started.operation, state.started.owner.describe()
    holder = state.started.owner.model_dump(mode="json")
    if not state.is_finished:
        if not locked:
            return None
        return LockHeldError(
            f"{state.service}: {op} {state.deploy_id} by {who} never finished (its process died): "
            "it may have left resources half-changed",
            hint=f"run `deployer resume -c {config_file}` to finish or roll it back first",
            holder=holder,
        )
    if state.status != "rollback_incomplete" or newest_id != state.deploy_id or decide(state).action == "nothing":
        return None
    assert state.finished is not None
    left = [line.split(": ", 1)[0] for line in state.finished.remaining]
    shown = ", ".join(f"{kind} {rid.rsplit('/', 1)[-1]}".strip() for kind, _, rid in (x.partition(" ") for x in left))
    todo = "retry its rollback" if op == "deploy" else "carry it forward to its target"
    return LockHeldError(
        f"{state.service}: {op} {state.deploy_id} by {who} ended rollback_incomplete: "
        f"{shown or state.finished.summary} may still be changed; deploying now would build on what it left",
        hint=f"run `deployer resume -c {config_file}` to {todo} first",
        holder=holder,
    )


def check_resumed(
    store: StateStore, key: str, config_file: str, *, this_deploy: str | None, locked: bool = True
) -> None:
    """``resume_first`` over the store (reads only); raises its refusal."""
    from deployer.orchestrator.resume import newest_operation

    state = newest_operation(store, key)
    newest_id = next((deploy_id for deploy_id, _ in newest_first_or_error(store, key)), None)
    refusal = resume_first(state, newest_id=newest_id, this_deploy=this_deploy, config_file=config_file, locked=locked)
    if refusal is not None:
        raise refusal


def check_resumed_unlocked(config: DeployConfig) -> None:
    """For a deploy that ends before it takes the lock (``--if-changed``, or a confirmed deploy, with nothing
    to change): refused over a ``rollback_incomplete`` journal all the same (``resume_first``)."""
    store = open_store(config.state, Clients(endpoint=config.endpoint, project=config.project))
    check_resumed(store, state_key(config), config.source.file, this_deploy=None, locked=False)


class _JournalStore:
    """The state store as a deploy's journal writes to it: the same store, remembering the first write that
    failed (``failed``) — not a lost compare-and-swap (``StaleStateError``: someone else wrote the journal,
    handled as a preemption), a write the store refused or never answered."""

    def __init__(self, inner: StateStore) -> None:
        self.inner = inner
        self.failed: StateError | None = None

    def read(self, key: str) -> tuple[bytes, int] | None:
        return self.inner.read(key)

    def write(self, key: str, data: bytes, *, if_generation: int | None) -> int:
        try:
            return self.inner.write(key, data, if_generation=if_generation)
        except StaleStateError:
            raise
        except StateError as exc:
            if self.failed is None:
                self.failed = exc
            raise

    def delete(self, key: str, *, if_generation: int | None) -> bool:
        return self.inner.delete(key, if_generation=if_generation)

    def list(self, prefix: str) -> list[str]:
        return self.inner.list(prefix)

    def where(self, key: str) -> str:
        return self.inner.where(key)


def _touched(state: JournalState, candidate: str | None) -> list[str]:
    """What a deploy stopped mid-way may have left changed, one entry per resource: every effect started and
    not undone (its outcome known or not), e.g. ``run.service chat-backend (candidate chat-backend-…)``."""
    out: list[str] = []
    for e in reversed(what_to_undo(state)):  # in the order they were made
        name = f"{e.kind} {e.resource_id.rsplit('/', 1)[-1]}"
        if e.kind == RUN_SERVICE and candidate:
            name += f" (candidate {candidate})"
        if name not in out:
            out.append(name)
    return out


def success_summary(candidate: bool, revision: str, served: Sequence[traffic.Served]) -> str:
    """The closing line of a deploy that succeeded (``why``, ``history``): the revision it deployed, or — for
    an infrastructure-only deploy, whose revision name was never created — that traffic stayed where it was."""
    if candidate:
        return f"deployed {revision}"
    split = traffic.split(served)
    where = ", ".join(f"{r} {p}%" if p != 100 else r for r, p in split.items()) or "no revision"
    return f"applied infrastructure; traffic unchanged on {where}"


@dataclass(frozen=True)
class DriftRefusal:
    """Why a deploy refuses over traffic moved by hand since the last deploy (``drift_refusal``): what
    drifted, and the words and hint of the ``DriftError`` it raises (``plan`` shows the same up front)."""

    found: traffic.Drift
    message: str
    hint: str

    def error(self) -> DriftError:
        return DriftError(self.message, hint=self.hint)

    def to_json(self) -> JSON:
        return {
            "reason": "drift",
            "message": self.message,
            "hint": self.hint,
            "live": dict(self.found.live),
            "last_deploy_left": dict(self.found.expected),
            "last_deploy": self.found.last.deploy_id,
            "from": self.found.last.source,
        }


def drift_refusal(config: DeployConfig, service: JSON | None, last: traffic.LastDeploy | None) -> DriftRefusal | None:
    """The deploy's drift decision (pure; ``deploy`` raises it, ``plan`` reports it up front): a refusal when
    the live split is not what the last deploy left (``traffic.drift``), None when the deploy may go on (no
    service, no last deploy, or the split it left)."""
    found = traffic.drift(service, last) if service is not None else None
    if found is None:
        return None
    return DriftRefusal(
        found=found,
        message=f"{config.service.name}: {found.describe()}; someone moved traffic by hand (a manual rollback?), "
        "and deploying now would report success while that split keeps serving",
        hint=drift_hint(found, config.source.file),
    )


def drift_hint(found: traffic.Drift, config_file: str) -> str:
    """How to get past a drift refusal (README "Emergency rollback, pins"): adopt what serves now by recording
    it as an emergency rollback — 100 % on one revision, pinned, so the next deploy clears the pin on purpose
    (``--unpin``) — or put traffic back to what the last deploy left."""
    top = max(found.live.items(), key=lambda rp: rp[1])[0] if found.live else "REVISION"
    return (
        f"to keep {top} serving, record it: `deployer rollback -c {config_file} --to {top} --reason ...` (100% on "
        "it, pinned; then deploy with --unpin); or move traffic back to what the last deploy left; then deploy again"
    )


def _holder_journal(store: StateStore, info: LockInfo) -> HolderJournal:
    try:
        state = load(store, info.service, info.deploy_id)
    except DeployerError:
        return HolderJournal.MISSING
    return HolderJournal.FINISHED if state.is_finished else HolderJournal.RUNNING


def last_deploy(store: StateStore, key: str, service: JSON | None) -> tuple[traffic.LastDeploy | None, list[int]]:
    """What the last deploy left (the service's ``deployer.dev/`` annotations first: they are written in
    the same update as the traffic; else the newest finished journal), and the Cloud Armor priorities
    it owned."""
    last: traffic.LastDeploy | None = None
    annotations = (service or {}).get("annotations") or {}
    if annotations.get(ANNOTATION_LAST_GOOD):
        last = traffic.LastDeploy(
            "annotations", str(annotations.get(ANNOTATION_DEPLOY_ID, "?")), {annotations[ANNOTATION_LAST_GOOD]: 100}
        )
    owned: list[int] = []
    for deploy_id in list_deploys(store, key):
        try:
            state = load(store, key, deploy_id)
        except DeployerError:
            continue
        if state.finished is None or state.started.operation in ADMIN_OPERATIONS:
            continue  # unpin / unlock journals change no resource
        detail = state.finished.detail
        owned = [int(p) for p in detail.get("owned_armor_priorities") or []]
        if (
            last is None
            and state.finished.status in ("succeeded", "rolled_back", "failed")
            and detail.get("traffic_after")
        ):
            served = [
                traffic.Served(t["revision"], int(t["percent"]), t.get("tag", "")) for t in detail["traffic_after"]
            ]
            last = traffic.LastDeploy("journal", deploy_id, traffic.split(served))
        break
    return last, owned
