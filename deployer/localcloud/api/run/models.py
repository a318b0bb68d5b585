"""Cloud Run Admin API v2: the state of services, revisions and operations, and how it changes.

State layout — a contract with the runtime and the local load balancer, keep it:

- ``world.apis["run"]`` is a ``State``;
- ``State.services: dict[str, run_v2.Service]`` keyed ``projects/P/locations/L/services/S``;
- ``State.revisions: dict[str, run_v2.Revision]`` keyed ``projects/P/locations/L/services/S/revisions/R``;
  a Revision carries ``containers``, ``scaling``, ``timeout``, ``max_instance_request_concurrency``,
  ``session_affinity``, ``conditions`` (``Ready`` first) and ``service``;
- a Service carries ``template``, ``traffic`` and ``traffic_statuses``: the serving state. New
  connections go by ``traffic_statuses`` percents and tags; in memory each status names its
  revision (LATEST resolved to ``latest_ready_revision``; on the wire LATEST carries no revision, as
  in the real recording ``compute-serverless-neg-cloudrun.http.log``);
- objects in both dicts are *replaced*, never changed in place, always under ``world.lock``, so a
  reader holding one sees a consistent value. ``State.reconcile()`` is public: the runtime may call
  it when a revision's readiness changes.

Life of a change (gcp-facts §4.1, §4.3): a create or patch stores the new spec at once
(``generation`` + 1, new ``etag``, ``reconciling``), creates a revision when the template changed
(``world.runtime.start``), and starts a *rollout*. On each read the state reconciles: pending
revisions become Ready or Failed as the runtime says, and a rollout finishes once its duration
(``world.faults.operation_duration``, measured with ``world.clock``) has passed and the revisions
it needs are settled. Only then do ``traffic_statuses``, ``latest_ready_revision`` and
``observed_generation`` move, and its operations end — with the Service, or with an error when a
revision failed (they keep the last serving state, §4.1 "reconciling") or a fault was injected.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import string
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import structlog
from google.api import launch_stage_pb2
from google.cloud import run_v2
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import field_mask_pb2

from deployer.localcloud.api.common import DEFAULT_FAULT_MESSAGE, GRPC_CODE, GRPC_STATUS, ApiError
from deployer.localcloud.api.run import rules, wire
from deployer.localcloud.world import Readiness, RevisionState, World

log = structlog.get_logger("localcloud.run")

Condition = run_v2.Condition
CState = run_v2.Condition.State
LATEST = rules.LATEST
REVISION = rules.REVISION

# Who "did" a change: anonymous credentials carry no identity, so one local principal.
PRINCIPAL = "local-user@example.com"
# A deleted resource is kept (and reported) for 30 days (the real recording: deleteTime +30 d = expireTime).
EXPIRE_AFTER = timedelta(days=30)
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

# Fields of a Service a caller sets (the rest are output only and ignored on input).
SPEC_FIELDS = (
    "description",
    "labels",
    "annotations",
    "client",
    "client_version",
    "ingress",
    "launch_stage",
    "binary_authorization",
    "template",
    "traffic",
    "scaling",
    "invoker_iam_disabled",
    "default_uri_disabled",
    "iap_enabled",
    "multi_region_settings",
    "custom_audiences",
    "build_config",
)
# RevisionTemplate fields a Revision copies under the same name.
REVISION_FIELDS = (
    "labels",
    "annotations",
    "scaling",
    "vpc_access",
    "max_instance_request_concurrency",
    "timeout",
    "service_account",
    "containers",
    "volumes",
    "execution_environment",
    "encryption_key",
    "service_mesh",
    "encryption_key_revocation_action",
    "encryption_key_shutdown_duration",
    "session_affinity",
    "node_selector",
    "gpu_zonal_redundancy_disabled",
)
# Real Cloud Run region codes in *.a.run.app hosts (e.g. "-uc.a.run.app" for us-central1).
REGION_CODES = {
    "us-central1": "uc",
    "us-east1": "ue",
    "us-east4": "uk",
    "us-west1": "uw",
    "europe-west1": "ew",
    "asia-east1": "de",
    "asia-northeast1": "an",
}


@dataclass
class Operation:
    """A long-running operation. ``snapshot`` is the Service (or Revision) it reports: its metadata
    while running, its response when done without ``error`` (a gRPC ``(code, message)``)."""

    name: str
    method: str
    target: str
    ready_at: float
    snapshot: Any
    follows_rollout: bool = False
    deleting: bool = False
    done: bool = False
    error: tuple[int, str] | None = None


@dataclass
class Rollout:
    """The pending change of one service; every operation in ``ops`` ends when it finishes."""

    ready_at: float
    fault: tuple[int, str] | None
    ops: list[str] = field(default_factory=list)


# ---- names and errors ----------------------------------------------------------------------------


def split_name(name: str) -> tuple[str, str, str]:
    """``projects/P/locations/L/<kind>/X[/...]`` -> (P, L, X)."""
    parts = name.split("/")
    return parts[1], parts[3], parts[5] if len(parts) > 5 else ""


def short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def not_found(name: str, kind: str) -> ApiError:
    """The real 404 wording (clientlibs.md §3, and the real recording)."""
    project, location, _ = split_name(name)
    return ApiError(
        404,
        f"Resource '{short(name)}' of kind '{kind}' in region '{location}' in project '{project}' does not exist.",
    )


def violation(request: str, problem: rules.Problem) -> ApiError:
    """Google's 400 for a rule a request breaks, with its ``google.rpc.BadRequest`` detail."""
    if problem.message:
        field_name, message, description = problem.field, problem.message, problem.message
    else:
        field_name = f"Violation in {request}.{problem.field}"
        message, description = f"{field_name}: {problem.description}", problem.description
    return ApiError(
        400,
        message,
        details=[{"@type": wire.BAD_REQUEST, "fieldViolations": [{"field": field_name, "description": description}]}],
    )


