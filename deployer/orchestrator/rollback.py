"""Putting back what a deploy changed, from its journal, newest first.

``Restorer.restore_all(state)`` walks ``journal.restore_targets(state)`` (one target per resource,
holding the pre-image of the FIRST effect on it) and, for each, re-reads the resource, decides, writes
and reads back:

- **Cloud Run service**: the pre-image's spec written back with the CURRENT etag. Its ``traffic``
  exactly as it was, except that a LATEST target is written as a REVISION target pinned to the revision
  LATEST resolved to in the pre-image (after the candidate became Ready, LATEST would route users to
  it; gcp-facts §4.1 "Allocates instances to the Service's latest ready Revision"): the pin is
  journaled and reported. Its ``template`` is the pre-image's with ``revision`` set to the pre-image's
  ``latestCreatedRevision``, so that no new revision is made. Doubt: Google documents that a reused
  revision name with a *different* configuration is a 409 (§4.2, §4.5), not what happens with the
  same configuration; Knative (which Cloud Run implements) treats it as that existing revision, and
  the local cloud does the same. Done means the effective traffic (``trafficStatuses``: revision,
  percent, tag) equals the pre-image's.
  If the service's etag is not the one this deploy last left, someone else changed it during the
  deploy: it is left alone (never overwritten) and reported as changed by someone else — unless it
  already reads as the restore would leave it (traffic, revision, labels, annotations: a restore whose
  answer was lost, retried by ``deployer resume``), which is ``skipped``.
- **Backend service**: the pre-image's fields written back with the current fingerprint (a merge
  PATCH of the fields that differ; a PUT of the whole pre-image when a field must be cleared, which a
  merge patch sent through the client cannot express). Done means it reads back equal to the pre-image
  apart from server-held fields (fingerprint, id, …). Before writing: its fingerprint is the one this
  deploy's last write left, or it reads exactly as that write intended (the pre-image that write read
  with its fields over it); anything else is someone else's change: left alone and reported.
- **Cloud Armor rule**: absent before → ``removeRule``; removed by the deploy → ``addRule`` of the
  pre-image; changed → ``patchRule`` with the pre-image (fields it did not have cleared through the
  update mask). Done means the rule reads back equal to the pre-image. Before writing: it reads as this
  deploy's last write on it intended (rules carry no fingerprint of their own, gcp-facts §5.1); anything
  else is someone else's change: left alone and reported.

Every kind: a resource already equal to its pre-image is ``skipped`` (nothing written). A resource that
a journal-only undo (``deployer resume``) retries after a first attempt failed is judged the same way.

Secret env values are masked in the journal; the in-process rollback uses the pre-images it read
(``memory``), and a rollback from the journal alone (resume, issue 7) fills masked values from the
pre-image's own revision, which still holds them.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from deployer.errors import CloudError, DeployerError
from deployer.gcp.cloudrun import CloudRun
from deployer.gcp.compute import BACKEND_OUTPUT_ONLY, RULE_OUTPUT_ONLY, Compute, new_request_id
from deployer.orchestrator import traffic
from deployer.orchestrator.journal import EffectState, Journal, JournalState, RestoreTarget, restore_targets
from deployer.orchestrator.service_status import STATUS_FIELDS
from deployer.plan import ARMOR_RULE, BACKEND_SERVICE, RUN_SERVICE

JSON = dict[str, Any]

_log = structlog.get_logger("deployer.rollback")
_RULE_ID = re.compile(
    r"^projects/(?P<project>[^/]+)/global/securityPolicies/(?P<policy>[^/]+)/rules/(?P<priority>\d+)$"
)
_BS_ID = re.compile(r"^projects/(?P<project>[^/]+)/global/backendServices/(?P<name>[^/]+)$")


@dataclass(frozen=True)
class Restored:
    """What happened to one resource."""

    kind: str
    resource_id: str
    stage: str  # done | skipped (already as before) | failed
    detail: str
    foreign: bool = False
    pinned: str | None = None
    hint: str | None = None

    @property
    def ok(self) -> bool:
        return self.stage in ("done", "skipped")

    def to_json(self) -> JSON:
        out: JSON = {"kind": self.kind, "resource": self.resource_id, "stage": self.stage, "detail": self.detail}
        if self.foreign:
            out["changed_by_someone_else"] = True
        if self.pinned:
            out["pinned_latest_to"] = self.pinned
        if self.hint:
            out["hint"] = self.hint
        return out


@dataclass
class RollbackReport:
    items: list[Restored] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(i.ok for i in self.items)

    @property
    def foreign(self) -> bool:
        return any(i.foreign for i in self.items)

    @property
    def pins(self) -> list[str]:
        return [i.pinned for i in self.items if i.pinned]

    @property
    def remaining(self) -> list[str]:
        return [f"{i.kind} {i.resource_id}: {i.detail}" for i in self.items if not i.ok]

    @property
    def hints(self) -> list[str]:
        return [i.hint for i in self.items if not i.ok and i.hint]


def strip(doc: Mapping[str, Any] | None, fields: Sequence[str]) -> JSON | None:
    return None if doc is None else {k: copy.deepcopy(v) for k, v in doc.items() if k not in fields}


def fill_masked(pre: JSON, masked_paths: Sequence[str], revision: Mapping[str, Any] | None) -> JSON:
    """Put back secret env values the journal masked (``template.containers[0].env[2].value``), from
    the revision that the pre-image's template made (it holds them under ``containers[…]``)."""
    if not masked_paths:
        return pre
    if revision is None:
        raise DeployerError("the pre-image's secret env values are masked and its revision is gone")
    out = copy.deepcopy(pre)
    for path in masked_paths:
        m = re.fullmatch(r"template\.containers\[(\d+)\]\.env\[(\d+)\]\.value", path)
        if m is None:
            raise DeployerError(f"cannot restore masked value at {path}")
        ci, ei = int(m.group(1)), int(m.group(2))
        out["template"]["containers"][ci]["env"][ei]["value"] = revision["containers"][ci]["env"][ei]["value"]
    return out


