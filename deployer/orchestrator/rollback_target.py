"""Which revision an emergency rollback moves traffic to, and what its update writes (pure).

``choose_target`` (the order: ``--to``; the journal; the ``deployer.dev/previous-revision``
annotation; the revision tagged ``previous``; the newest Ready revision before the serving one — see
``emergency.py``), ``template_from_revision``, ``rollback_traffic`` and ``rollback_body`` (the
UpdateService body), ``want_of`` (the effective traffic a list leads to) and ``already_moved`` (a
resumed rollback whose update landed). Values in, values out: REST JSON as the rest of deployer uses.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from deployer.config import DeployConfig
from deployer.orchestrator import traffic
from deployer.orchestrator.journal import ADMIN_OPERATIONS, JournalState
from deployer.orchestrator.service_status import STATUS_FIELDS
from deployer.plan import ANNOTATION_DEPLOY_ID, ANNOTATION_LAST_GOOD, ANNOTATION_PREVIOUS, RUN_SERVICE

JSON = dict[str, Any]

ROLLBACK = "rollback"  # the decision that records the target
PREVIOUS_TAG = "previous"


def service_key(config: DeployConfig) -> str:
    """The service's name in the state store: ``deploy.state_key`` (not imported: deploy.py brings the
    gate, rich and more that the emergency path must not pay for)."""
    return f"{config.project}/{config.region}/{config.service.name}"


# ---- choosing the target (pure) ----------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where traffic goes, why there, and what to restore from."""

    revision: str | None  # None: no revision to move to (nothing serves, or nothing was found)
    source: str  # "--to" | "journal" | "annotations" | "previous tag" | "previous revision" | "none"
    journal_id: str | None = None  # the deploy (or earlier rollback) this undoes
    pre_image: JSON | None = None  # the service before that deploy (journal source only)
    masked_paths: tuple[str, ...] = ()
    why: str = ""

    @property
    def needs_revision_template(self) -> bool:
        """The template to write comes from the target revision (no pre-image holds it)."""
        return self.revision is not None and self.pre_image is None


def _service_pre_image(state: JournalState) -> tuple[JSON | None, tuple[str, ...]]:
    """The pre-image of the first Cloud Run service effect that may have landed (what to go back to)."""
    for e in state.effects.values():  # in pre-image order
        if e.kind == RUN_SERVICE and e.started and e.outcome != "not_applied":
            return (copy.deepcopy(e.pre_image) if e.pre_image is not None else None), e.masked_paths
    return None, ()


def _rollback_target(state: JournalState) -> str | None:
    for d in reversed(state.decisions):
        if d.decision == ROLLBACK and d.detail.get("to_revision"):
            return str(d.detail["to_revision"])
    return None


def choose_target(
    service: Mapping[str, Any],
    journals: Sequence[JournalState],
    *,
    to_revision: str | None = None,
    revisions: Sequence[Mapping[str, Any]] | None = None,
) -> Target:
    """The rollback target (module docstring): ``journals`` newest first, ``revisions`` only needed
    for the last fallback (``None``: not read yet — the caller reads them when ``source`` says so)."""
    if to_revision:
        return Target(traffic.short(to_revision), "--to", why="named with --to")
    for state in journals:
        op = state.started.operation
        if op in ADMIN_OPERATIONS:
            continue
        if op == "rollback":
            if state.status in ("failed",):
                continue  # it changed nothing
            again = _rollback_target(state)
            if again:
                return Target(
                    again, "journal", journal_id=state.deploy_id, why=f"where rollback {state.deploy_id} moved it"
                )
            continue
        if state.status in ("failed", "rolled_back"):
            continue  # it left everything as it found it
        pre, masked = _service_pre_image(state)
        if pre is None:
            if state.effects:  # an infra-only deploy: traffic stays where it is
                current = traffic.main_revision(traffic.effective(service))
                return Target(
                    current,
                    "journal",
                    journal_id=state.deploy_id,
                    why=f"deploy {state.deploy_id} did not change the service; it keeps serving",
                )
            continue
        main = traffic.main_revision(traffic.effective(pre))
        return Target(
            main,
            "journal",
            journal_id=state.deploy_id,
            pre_image=pre,
            masked_paths=masked,
            why=f"served before deploy {state.deploy_id}",
        )
    serving = traffic.main_revision(traffic.effective(service))
    annotations = service.get("annotations") or {}
    previous = annotations.get(ANNOTATION_PREVIOUS)
    if previous and traffic.short(previous) != serving:
        return Target(traffic.short(previous), "annotations", why=f"the service's {ANNOTATION_PREVIOUS}")
    tagged = traffic.tags(traffic.effective(service)).get(PREVIOUS_TAG)
    if tagged and tagged != serving:
        return Target(tagged, "previous tag", why=f"the revision tagged {PREVIOUS_TAG!r}")
    if revisions is None:
        return Target(None, "previous revision", why="needs the service's revisions")
    return _previous_revision(serving, revisions)


def _ready(condition: Mapping[str, Any]) -> bool:
    return condition.get("type") == "Ready" and str(condition.get("state", "")).endswith("SUCCEEDED")


def _previous_revision(serving: str | None, revisions: Sequence[Mapping[str, Any]]) -> Target:
    by_name = {traffic.short(r.get("name")): r for r in revisions}
    now = by_name.get(serving or "")
    cutoff = str((now or {}).get("createTime") or "~")
    ready = [
        r
        for r in revisions
        if traffic.short(r.get("name")) != serving
        and str(r.get("createTime") or "") < cutoff
        and any(
            c.get("type") == "Ready" and str(c.get("state", "")).endswith("SUCCEEDED")
            for c in r.get("conditions") or []
        )
    ]
    if not ready:
        return Target(None, "none", why=f"no Ready revision older than {serving or 'the serving one'}")
    best = max(ready, key=lambda r: str(r.get("createTime") or ""))
    return Target(traffic.short(best.get("name")), "previous revision", why="the newest Ready revision before it")