def etag_mismatch(kind: str, name: str, given: str) -> ApiError:
    """§4.2: AIP-154 says a stale etag is ABORTED, "which properly becomes 409 Conflict". Cloud Run's
    own wording was not found; this message is ours."""
    return ApiError(
        409,
        f"Etag mismatch: the etag '{given}' does not match the current etag of {kind} '{short(name)}'; "
        "it was changed since it was read. Read it again and retry.",
        grpc_status="ABORTED",
    )


def fault_error(status: int, message: str) -> tuple[int, str]:
    """An injected HTTP status as the gRPC ``(code, message)`` a failed Cloud Run operation carries."""
    code = GRPC_CODE.get(GRPC_STATUS.get(status, "UNKNOWN"), GRPC_CODE["UNKNOWN"])
    return code, message or DEFAULT_FAULT_MESSAGE.get(status, "Injected fault.")


def project_number(project: str) -> str:
    """A stable 12-digit project number for a project id (used in URLs and the default account)."""
    return str(int(hashlib.sha256(project.encode()).hexdigest(), 16) % (9 * 10**11) + 10**11)


def _copy_fields(src: Any, dst: Any, names: tuple[str, ...]) -> None:
    """Copy fields by name between protobuf messages (possibly of different types); unset message
    fields stay unset, so nothing renders as ``{}``."""
    src_fields = src.DESCRIPTOR.fields_by_name
    for name in names:
        fd = src_fields[name]
        dst.ClearField(name)
        if (
            fd.is_repeated
            and fd.type == pb_descriptor.FieldDescriptor.TYPE_MESSAGE
            and fd.message_type.GetOptions().map_entry
        ):
            getattr(dst, name).update(getattr(src, name))
        elif fd.is_repeated:
            getattr(dst, name).extend(getattr(src, name))
        elif fd.type == pb_descriptor.FieldDescriptor.TYPE_MESSAGE:
            if src.HasField(name):
                getattr(dst, name).CopyFrom(getattr(src, name))
        else:
            setattr(dst, name, getattr(src, name))


def _spec_of(svc: run_v2.Service) -> run_v2.Service:
    spec = run_v2.Service()
    _copy_fields(run_v2.Service.pb(svc), run_v2.Service.pb(spec), SPEC_FIELDS)
    return spec


def _template_key(t: run_v2.RevisionTemplate) -> run_v2.RevisionTemplate:
    """A template for comparison: the revision name is not configuration."""
    key = run_v2.RevisionTemplate(t)
    key.revision = ""
    return key


def _snake(path: str) -> str:
    """A FieldMask path as sent (camelCase, clientlibs.md §2a) in proto names."""
    return ".".join("".join("_" + ch.lower() if ch.isupper() else ch for ch in part) for part in path.split("."))


def ready_state(rev: run_v2.Revision) -> int:
    """The state of a revision's ``Ready`` condition."""
    for cond in rev.conditions:
        if cond.type_ == "Ready":
            return int(cond.state)
    return int(CState.STATE_UNSPECIFIED)


def _reason_fields(reason: str) -> dict[str, Any]:
    """A runtime reason as a Condition reason: a CommonReason or RevisionReason name, else UNKNOWN."""
    if reason in Condition.CommonReason.__members__:
        return {"reason": Condition.CommonReason[reason]}
    if reason in Condition.RevisionReason.__members__:
        return {"revision_reason": Condition.RevisionReason[reason]}
    return {"reason": Condition.CommonReason.UNKNOWN}