def service_restore_body(pre: Mapping[str, Any]) -> tuple[JSON, str | None]:
    """The UpdateService body that puts ``pre`` back, and the LATEST pin it needed."""
    body = {k: copy.deepcopy(v) for k, v in pre.items() if k not in STATUS_FIELDS}
    restore = traffic.restore(pre)
    body["traffic"] = restore.traffic
    template = dict(body.get("template") or {})
    created = traffic.short(pre.get("latestCreatedRevision")) or template.get("revision")
    if created:
        template["revision"] = created
    body["template"] = template
    return body, restore.pinned


def backend_restore_write(current: Mapping[str, Any], pre: Mapping[str, Any]) -> tuple[str, JSON] | None:
    """How to put a backend service back: None (already equal), ("patch", changed fields) or
    ("update", the whole pre-image) when a field must be cleared."""
    now = strip(current, BACKEND_OUTPUT_ONLY) or {}
    before = strip(pre, BACKEND_OUTPUT_ONLY) or {}
    if now == before:
        return None
    must_clear = [k for k in now if k not in before] + [
        k for k, v in before.items() if v in ([], {}) and now.get(k) not in ([], {}, None)
    ]
    if must_clear:
        body = dict(before)
        if _serverless_backends(pre):
            # gcp-facts §2.1: timeoutSec is refused for serverless NEG backends, even unchanged (doubt:
            # whether Google renders one on GET is not recorded; it is never sent back).
            body.pop("timeoutSec", None)
        return "update", body
    return "patch", {k: v for k, v in before.items() if now.get(k) != v}


def backend_intended_after(effect: EffectState) -> JSON | None:
    """The backend service as ``effect`` meant to leave it: the whole body of an ``update``; the pre-image it
    read with the patched fields over it for a ``patch`` (a merge patch replaces each top-level field it
    names). ``None`` when the journal cannot tell (no pre-image)."""
    intended = effect.intended or {}
    if (effect.method or "").endswith(".update"):
        return dict(intended)
    if effect.pre_image is None:
        return None
    return {**effect.pre_image, **intended}


def _serverless_backends(bs: Mapping[str, Any]) -> bool:
    return any(
        "/regions/" in str(b.get("group", "")) and "networkEndpointGroups" in str(b.get("group", ""))
        for b in bs.get("backends") or []
    )


def rule_restore_write(
    current: Mapping[str, Any] | None, pre: Mapping[str, Any] | None
) -> tuple[str, JSON | None, list[str]] | None:
    """How to put a rule back: None (already equal), ("remove", None, []), ("add", rule, []) or
    ("patch", rule, fields to clear)."""
    now = strip(current, RULE_OUTPUT_ONLY)
    before = strip(pre, RULE_OUTPUT_ONLY)
    if now == before:
        return None
    if before is None:
        return "remove", None, []
    if now is None:
        return "add", before, []
    return "patch", before, sorted(k for k in now if k not in before)