# ---- what is written (pure) ----------------------------------------------------------------------------

# RevisionTemplate fields a Revision carries under the same name (run_v2 revision.proto / revision_template.proto).
_TEMPLATE_FIELDS = (
    "labels",
    "annotations",
    "scaling",
    "vpcAccess",
    "timeout",
    "serviceAccount",
    "containers",
    "volumes",
    "executionEnvironment",
    "encryptionKey",
    "maxInstanceRequestConcurrency",
    "serviceMesh",
    "encryptionKeyRevocationAction",
    "encryptionKeyShutdownDuration",
    "sessionAffinity",
    "nodeSelector",
    "gpuZonalRedundancyDisabled",
)
# gcp-facts §4.5: v2 rejects labels/annotations in these namespaces; a revision may carry system ones.
_SYSTEM_PREFIXES = ("run.googleapis.com/", "cloud.googleapis.com/", "serving.knative.dev/", "autoscaling.knative.dev/")


def template_from_revision(revision: Mapping[str, Any]) -> JSON:
    """The template that made ``revision`` (its own name kept, so no new revision is created).

    Doubt: Google does not document re-sending a revision's own template under its name; Knative treats
    it as that revision (rollback.py says the same), and a different configuration is a 409 (§4.5)."""
    # A false boolean is the default: a revision renders one (e.g. gpuZonalRedundancyDisabled) that its
    # template never set, and sending it would be "a different configuration" (409, §4.5).
    template: JSON = {
        k: copy.deepcopy(revision[k]) for k in _TEMPLATE_FIELDS if k in revision and revision[k] is not False
    }
    for key in ("labels", "annotations"):
        if key in template:
            template[key] = {k: v for k, v in template[key].items() if not k.startswith(_SYSTEM_PREFIXES)}
            if not template[key]:
                del template[key]
    template["revision"] = traffic.short(revision.get("name"))
    return template


def rollback_traffic(base: Sequence[Mapping[str, Any]], latest_ready: str, target: str) -> list[JSON]:
    """``base`` (the pre-image's traffic, or the live one) with LATEST pinned, 100 % on ``target`` and
    every tag kept at 0 %. When ``base`` already sends everything to ``target`` it is written exactly."""
    pinned, _ = traffic.pin_latest(base, latest_ready) if base else ([], None)
    served = {traffic.short(e.get("revision")): 0 for e in pinned}
    for e in pinned:
        served[traffic.short(e.get("revision"))] += int(e.get("percent") or 0)
    if {r: p for r, p in served.items() if p} == {target: 100}:
        return [dict(e) for e in pinned]
    out = [traffic.target(target, 100)]
    for e in pinned:
        if e.get("tag"):
            out.append(traffic.target(traffic.short(e.get("revision")), 0, str(e["tag"])))
    return out


norm_traffic = traffic.norm_spec


def already_moved(
    current: Mapping[str, Any], new_traffic: Sequence[Mapping[str, Any]], template: Mapping[str, Any], rid: str
) -> bool:
    """The service already holds this rollback's update (a resumed rollback whose update landed)."""
    annotations = current.get("annotations") or {}
    return (
        not current.get("reconciling")
        and annotations.get(ANNOTATION_DEPLOY_ID) == rid
        and traffic.short((current.get("template") or {}).get("revision")) == traffic.short(template.get("revision"))
        and norm_traffic(current.get("traffic") or []) == norm_traffic(new_traffic)
        and traffic.same_effective(traffic.effective(current), want_of(new_traffic))
    )


def want_of(traffic_list: Sequence[Mapping[str, Any]]) -> list[traffic.Served]:
    """The effective traffic a REVISION-only traffic list leads to."""
    return [
        traffic.Served(traffic.short(e.get("revision")), int(e.get("percent") or 0), str(e.get("tag") or ""))
        for e in traffic_list
        if int(e.get("percent") or 0) or e.get("tag")
    ]


def rollback_body(
    live: Mapping[str, Any], target: Target, *, template: Mapping[str, Any], rollback_id: str
) -> tuple[JSON, list[JSON]]:
    """The UpdateService body and the traffic it writes (see the module docstring)."""
    assert target.revision is not None
    if target.pre_image is not None:
        pre = target.pre_image
        body = {k: copy.deepcopy(v) for k, v in pre.items() if k not in STATUS_FIELDS}
        base = pre.get("traffic") or []
        latest = traffic.short(pre.get("latestReadyRevision"))
    else:
        body = {k: copy.deepcopy(v) for k, v in live.items() if k not in STATUS_FIELDS}
        base = live.get("traffic") or []
        latest = traffic.short(live.get("latestReadyRevision"))
    new_traffic = rollback_traffic(base, latest, target.revision)
    annotations = {k: v for k, v in (live.get("annotations") or {}).items() if not k.startswith("deployer.dev/")}
    annotations[ANNOTATION_DEPLOY_ID] = rollback_id
    annotations[ANNOTATION_LAST_GOOD] = target.revision
    body["annotations"] = annotations
    if "labels" in live or "labels" in body:
        body["labels"] = copy.deepcopy(live.get("labels") or {})
    body["template"] = copy.deepcopy(dict(template))
    body["traffic"] = new_traffic
    return body, new_traffic