def _paginate(items: list[Any], page_size: int, page_token: str) -> tuple[list[Any], str]:
    if page_size < 0:
        raise ApiError(400, "Invalid page_size: must not be negative.")
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    start = 0
    if page_token:
        try:
            start = int(base64.urlsafe_b64decode(page_token.encode()).decode().removeprefix("offset:"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, "Invalid page token.") from exc
    page = items[start : start + size]
    following = start + size
    token = base64.urlsafe_b64encode(f"offset:{following}".encode()).decode() if following < len(items) else ""
    return page, token


# ---- the state -----------------------------------------------------------------------------------


class State:
    """Everything the Cloud Run API knows (see the module docstring for the layout contract)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.services: dict[str, run_v2.Service] = {}
        self.revisions: dict[str, run_v2.Revision] = {}
        self.operations: dict[str, Operation] = {}
        self._rollouts: dict[str, Rollout] = {}
        self._pending_ops: set[str] = set()
        self._templates: dict[str, run_v2.RevisionTemplate] = {}  # revision -> its template (no name)
        self._revision_seq: dict[str, int] = {}  # service -> revisions created
        self._latest_created: dict[str, str] = {}  # service -> latest created revision
        self._hash: dict[str, str] = {}  # service -> the hash in its *.a.run.app host
        self._uri_base: str | None = world.lb_url

    # ---- lifecycle ---------------------------------------------------------------------------
    def reset(self) -> None:
        with self.world.lock:
            for name in list(self.revisions):
                with contextlib.suppress(Exception):
                    self.world.runtime.stop(name)
            self.services.clear()
            self.revisions.clear()
            self.operations.clear()
            self._rollouts.clear()
            self._pending_ops.clear()
            self._templates.clear()
            self._revision_seq.clear()
            self._latest_created.clear()
            self._hash.clear()
            self._uri_base = self.world.lb_url

    seed_keys = ("services",)  # the seed document's top-level keys this reads

    def seed(self, doc: dict[str, Any]) -> None:
        """``doc["services"]``: Cloud Run v2 Service JSON (REST shape), ``name`` = the service id (or a
        full name). Each is created through the API's own rules, then settled per the runtime."""
        entries = doc.get("services") or []
        if not isinstance(entries, list):
            raise ApiError(400, "seed: 'services' must be a list of Cloud Run services")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise ApiError(400, f"seed: services[{i}] must be a mapping")
            body = dict(entry)
            name = str(body.pop("name", ""))
            if "/services/" in name:
                parent, service_id = name.rsplit("/services/", 1)
            else:
                parent, service_id = f"projects/{self.world.project}/locations/{self.world.region}", name
            try:
                svc = wire.parse_message(run_v2.Service, body, "service")
                self.create_service(parent, service_id, svc, immediate=True)
            except ApiError as exc:
                raise ApiError(400, f"seed: services[{i}] ({name or '?'}): {exc.message}") from exc
        self.reconcile()

    # ---- services ----------------------------------------------------------------------------
    def get_service(self, name: str) -> run_v2.Service:
        with self.world.lock:
            self.reconcile()
            svc = self.services.get(name)
            if svc is None:
                raise not_found(name, "SERVICE")
            return svc

    def list_services(self, parent: str, page_size: int = 0, page_token: str = "") -> tuple[list[run_v2.Service], str]:
        project, location, _ = split_name(parent)
        with self.world.lock:
            self.reconcile()
            items = [
                s
                for n, s in self.services.items()
                if split_name(n)[0] == project and location in ("-", split_name(n)[1])
            ]
        return _paginate(items, page_size, page_token)

    def create_service(
        self,
        parent: str,
        service_id: str,
        body: run_v2.Service,
        *,
        validate_only: bool = False,
        immediate: bool = False,
    ) -> Operation:
        request = "CreateServiceRequest"
        problem = rules.service_id_problem(service_id)
        if problem:
            raise violation(request, problem)
        name = f"{parent}/services/{service_id}"
        with self.world.lock:
            self.reconcile()
            if name in self.services:
                raise ApiError(409, f"Resource '{service_id}' already exists.", grpc_status="ALREADY_EXISTS")
            return self._apply(
                request,
                name,
                None,
                body,
                method="run.services.create",
                validate_only=validate_only,
                immediate=immediate,
            )

    def update_service(
        self,
        name: str,
        body: run_v2.Service,
        update_mask: str = "",
        *,
        allow_missing: bool = False,
        validate_only: bool = False,
    ) -> Operation:
        request = "UpdateServiceRequest"
        with self.world.lock:
            self.reconcile()
            current = self.services.get(name)
            if current is None:
                if not allow_missing:
                    raise not_found(name, "SERVICE")
                # "If set to true, and if the Service does not exist, it will create a new one." (§4.3)
                problem = rules.service_id_problem(short(name))
                if problem:
                    raise violation(request, rules.Problem("service.name", problem.description))
                return self._apply(request, name, None, body, method="run.services.patch", validate_only=validate_only)
            # §4.2 etag: "May be used to detect modification conflict during updates."
            if rules.etag_conflicts(body.etag, current.etag):
                raise etag_mismatch("service", name, body.etag)
            desired = self._merge(current, body, update_mask)
            return self._apply(
                request, name, current, desired, method="run.services.patch", validate_only=validate_only
            )

    def delete_service(self, name: str, etag: str = "", *, validate_only: bool = False) -> Operation:
        method = "run.services.delete"
        with self.world.lock:
            self.reconcile()
            svc = self.services.get(name)
            if svc is None:
                raise not_found(name, "SERVICE")
            if rules.etag_conflicts(etag, svc.etag):
                raise etag_mismatch("service", name, etag)
            if validate_only:
                return self._plain_op(method, name, svc, done=True)
            fault = self._take_fault(method)
            if fault is not None:
                return self._plain_op(method, name, svc, error=fault)
            now = self.world.now()
            gone = run_v2.Service(svc)
            gone.generation += 1
            gone.delete_time = now
            gone.expire_time = now + EXPIRE_AFTER
            gone.reconciling = True
            gone.terminal_condition = Condition(type_="Ready", state=CState.CONDITION_PENDING, last_transition_time=now)
            gone.etag = self._etag()
            del self.services[name]
            for rev_name in [r for r in self.revisions if r.startswith(name + "/revisions/")]:
                self._drop_revision(rev_name)
            rollout = self._rollouts.pop(name, None)
            if rollout is not None:
                message = f"Service '{short(name)}' was deleted before this operation completed."
                self._end_ops(rollout.ops, gone, (GRPC_CODE["ABORTED"], message))
            self._latest_created.pop(name, None)
            self._revision_seq.pop(name, None)
            self._hash.pop(name, None)
            log.info("run.service.deleted", service=name)
            return self._plain_op(method, name, gone, deleting=True)

    # ---- revisions ---------------------------------------------------------------------------
    def get_revision(self, name: str) -> run_v2.Revision:
        with self.world.lock:
            self.reconcile()
            rev = self.revisions.get(name)
            if rev is None:
                raise not_found(name, "REVISION")
            return rev

    def list_revisions(
        self, parent: str, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[run_v2.Revision], str]:
        project, location, service_id = split_name(parent)
        with self.world.lock:
            self.reconcile()
            if service_id != "-" and parent not in self.services:
                raise not_found(parent, "SERVICE")
            items = []
            for n, r in self.revisions.items():
                p, loc, sid = split_name(n)
                if p == project and location in ("-", loc) and service_id in ("-", sid):
                    items.append(r)
        return _paginate(items, page_size, page_token)

    def delete_revision(self, name: str, etag: str = "", *, validate_only: bool = False) -> Operation:
        method = "run.revisions.delete"
        with self.world.lock:
            self.reconcile()
            rev = self.revisions.get(name)
            if rev is None:
                raise not_found(name, "REVISION")
            if rules.etag_conflicts(etag, rev.etag):
                raise etag_mismatch("revision", name, etag)
            svc = self.services.get(rev.service)
            if svc is not None:
                serving = {s.revision for s in svc.traffic_statuses}
                serving |= {t.revision for t in svc.traffic if t.type_ == REVISION}
                if short(name) in serving:
                    # Real API text (hashicorp/waypoint#814): 400 failedPrecondition.
                    raise ApiError(
                        400,
                        f'Revision "{short(name)}" cannot be directly deleted because it is actively serving.',
                        grpc_status="FAILED_PRECONDITION",
                    )
            if validate_only:
                return self._plain_op(method, name, rev, done=True)
            fault = self._take_fault(method)
            if fault is not None:
                return self._plain_op(method, name, rev, error=fault)
            now = self.world.now()
            gone = run_v2.Revision(rev)
            gone.delete_time = now
            gone.expire_time = now + EXPIRE_AFTER
            self._drop_revision(name)
            log.info("run.revision.deleted", revision=name)
            return self._plain_op(method, name, gone, deleting=True)

    # ---- operations --------------------------------------------------------------------------
    def get_operation(self, name: str) -> Operation:
        with self.world.lock:
            self.reconcile()
            op = self.operations.get(name)
            if op is None:
                raise not_found(name, "OPERATION")
            if not op.done and op.follows_rollout and op.target in self.services:
                op.snapshot = self.services[op.target]
            return op

    def list_operations(self, parent: str, page_size: int = 0, page_token: str = "") -> tuple[list[Operation], str]:
        with self.world.lock:
            self.reconcile()
            items = [op for n, op in self.operations.items() if n.startswith(parent + "/operations/")]
        return _paginate(items, page_size, page_token)

    def delete_operation(self, name: str) -> None:
        with self.world.lock:
            if self.operations.pop(name, None) is None:
                raise not_found(name, "OPERATION")
            self._pending_ops.discard(name)

    # ---- reconciliation ----------------------------------------------------------------------
    def reconcile(self) -> None:
        """Settle what can be settled now: revisions the runtime reports Ready or Failed, rollouts
        whose time has come, finished operations, and URIs if the load balancer moved."""
        with self.world.lock:
            if self.world.lb_url != self._uri_base:
                self._refresh_uris()
            for name, rev in list(self.revisions.items()):
                if rev.reconciling:
                    state = self.world.runtime.state(name)
                    if state.readiness is not Readiness.PENDING:
                        self.revisions[name] = self._settled(rev, state)
            now = self.world.clock()
            for name, rollout in list(self._rollouts.items()):
                if now >= rollout.ready_at and not self._waiting(name):
                    self._finish_rollout(name, rollout)
            for op_name in list(self._pending_ops):
                op = self.operations.get(op_name)
                if op is None:
                    self._pending_ops.discard(op_name)
                elif now >= op.ready_at:
                    self._complete(op)

    # ---- internals: changes ------------------------------------------------------------------
    def _merge(self, current: run_v2.Service, body: run_v2.Service, update_mask: str) -> run_v2.Service:
        """The desired spec: without a mask the body replaces every spec field (AIP-134); with one,
        only the named paths change."""
        paths = [_snake(p.strip()) for p in update_mask.split(",") if p.strip()]
        if not paths or "*" in paths:
            return body
        desc = run_v2.Service.pb().DESCRIPTOR
        mask = field_mask_pb2.FieldMask(paths=[p for p in paths if p.split(".")[0] in SPEC_FIELDS])
        if not field_mask_pb2.FieldMask(paths=paths).IsValidForDescriptor(desc):
            bad = next(p for p in paths if not field_mask_pb2.FieldMask(paths=[p]).IsValidForDescriptor(desc))
            raise violation("UpdateServiceRequest", rules.Problem("update_mask", f"unknown field path '{bad}'."))
        desired = _spec_of(current)
        mask.MergeMessage(
            run_v2.Service.pb(body), run_v2.Service.pb(desired), replace_message_field=True, replace_repeated_field=True
        )
        return desired

    def _apply(
        self,
        request: str,
        name: str,
        current: run_v2.Service | None,
        desired: run_v2.Service,
        *,
        method: str,
        validate_only: bool = False,
        immediate: bool = False,
    ) -> Operation:
        project, location, service_id = split_name(name)
        spec = _spec_of(desired)
        spec.template = rules.normalize_template(
            spec.template, service_account=f"{project_number(project)}-compute@developer.gserviceaccount.com"
        )
        spec.traffic = rules.normalize_traffic(spec.traffic)
        if not spec.ingress:
            spec.ingress = run_v2.IngressTraffic.INGRESS_TRAFFIC_ALL
        if not spec.launch_stage:
            spec.launch_stage = launch_stage_pb2.LaunchStage.GA
        if "scaling" not in spec:
            # The real recording shows service-level scaling {maxInstanceCount: 100} when none was sent.
            spec.scaling = run_v2.ServiceScaling(max_instance_count=100)
        problems = (
            rules.metadata_problems(spec.labels.keys(), spec.annotations.keys(), "service")
            + rules.template_problems(spec.template)
            + rules.traffic_problems(spec.traffic, service_id)
        )
        if problems:
            raise violation(request, problems[0])

        # A new revision per template change (§4.2, §4.4); a given name must be new, or name the same
        # configuration: "409 Revision named '…' with different configuration already exists." (§4.5)
        key = _template_key(spec.template)
        given = spec.template.revision
        new_revision = False
        if given:
            problem = rules.revision_name_problem(given, service_id)
            if problem:
                raise violation(request, problem)
            full = f"{name}/revisions/{given}"
            clash = full in self.revisions and self._templates.get(full) != key
            clash = clash or any(
                short(r) == given and split_name(r)[:2] == (project, location) and not r.startswith(name + "/")
                for r in self.revisions
            )
            if clash:
                raise ApiError(
                    409,
                    f"Revision named '{given}' with different configuration already exists.",
                    grpc_status="ALREADY_EXISTS",
                )
            new_revision = full not in self.revisions
        else:
            new_revision = current is None or _template_key(current.template) != key
        changed = current is None or _spec_of(current) != spec

        if validate_only:
            preview = run_v2.Service(current) if current is not None else run_v2.Service(name=name)
            _copy_fields(run_v2.Service.pb(spec), run_v2.Service.pb(preview), SPEC_FIELDS)
            return self._plain_op(method, name, preview, done=True)

        fault = None if immediate else self._take_fault(method)
        duration = 0.0 if immediate else self.world.faults.operation_duration("run", method)
        now_s = self.world.clock()
        if not changed and not new_revision and current is not None:
            pending = self._rollouts.get(name)
            if pending is not None and fault is None:
                op = self._new_op(method, name, current, now_s, follows_rollout=True)
                pending.ops.append(op.name)
                return op
            return self._plain_op(method, name, current, error=fault, duration=duration)

        now = self.world.now()
        svc = run_v2.Service(current) if current is not None else self._fresh_service(name, now)
        _copy_fields(run_v2.Service.pb(spec), run_v2.Service.pb(svc), SPEC_FIELDS)
        svc.generation += 1
        svc.update_time = now
        svc.last_modifier = PRINCIPAL
        svc.etag = self._etag()
        svc.reconciling = True
        if current is None:
            # The real recording's first answer to a create: terminalCondition {state: CONDITION_PENDING}.
            svc.terminal_condition = Condition(state=CState.CONDITION_PENDING)
        else:
            svc.terminal_condition = Condition(type_="Ready", state=CState.CONDITION_PENDING, last_transition_time=now)
        revision = None
        if new_revision:
            seq = self._revision_seq.get(name, 0) + 1
            self._revision_seq[name] = seq
            rev_id = given or self._generate_revision_id(name, service_id, seq)
            revision = self._new_revision(name, rev_id, svc)
            self.revisions[revision.name] = revision
            self._templates[revision.name] = key
            self._latest_created[name] = revision.name
        elif given and current is not None and _template_key(current.template) != key:
            # The template names an existing revision with this very configuration (e.g. a rollback
            # writing back the pre-image's template with its revision name): that revision is again
            # the configuration's latest created one, as Knative's configuration reconciler does for
            # a "bring your own name" revision that already exists with the same spec. Doubt: Google
            # does not document this for Cloud Run v2; without it, a failed newer revision would keep
            # failing every later update of the service (its latest created revision is not Ready).
            self._latest_created[name] = f"{name}/revisions/{given}"
        self.services[name] = svc
        if revision is not None:
            self.world.runtime.start(revision, svc)
            log.info("run.revision.created", service=name, revision=revision.name, generation=svc.generation)
        op = self._new_op(method, name, svc, now_s, follows_rollout=True)
        previous = self._rollouts.get(name)
        self._rollouts[name] = Rollout(
            ready_at=now_s + duration, fault=fault, ops=[*(previous.ops if previous else []), op.name]
        )
        return op

    def _fresh_service(self, name: str, now: datetime) -> run_v2.Service:
        self._hash[name] = "".join(self.world.rng.choice(string.ascii_lowercase) for _ in range(10))
        svc = run_v2.Service(name=name, uid=self.world.uuid(), create_time=now, creator=PRINCIPAL)
        svc.urls = [self._stable_url(name)] if not self.world.lb_url else []
        return svc

    def _generate_revision_id(self, name: str, service_id: str, seq: int) -> str:
        """``{service}-{5-digit sequence}-{3 chars}`` as real Cloud Run names them (``…-00001-rvm``)."""
        while True:
            rev_id = f"{service_id}-{seq:05d}-{self.world.lower_alnum(3)}"
            if f"{name}/revisions/{rev_id}" not in self.revisions:
                return rev_id

    def _new_revision(self, service_name: str, rev_id: str, svc: run_v2.Service) -> run_v2.Revision:
        now = self.world.now()
        rev = run_v2.Revision(
            name=f"{service_name}/revisions/{rev_id}",
            uid=self.world.uuid(),
            generation=1,
            create_time=now,
            update_time=now,
            launch_stage=svc.launch_stage,
            service=service_name,
            reconciling=True,
            creator=PRINCIPAL,
            etag=self._etag(),
            conditions=[Condition(type_="Ready", state=CState.CONDITION_RECONCILING, last_transition_time=now)],
        )
        _copy_fields(run_v2.RevisionTemplate.pb(svc.template), run_v2.Revision.pb(rev), REVISION_FIELDS)
        return rev

    def _settled(self, rev: run_v2.Revision, state: RevisionState) -> run_v2.Revision:
        now = self.world.now()
        new = run_v2.Revision(rev)
        new.reconciling = False
        new.observed_generation = new.generation
        if state.readiness is Readiness.READY:
            new.conditions = [
                Condition(type_="Ready", state=CState.CONDITION_SUCCEEDED, last_transition_time=now),
                Condition(type_="ContainerHealthy", state=CState.CONDITION_SUCCEEDED, last_transition_time=now),
            ]
        else:
            reason = _reason_fields(state.reason)
            new.conditions = [
                Condition(
                    type_="Ready",
                    state=CState.CONDITION_FAILED,
                    message=state.message,
                    last_transition_time=now,
                    severity=Condition.Severity.ERROR,
                    **reason,
                ),
                Condition(
                    type_="ContainerHealthy",
                    state=CState.CONDITION_FAILED,
                    message=state.message,
                    last_transition_time=now,
                    severity=Condition.Severity.ERROR,
                    **reason,
                ),
            ]
        log.info("run.revision.settled", revision=rev.name, readiness=state.readiness.value, reason=state.reason)
        return new

    def _waiting(self, name: str) -> bool:
        svc = self.services.get(name)
        if svc is None:
            return False
        needed = [self._latest_created.get(name, "")]
        needed += [f"{name}/revisions/{t.revision}" for t in svc.traffic if t.type_ == REVISION]
        return any(n in self.revisions and self.revisions[n].reconciling for n in needed)

    def _finish_rollout(self, name: str, rollout: Rollout) -> None:
        del self._rollouts[name]
        svc = self.services.get(name)
        if svc is None:
            return
        failure: tuple[int, str, str] | None = None
        latest = self._latest_created.get(name, "")
        if rollout.fault is not None:
            failure = (*rollout.fault, "UNKNOWN")
        else:
            for target in [latest] + [f"{name}/revisions/{t.revision}" for t in svc.traffic if t.type_ == REVISION]:
                failure = self._serving_problem(target)
                if failure is not None:
                    break
        now = self.world.now()
        new = run_v2.Service(svc)
        new.reconciling = False
        if latest:
            new.latest_created_revision = latest
        new.uri, urls = self._service_uris(name)
        new.urls = urls
        if failure is None:
            if latest in self.revisions and ready_state(self.revisions[latest]) == CState.CONDITION_SUCCEEDED:
                new.latest_ready_revision = latest
            new.traffic_statuses = rules.resolve_traffic(
                new.traffic,
                short(new.latest_ready_revision) if new.latest_ready_revision else "",
                {t.tag: self._tag_uri(name, t.tag) for t in new.traffic if t.tag},
            )
            new.observed_generation = new.generation
            new.terminal_condition = Condition(
                type_="Ready", state=CState.CONDITION_SUCCEEDED, last_transition_time=now
            )
            new.conditions = [
                Condition(type_="RoutesReady", state=CState.CONDITION_SUCCEEDED, last_transition_time=now),
                Condition(type_="ConfigurationsReady", state=CState.CONDITION_SUCCEEDED, last_transition_time=now),
            ]
        else:
            # §4.1 "If reconciliation failed, traffic_statuses, observed_generation, and
            # latest_ready_revision will have the state of the last serving revision"
            _code, message, reason = failure
            failed = {"state": CState.CONDITION_FAILED, "message": message, "last_transition_time": now}
            reason_field = {"reason": Condition.CommonReason[reason]}
            new.terminal_condition = Condition(type_="Ready", **failed, **reason_field)
            routes = (
                Condition(type_="RoutesReady", state=CState.CONDITION_SUCCEEDED, last_transition_time=now)
                if new.traffic_statuses
                else Condition(type_="RoutesReady", **failed, **reason_field)
            )
            new.conditions = [routes, Condition(type_="ConfigurationsReady", **failed, **reason_field)]
        self.services[name] = new
        self._end_ops(rollout.ops, new, None if failure is None else (failure[0], failure[1]))
        log.info(
            "run.rollout.finished",
            service=name,
            generation=new.generation,
            ok=failure is None,
            error=None if failure is None else failure[1],
        )

    def _serving_problem(self, rev_name: str) -> tuple[int, str, str] | None:
        """Why ``rev_name`` cannot take traffic: missing, or Failed (None: fine)."""
        if not rev_name:
            return None
        rev = self.revisions.get(rev_name)
        if rev is None:
            # Real operation error (terraform-docs-samples#269): code 13, this text.
            return (
                GRPC_CODE["INTERNAL"],
                f"Revision '{short(rev_name)}' does not exist or is deleted. "
                "Update all traffic to route to currently available revisions.",
                "UNKNOWN",
            )
        if ready_state(rev) == CState.CONDITION_FAILED:
            detail = next((c.message for c in rev.conditions if c.type_ == "Ready"), "")
            message = f"Revision '{short(rev_name)}' is not ready and cannot serve traffic. {detail}".strip()
            return GRPC_CODE["FAILED_PRECONDITION"], message, "REVISION_FAILED"
        return None

    def _end_ops(self, names: list[str], snapshot: Any, error: tuple[int, str] | None) -> None:
        for op_name in names:
            op = self.operations.get(op_name)
            if op is not None and not op.done:
                op.snapshot, op.error, op.done = snapshot, error, True

    def _drop_revision(self, name: str) -> None:
        self.revisions.pop(name, None)
        self._templates.pop(name, None)
        with contextlib.suppress(Exception):
            self.world.runtime.stop(name)

    # ---- internals: operations ---------------------------------------------------------------
    def _new_op(self, method: str, target: str, snapshot: Any, now_s: float, *, follows_rollout: bool) -> Operation:
        project, location, _ = split_name(target)
        op = Operation(
            name=f"projects/{project}/locations/{location}/operations/{self.world.uuid()}",
            method=method,
            target=target,
            ready_at=now_s,
            snapshot=snapshot,
            follows_rollout=follows_rollout,
        )
        self.operations[op.name] = op
        return op

    def _plain_op(
        self,
        method: str,
        target: str,
        snapshot: Any,
        *,
        done: bool = False,
        error: tuple[int, str] | None = None,
        deleting: bool = False,
        duration: float | None = None,
    ) -> Operation:
        """An operation that ends by time alone (deletes, no-op patches, faults, validate-only)."""
        now_s = self.world.clock()
        if duration is None:
            duration = self.world.faults.operation_duration("run", method)
        op = self._new_op(method, target, snapshot, now_s + duration, follows_rollout=False)
        op.error, op.deleting = error, deleting
        if done:
            self._complete(op)
        else:
            self._pending_ops.add(op.name)
        return op

    def _complete(self, op: Operation) -> None:
        self._pending_ops.discard(op.name)
        if op.deleting and isinstance(op.snapshot, run_v2.Service):
            final = run_v2.Service(op.snapshot)
            final.reconciling = False
            final.observed_generation = final.generation
            final.terminal_condition = Condition(
                type_="Ready", state=CState.CONDITION_SUCCEEDED, last_transition_time=self.world.now()
            )
            op.snapshot = final
        op.done = True

    def _take_fault(self, method: str) -> tuple[int, str] | None:
        rule = self.world.faults.take(method, kind="operation")
        return None if rule is None else fault_error(rule.status, rule.message)

    def _etag(self) -> str:
        return self.world.fingerprint()

    # ---- internals: URIs ---------------------------------------------------------------------
    def _stable_url(self, name: str) -> str:
        project, location, service_id = split_name(name)
        return f"https://{service_id}-{project_number(project)}.{location}.run.app"

    def _host_suffix(self, name: str) -> str:
        _, location, _ = split_name(name)
        code = REGION_CODES.get(location) or "".join(part[0] for part in location.split("-")[:2])
        if name not in self._hash:
            self._hash[name] = "".join(self.world.rng.choice(string.ascii_lowercase) for _ in range(10))
        h = self._hash[name]
        return f"{h}-{code}.a.run.app"

    def _service_uris(self, name: str) -> tuple[str, list[str]]:
        """``uri`` and ``urls``: through the local load balancer when one runs
        (``http://SERVICE.localhost:PORT``), else Google's shapes from the real recording."""
        service_id = split_name(name)[2]
        if self.world.lb_url:
            lb = urlsplit(self.world.lb_url)
            uri = f"{lb.scheme}://{service_id}.localhost:{lb.port or (443 if lb.scheme == 'https' else 80)}"
            return uri, [uri]
        uri = f"https://{service_id}-{self._host_suffix(name)}"
        return uri, [self._stable_url(name), uri]

    def _tag_uri(self, name: str, tag: str) -> str:
        """§4.4 tagged revision URLs: ``https://TAG---SERVICE-HASH-REGIONCODE.a.run.app``."""
        service_id = split_name(name)[2]
        if self.world.lb_url:
            lb = urlsplit(self.world.lb_url)
            return f"{lb.scheme}://{tag}---{service_id}.localhost:{lb.port or (443 if lb.scheme == 'https' else 80)}"
        return f"https://{tag}---{service_id}-{self._host_suffix(name)}"

    def _refresh_uris(self) -> None:
        self._uri_base = self.world.lb_url
        for name, svc in list(self.services.items()):
            if not svc.uri:
                continue
            new = run_v2.Service(svc)
            new.uri, urls = self._service_uris(name)
            new.urls = urls
            statuses = []
            for s in new.traffic_statuses:
                s = run_v2.TrafficTargetStatus(s)
                if s.tag:
                    s.uri = self._tag_uri(name, s.tag)
                statuses.append(s)
            new.traffic_statuses = statuses
            self.services[name] = new


def install(world: World) -> State:
    state = State(world)
    world.apis["run"] = state
    return state