class Restorer:
    """Restores the targets of one journal. Sync (the orchestrator runs it on a thread)."""

    def __init__(
        self,
        run: CloudRun,
        compute: Compute,
        journal: Journal,
        *,
        memory: Mapping[str, Mapping[str, Any] | None] | None = None,
        known_etag: str | None = None,
        known_service: Mapping[str, Any] | None = None,
    ) -> None:
        self.run = run
        self.compute = compute
        self.journal = journal
        self.memory = dict(memory or {})
        self.known_etag = known_etag
        # The service as this deploy last left it (in-process only): tells someone else's fields apart.
        self.known_service = dict(known_service) if known_service is not None else None

    def restore_all(self, state: JournalState | None = None) -> RollbackReport:
        report = RollbackReport()
        for target in restore_targets(state or self.journal.state):
            self.journal.rollback_step(target, "started")
            try:
                item = self._restore(target)
            except (CloudError, DeployerError) as exc:
                item = Restored(target.kind, target.resource_id, "failed", str(exc), hint=self._hint(target))
                self.journal.rollback_step(target, "failed", error=exc)
            else:
                detail: dict[str, Any] = {"detail": item.detail}
                if item.pinned:
                    detail["pinned_latest_to"] = item.pinned
                if item.foreign:
                    detail["changed_by_someone_else"] = True
                if item.stage == "failed":
                    self.journal.rollback_step(target, "failed", error=DeployerError(item.detail), **detail)
                else:
                    self.journal.rollback_step(target, item.stage, **detail)  # type: ignore[arg-type]
            _log.info(
                "rollback.resource",
                kind=item.kind,
                resource=item.resource_id,
                stage=item.stage,
                detail=item.detail,
                pinned_latest_to=item.pinned,
                foreign=item.foreign,
            )
            report.items.append(item)
        return report

    # ---- per kind ------------------------------------------------------------------------------
    def _pre_image(self, target: RestoreTarget) -> JSON | None:
        first = target.effects[0]
        if first in self.memory:
            found = self.memory[first]
            return copy.deepcopy(dict(found)) if found is not None else None
        return copy.deepcopy(target.pre_image) if target.pre_image is not None else None

    def _restore(self, target: RestoreTarget) -> Restored:
        if target.kind == RUN_SERVICE:
            return self._service(target)
        if target.kind == BACKEND_SERVICE:
            return self._backend(target)
        if target.kind == ARMOR_RULE:
            return self._rule(target)
        return Restored(target.kind, target.resource_id, "failed", f"deployer cannot restore a {target.kind}")

    def _service(self, target: RestoreTarget) -> Restored:
        rid = target.resource_id
        pre = self._pre_image(target)
        if pre is None:
            return Restored(RUN_SERVICE, rid, "failed", "the service did not exist before; deployer never creates one")
        current = self.run.get_service(rid)
        if current is None:
            return Restored(RUN_SERVICE, rid, "failed", "the service no longer exists", hint=self._hint(target, pre))
        expected = self.known_etag or target.expected_precondition
        theirs: JSON = {}
        if expected and current.get("etag") != expected and not target.outcome_unknown:
            kept = self._theirs(target, current, pre)
            if kept is not None:  # someone changed only fields this deploy does not own: keep them
                theirs = kept
        if expected and current.get("etag") != expected and not target.outcome_unknown and not theirs:
            if self._already_back(target, current, pre):  # a restore (an earlier attempt's) whose answer was lost
                return Restored(RUN_SERVICE, rid, "skipped", "already back as its pre-image (traffic and revision)")
            return Restored(
                RUN_SERVICE,
                rid,
                "failed",
                f"changed by someone else during the deploy (etag {expected} → {current.get('etag')}); "
                "deployer did not overwrite it",
                foreign=True,
                hint=self._hint(target, pre),
            )
        if current.get("etag") == pre.get("etag"):
            return Restored(RUN_SERVICE, rid, "skipped", "unchanged since its pre-image was read")
        if target.masked_paths and target.effects[0] not in self.memory:
            revision = self.run.get_revision(str(pre.get("latestCreatedRevision") or ""))
            pre = fill_masked(pre, target.masked_paths, revision)
        want = traffic.effective(pre)
        body, pinned = service_restore_body(pre)
        body.update(theirs)
        op = self.run.update_service({**body, "name": rid}, etag=str(current.get("etag")))
        result = self.run.wait(op)
        self.known_etag = result.get("etag")
        got = traffic.effective(result)
        if not traffic.same_effective(got, want):
            return Restored(
                RUN_SERVICE,
                rid,
                "failed",
                f"traffic reads back {_show(got)}, not the pre-image's {_show(want)}",
                hint=self._hint(target, pre),
            )
        note = f"traffic back to {_show(want)}"
        if pinned:
            note += f" (LATEST pinned to {pinned})"
        if theirs:
            note += f"; someone else's change to {', '.join(sorted(theirs))} kept"
        return Restored(RUN_SERVICE, rid, "done", note, pinned=pinned)

    def _already_back(self, target: RestoreTarget, current: Mapping[str, Any], pre: Mapping[str, Any]) -> bool:
        """The service reads as restoring ``pre`` would leave it: the same effective traffic and traffic spec
        (LATEST pinned as the restore pins it), the pre-image's revision as template, its labels and
        annotations. Only then may an etag this deploy did not leave be taken as nobody else's change."""
        if not traffic.same_effective(traffic.effective(current), traffic.effective(pre)):
            return False
        body, _ = service_restore_body(pre)
        revision = (body.get("template") or {}).get("revision")
        if revision and traffic.short((current.get("template") or {}).get("revision")) != traffic.short(revision):
            return False
        if traffic.norm_spec(current.get("traffic") or []) != traffic.norm_spec(body.get("traffic") or []):
            return False
        return all((current.get(k) or {}) == (pre.get(k) or {}) for k in ("labels", "annotations"))

    def _last_landed(self, target: RestoreTarget) -> EffectState | None:
        """The newest effect on the target's resource that may have landed (applied, or outcome unknown)."""
        state = self.journal.state
        landed = [state.effects[e] for e in target.effects if state.effects[e].outcome in ("applied", "unknown")]
        return max(landed, key=lambda e: e.started_seq or 0) if landed else None

    def _foreign_backend(self, target: RestoreTarget, current: Mapping[str, Any]) -> bool:
        """Someone else wrote the backend service since this deploy's last write on it."""
        if target.expected_precondition and current.get("fingerprint") == target.expected_precondition:
            return False
        last = self._last_landed(target)
        after = backend_intended_after(last) if last is not None else None
        if after is None:
            return False  # the journal cannot tell: put back as before (the pre-image check above still holds)
        return backend_restore_write(current, after) is not None

    def _foreign_rule(self, target: RestoreTarget, current: Mapping[str, Any] | None) -> bool:
        """The rule reads neither as this deploy's last write on it intended (nor as its pre-image: checked first)."""
        last = self._last_landed(target)
        if last is None:
            return False
        return rule_restore_write(current, last.intended) is not None

    def _theirs(self, target: RestoreTarget, current: Mapping[str, Any], pre: Mapping[str, Any]) -> JSON | None:
        """When the service's etag moved under the deploy: the fields someone else changed, to keep in the
        restore — or ``None`` (leave the service alone) when they touched what the deploy owns: the traffic,
        the template, the ``deployer.dev/`` annotations (compared with what its last applied update
        intended). Without the service as the deploy left it (a resume), labels, description and other
        annotations are taken as theirs."""
        state = self.journal.state
        applied = [state.effects[e] for e in target.effects if state.effects[e].outcome == "applied"]
        if not applied:
            return None
        last = max(applied, key=lambda e: e.started_seq or 0)
        intended = last.intended or {}
        if "traffic" in intended and traffic.norm_spec(current.get("traffic") or []) != traffic.norm_spec(
            intended.get("traffic") or []
        ):
            return None
        revision = intended.get("template.revision")
        if revision and traffic.short((current.get("template") or {}).get("revision")) != traffic.short(revision):
            return None
        annotations = current.get("annotations") or {}
        if any(annotations.get(k) != v for k, v in (intended.get("annotations") or {}).items()):
            return None
        known = self.known_service
        out: JSON = {}
        if known is None:
            for key in ("labels", "description"):
                if current.get(key) != pre.get(key) and key in current:
                    out[key] = copy.deepcopy(current[key])
            ours = {k: v for k, v in (pre.get("annotations") or {}).items() if k.startswith("deployer.dev/")}
            others = {k: v for k, v in annotations.items() if not k.startswith("deployer.dev/")}
            if others != {k: v for k, v in (pre.get("annotations") or {}).items() if not k.startswith("deployer.dev/")}:
                out["annotations"] = {**others, **ours}
            return out or None
        for key in sorted(set(current) | set(known)):
            if key in STATUS_FIELDS or current.get(key) == known.get(key):
                continue
            if key in ("traffic", "template"):
                return None
            if key in ("labels", "annotations"):
                merged = dict(pre.get(key) or {})
                now, left = current.get(key) or {}, known.get(key) or {}
                for k in set(now) | set(left):
                    if now.get(k) != left.get(k):
                        if k in now:
                            merged[k] = now[k]
                        else:
                            merged.pop(k, None)
                out[key] = merged
            else:
                out[key] = copy.deepcopy(current.get(key))
        return out or None

    def _backend(self, target: RestoreTarget) -> Restored:
        rid = target.resource_id
        m = _BS_ID.match(rid)
        pre = self._pre_image(target)
        if m is None or pre is None:
            return Restored(BACKEND_SERVICE, rid, "failed", "deployer cannot restore this backend service")
        name = m.group("name")
        current = self.compute.get_backend_service(name)
        if current is None:
            return Restored(BACKEND_SERVICE, rid, "failed", "the backend service no longer exists")
        write = backend_restore_write(current, pre)
        if write is None:
            return Restored(BACKEND_SERVICE, rid, "skipped", "already as before the deploy")
        if self._foreign_backend(target, current):
            return Restored(
                BACKEND_SERVICE,
                rid,
                "failed",
                f"changed by someone else since the deploy wrote it (fingerprint {current.get('fingerprint')}); "
                "deployer did not overwrite it",
                foreign=True,
                hint=self._hint(target),
            )
        verb, body = write
        fingerprint = str(current.get("fingerprint") or "")
        op = self.compute.write_backend_service(verb, name, body, fingerprint=fingerprint, request_id=new_request_id())
        self.compute.wait(op)
        after = self.compute.get_backend_service(name)
        if backend_restore_write(after or {}, pre) is not None:
            return Restored(
                BACKEND_SERVICE, rid, "failed", "reads back different from its pre-image", hint=self._hint(target)
            )
        fields = ", ".join(sorted(body)) if verb == "patch" else "the whole resource"
        return Restored(BACKEND_SERVICE, rid, "done", f"{fields} back as before ({verb})")

    def _rule(self, target: RestoreTarget) -> Restored:
        rid = target.resource_id
        m = _RULE_ID.match(rid)
        if m is None:
            return Restored(ARMOR_RULE, rid, "failed", "not a Cloud Armor rule id")
        policy, priority = m.group("policy"), int(m.group("priority"))
        pre = self._pre_image(target)
        current = self.compute.get_rule(policy, priority)
        write = rule_restore_write(current, pre)
        if write is None:
            return Restored(ARMOR_RULE, rid, "skipped", "already as before the deploy")
        if self._foreign_rule(target, current):
            return Restored(
                ARMOR_RULE,
                rid,
                "failed",
                f"rule {priority} was changed by someone else since the deploy wrote it; deployer did not overwrite it",
                foreign=True,
                hint=self._hint(target),
            )
        verb, body, clear = write
        if verb == "remove":
            op = self.compute.remove_rule(policy, priority)
        elif verb == "add":
            assert body is not None
            op = self.compute.add_rule(policy, body)
        else:
            assert body is not None
            op = self.compute.patch_rule(policy, priority, body, clear=clear)
        self.compute.wait(op)
        if rule_restore_write(self.compute.get_rule(policy, priority), pre) is not None:
            return Restored(
                ARMOR_RULE, rid, "failed", "reads back different from its pre-image", hint=self._hint(target)
            )
        what = {"remove": "removed (it was added)", "add": "added back", "patch": "patched back"}[verb]
        return Restored(ARMOR_RULE, rid, "done", f"rule {priority} {what}")

    # ---- what a person can run -------------------------------------------------------------------
    def _hint(self, target: RestoreTarget, pre: Mapping[str, Any] | None = None) -> str:
        if target.kind == RUN_SERVICE and pre is not None:
            parts = target.resource_id.split("/")
            project, region, service = parts[1], parts[3], parts[5]
            split = traffic.split(traffic.effective(pre))
            to = ",".join(f"{r}={p}" for r, p in split.items())
            return (
                f"gcloud run services update-traffic {service} --project {project} --region {region} "
                f"--to-revisions {to}"
            )
        if target.kind == ARMOR_RULE:
            m = _RULE_ID.match(target.resource_id)
            if m and target.pre_image is None:
                return (
                    f"gcloud compute security-policies rules delete {m.group('priority')} "
                    f"--security-policy {m.group('policy')} --project {m.group('project')}"
                )
        return f"restore {target.resource_id} from its pre-image in the journal {self.journal.where}"


def _show(served: Sequence[traffic.Served]) -> str:
    return ", ".join(f"{s.revision} {s.percent}%" + (f" tag {s.tag}" if s.tag else "") for s in served) or "nothing"
