"""The plan: what a deploy will change, as a value (architecture.md "The plan is a value").

- ``Action``: the closed set of things a change can do (create, update, delete, no-op).
- ``Change``: one resource, its action, its REST-shaped ``before`` (as observed) and ``after`` (as
  desired), and the ``precondition`` (etag / fingerprint) of ``before`` it may only be applied over.
- ``Plan``: the changes plus when and from which config it was made and every precondition it was
  made against. ``deploy --plan FILE`` applies exactly it and refuses when ``moved()`` is not empty
  (a stale plan); JSON round-trips exactly (``to_json`` / ``from_json``).
- ``diff_fields``: the field-level difference of two REST-shaped documents, for the readable diff.

All pure: no clock (``created_at`` is given), no I/O.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError, model_validator

from deployer import facts
from deployer.errors import PlanFileError
from deployer.model import DesiredState, Observed
from deployer.redact import NO_MASK, SecretMask, is_masked

PLAN_FORMAT: Literal[1] = 1
PLAN_FILE_MAX_BYTES = 16 * 1024 * 1024  # far above any plan; stops `--plan /dev/zero`

# Resource kinds (``Change.kind``): API family, then the REST collection's singular name.
RUN_SERVICE = "run.service"
BACKEND_SERVICE = "compute.backendService"
SECURITY_POLICY = "compute.securityPolicy"
ARMOR_RULE = "armor.rule"
URL_MAP = "compute.urlMap"


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    NOOP = "no-op"


_SYMBOL = {Action.CREATE: "+", Action.UPDATE: "~", Action.DELETE: "-", Action.NOOP: "="}


# ---- field-level diff ----------------------------------------------------------------------------

PathPart = str | int


class FieldDiff(BaseModel):
    """One field that differs. ``path`` is dict keys and list indexes from the resource's root."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: tuple[PathPart, ...]
    kind: Literal["added", "removed", "changed"]
    before: Any = None
    after: Any = None

    def path_str(self) -> str:
        out = ""
        for part in self.path:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
        return out or "(root)"

    def render(self) -> str:
        if self.kind == "added":
            return f"+ {self.path_str()}: {_show(self.after)}"
        if self.kind == "removed":
            return f"- {self.path_str()}: {_show(self.before)}"
        return f"~ {self.path_str()}: {_show(self.before)} → {_show(self.after)}"


def _show(value: Any) -> str:
    """The whole value, never abbreviated: a plan shows exactly what it will write (a Cloud Armor
    expression, an env value), and ``status --json`` drift carries these strings too. A long line is
    the renderer's to fold (rich wraps it), never this function's to cut."""
    return value if is_masked(value) else json.dumps(value, ensure_ascii=False, sort_keys=False)


def _same(a: Any, b: Any) -> bool:
    """JSON equality: ``true`` is not ``1``, but ``1`` is ``1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and a == b


def diff_fields(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> list[FieldDiff]:
    """Every leaf-level difference from ``before`` to ``after`` (``None`` = the resource is absent).

    Dicts are compared key by key (``before``'s key order, then keys only ``after`` has), lists index
    by index (extra trailing items are added or removed). A value whose type changes (a dict becoming
    a string, say) is one ``changed`` entry at that path.
    """
    out: list[FieldDiff] = []
    _diff(dict(before or {}), dict(after or {}), (), out)
    return out


def _diff(b: Any, a: Any, path: tuple[PathPart, ...], out: list[FieldDiff]) -> None:
    if isinstance(b, Mapping) and isinstance(a, Mapping):
        for key in [*b, *(k for k in a if k not in b)]:
            if key not in a:
                out.append(FieldDiff(path=(*path, key), kind="removed", before=b[key]))
            elif key not in b:
                out.append(FieldDiff(path=(*path, key), kind="added", after=a[key]))
            else:
                _diff(b[key], a[key], (*path, key), out)
        return
    if isinstance(b, list) and isinstance(a, list):
        for i in range(max(len(b), len(a))):
            if i >= len(a):
                out.append(FieldDiff(path=(*path, i), kind="removed", before=b[i]))
            elif i >= len(b):
                out.append(FieldDiff(path=(*path, i), kind="added", after=a[i]))
            else:
                _diff(b[i], a[i], (*path, i), out)
        return
    if not _same(b, a):
        out.append(FieldDiff(path=path, kind="changed", before=b, after=a))


# ---- changes and plans ---------------------------------------------------------------------------


class Change(BaseModel):
    """One resource's change. ``id`` is the resource's full name (``projects/p/global/...``), or for
    a Cloud Armor rule ``{policy name}/rules/{priority}``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str
    id: str
    action: Action
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    precondition: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> Change:
        want_before = self.action is not Action.CREATE
        want_after = self.action is not Action.DELETE
        if (self.before is not None) != want_before or (self.after is not None) != want_after:
            raise ValueError(
                f"{self.action.value} {self.kind} {self.id}: before must be "
                f"{'present' if want_before else 'absent'} and after {'present' if want_after else 'absent'}"
            )
        if not self.kind or not self.id:
            raise ValueError("a change needs a kind and an id")
        return self

    @property
    def key(self) -> str:
        """``kind:id``, the key of this resource in ``Plan.preconditions``."""
        return f"{self.kind}:{self.id}"

    def diff(self) -> list[FieldDiff]:
        return diff_fields(self.before, self.after)

    def masked(self, mask: SecretMask) -> Change:
        before, _ = mask.apply(self.kind, self.before)
        after, _ = mask.apply(self.kind, self.after)
        return self.model_copy(update={"before": before, "after": after})

    def summary(self, mask: SecretMask = NO_MASK) -> str:
        """A header line and one line per differing field (secret env values masked by ``mask``)."""
        shown = self.masked(mask)
        guard = f"  ({self.precondition})" if self.precondition else ""
        head = f"{_SYMBOL[self.action]} {self.action.value} {self.kind} {self.id}{guard}"
        if self.action is Action.NOOP:
            return head
        return "\n".join([head, *(f"    {d.render()}" for d in shown.diff())])


def key_of(kind: str, resource_id: str) -> str:
    return f"{kind}:{resource_id}"


class Moved(BaseModel):
    """A precondition that no longer holds: ``planned`` was seen at plan time, ``current`` now
    (``None`` = the resource does not exist)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    planned: str | None
    current: str | None


class Plan(BaseModel):
    """What one deploy of one service will change, made at ``created_at`` from the config whose
    digest is ``config_digest``. ``preconditions`` holds the etag / fingerprint of every resource
    the plan was made against, by ``Change.key`` (``None`` = it did not exist), including resources
    that need no change. ``masked`` plans (for display) can never be applied."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal[1] = PLAN_FORMAT
    service: str
    created_at: AwareDatetime
    config_digest: str
    changes: tuple[Change, ...] = ()
    preconditions: dict[str, str | None] = {}
    masked: bool = False

    @model_validator(mode="before")
    @classmethod
    def _collect_preconditions(cls, data: Any) -> Any:
        """Every change's precondition is in ``preconditions`` (filled in when left out)."""
        if not isinstance(data, dict):
            return data
        pre = dict(data.get("preconditions") or {})
        for raw in data.get("changes") or ():
            try:
                change = raw if isinstance(raw, Change) else Change.model_validate(raw)
            except ValidationError:
                continue  # reported by field validation, with its location (changes.N....)
            if change.key not in pre:
                pre[change.key] = change.precondition
            elif pre[change.key] != change.precondition:
                raise ValueError(
                    f"precondition of {change.key} is {change.precondition!r} in its change "
                    f"but {pre[change.key]!r} in preconditions"
                )
        return {**data, "preconditions": pre}

    @model_validator(mode="after")
    def _unique(self) -> Plan:
        keys = [c.key for c in self.changes]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"more than one change for {', '.join(dupes)}")
        return self

    # ---- reading it ----
    @property
    def is_empty(self) -> bool:
        """True when applying the plan would change nothing."""
        return all(c.action is Action.NOOP for c in self.changes)

    def counts(self) -> dict[Action, int]:
        return {a: sum(1 for c in self.changes if c.action is a) for a in Action}

    def effective(self) -> list[Change]:
        """The changes that do something, in plan order."""
        return [c for c in self.changes if c.action is not Action.NOOP]

    def moved(self, current: Mapping[str, str | None]) -> list[Moved]:
        """The preconditions that no longer hold, given the etags / fingerprints observed now.

        A key missing from ``current`` means the resource does not exist now."""
        return [
            Moved(key=key, planned=planned, current=current.get(key))
            for key, planned in sorted(self.preconditions.items())
            if current.get(key) != planned
        ]

    def summary(self, mask: SecretMask = NO_MASK) -> str:
        n = self.counts()
        lines = [c.summary(mask) for c in self.changes if c.action is not Action.NOOP]
        tail = (
            f"Plan for {self.service}: {n[Action.CREATE]} to create, {n[Action.UPDATE]} to update, "
            f"{n[Action.DELETE]} to delete, {n[Action.NOOP]} unchanged."
        )
        if self.is_empty:
            tail = f"No changes for {self.service}: the live resources match the config ({n[Action.NOOP]} checked)."
        return "\n".join([*lines, tail])

    # ---- as a file ----
    def masked_copy(self, mask: SecretMask) -> Plan:
        """The plan with secret values masked, for ``plan --json`` output (cannot be applied)."""
        return self.model_copy(update={"changes": tuple(c.masked(mask) for c in self.changes), "masked": True})

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=indent, ensure_ascii=False)

    def digest(self) -> str:
        """``sha256:<hex>`` of the plan's canonical JSON (the journal records it)."""
        canon = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return "sha256:" + hashlib.sha256(canon.encode()).hexdigest()

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "<plan>") -> Plan:
        """Read a saved plan; anything else is one ``PlanFileError`` line naming ``source``."""
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PlanFileError(f"{source}: not JSON: {exc}") from exc
        if isinstance(doc, dict) and doc.get("format") not in (None, PLAN_FORMAT):
            raise PlanFileError(
                f"{source}: plan format {doc.get('format')!r} is not supported (this deployer reads {PLAN_FORMAT})",
                hint="make the plan again with this deployer version",
            )
        try:
            return cls.model_validate(doc)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "(top)"
            raise PlanFileError(f"{source}: not a deployer plan: {where}: {first.get('msg')}") from exc

    @classmethod
    def read_file(cls, path: str) -> Plan:
        """A saved plan (``deploy --plan FILE``) that can be applied, read before anything else happens.

        Everything that can be wrong with the file itself is one ``PlanFileError`` (exit 2): no name,
        missing, a directory, unreadable, not UTF-8, not a plan, or a masked plan (``plan --json``)."""
        if not path.strip():
            raise PlanFileError("--plan needs a file name (a plan saved with `deployer plan --out FILE`)")
        try:
            with Path(path).open("rb") as fh:  # a plan is KiBs; never read a device or an endless stream whole
                raw = fh.read(PLAN_FILE_MAX_BYTES + 1)
            if len(raw) > PLAN_FILE_MAX_BYTES:
                raise PlanFileError(f"{path}: not a plan: larger than {PLAN_FILE_MAX_BYTES // (1024 * 1024)} MiB")
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PlanFileError(f"{path}: not a plan: not UTF-8 text (byte {exc.start})") from exc
        except IsADirectoryError as exc:
            raise PlanFileError(f"{path}: is a directory, not a plan file") from exc
        except OSError as exc:
            raise PlanFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
        plan = cls.from_json(text, source=path)
        if plan.masked:
            raise PlanFileError(f"{path}: a masked plan (plan --json output) cannot be applied; use plan --out FILE")
        return plan


# ==================================================================================================
# make_plan(desired, observed) -> Plan
#
# The pure diff of the desired state (config.py → desired.py) against the observed state
# (gcp/observe.py) into one ``Change`` per resource, with ``before`` the REST-shaped resource as read
# (only the fields the config owns), ``after`` what the config asks for, and ``precondition`` its
# etag / fingerprint.
# ==================================================================================================

# Service annotations deployer writes at finalize (its own prefix; never run.googleapis.com/*, which
# Cloud Run v2 rejects, gcp-facts §4.5). They are not configuration: plans ignore them.
OWN_ANNOTATION_PREFIX = "deployer.dev/"
ANNOTATION_DEPLOY_ID = OWN_ANNOTATION_PREFIX + "deploy-id"
ANNOTATION_LAST_GOOD = OWN_ANNOTATION_PREFIX + "last-good-revision"
ANNOTATION_PREVIOUS = OWN_ANNOTATION_PREFIX + "previous-revision"

# Output-only fields of a Cloud Armor rule (compute.proto SecurityPolicyRule.kind: "[Output only]").
_RULE_OUTPUT_ONLY = ("kind",)
# Revision fields that are not configuration (names, times, status): never compared with a template.
_REVISION_STATUS = frozenset(
    {
        "name",
        "uid",
        "generation",
        "createTime",
        "updateTime",
        "deleteTime",
        "expireTime",
        "launchStage",
        "service",
        "reconciling",
        "conditions",
        "observedGeneration",
        "logUri",
        "satisfiesPzs",
        "creator",
        "etag",
        "scalingStatus",
    }
)


def service_id_of(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def backend_service_id(project: str, name: str) -> str:
    return f"projects/{project}/global/backendServices/{name}"


def security_policy_id(project: str, name: str) -> str:
    return f"projects/{project}/global/securityPolicies/{name}"


def armor_rule_id(policy_id: str, priority: int) -> str:
    return f"{policy_id}/rules/{priority}"


def _is_zero(value: Any) -> bool:
    """A proto3 default: REST JSON leaves these out, so an absent field reads as this value."""
    if isinstance(value, Mapping):
        return all(_is_zero(v) for v in value.values())
    return value in (False, 0, 0.0, "", None) or value == [] or value == {}


def project_onto(observed: Any, wanted: Any) -> Any:
    """``observed`` cut down to the shape of ``wanted``: mapping keys ``wanted`` does not name are
    left out (so maps such as labels compare as subsets), list items ``observed`` has beyond
    ``wanted`` are kept (so a removed env var is a difference), and a key ``observed`` lacks is read as
    ``wanted``'s value when that is a zero value (proto3 leaves defaults out of REST JSON)."""
    if isinstance(wanted, Mapping):
        if not isinstance(observed, Mapping):
            return observed
        out: dict[str, Any] = {}
        for key, want in wanted.items():
            if key in observed:
                out[key] = project_onto(observed[key], want)
            elif _is_zero(want):
                out[key] = copy.deepcopy(want)
        return out
    if isinstance(wanted, list):
        if not isinstance(observed, list):
            return observed
        return [project_onto(o, wanted[i]) if i < len(wanted) else o for i, o in enumerate(observed)]
    return observed


def serving_template(observed: Observed) -> dict[str, Any] | None:
    """The configuration that SERVES, as a ``RevisionTemplate``: the serving revision's fields (a
    rolled-back or hand-pinned service serves an older revision than ``service.template`` says), or
    ``service.template`` when no revision serves."""
    if observed.serving_revision:
        return {k: v for k, v in observed.serving_revision.items() if k not in _REVISION_STATUS}
    if observed.service:
        template = observed.service.get("template")
        return dict(template) if isinstance(template, Mapping) else None
    return None


class UnservedTemplate(BaseModel):
    """The service's template (``service.template``: what a traffic move to LATEST would ship) is not what
    serves: ``revision`` (the latest created one, or the one the template names) gets ``percent`` % (0 when
    it serves nothing), ``serving`` serves, and ``fields`` are the template's paths that differ from it
    (paths only, never values: an env value may be a secret)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    revision: str
    latest_created: bool
    percent: int
    serving: str
    fields: tuple[str, ...] = ()

    def describe(self) -> str:
        which = f"latest created {self.revision}" if self.latest_created else f"revision {self.revision}"
        return (
            f"the service's template ({which}, {self.percent}% traffic) differs from what serves ({self.serving}): "
            "a traffic move to LATEST would ship it"
        )

    def to_json(self) -> dict[str, Any]:
        return {**self.model_dump(mode="json"), "fields": list(self.fields), "text": self.describe()}


def unserved_template(
    service: Mapping[str, Any] | None, serving_revision: Mapping[str, Any] | None
) -> UnservedTemplate | None:
    """Whether the service's template differs from the revision that serves (pure). Plans compare the config
    with what SERVES (``serving_template``), so a template changed by hand while traffic stays pinned (a
    revision created at 0 %) is no drift of the config; this says so instead of nothing.

    None when nothing serves, when the template's revision (the one ``template.revision`` names, else
    ``latestCreatedRevision``: a template change creates one) receives traffic, or when the template's
    fields equal the serving revision's (``project_onto``: server defaults are no difference)."""
    if not service or not serving_revision:
        return None
    template = service.get("template")
    if not isinstance(template, Mapping):
        return None
    named = _short(template.get("revision"))
    latest = _short(service.get("latestCreatedRevision"))
    revision = named or latest
    if not revision:
        return None
    percent: dict[str, int] = {}
    ready = _short(service.get("latestReadyRevision"))
    for status in service.get("trafficStatuses") or []:
        name = _short(status.get("revision")) or (ready if str(status.get("type") or "").endswith("LATEST") else "")
        percent[name] = percent.get(name, 0) + int(status.get("percent") or 0)
    if percent.get(revision, 0) > 0:
        return None
    wanted = {k: v for k, v in template.items() if k != "revision"}
    serving = {k: v for k, v in serving_revision.items() if k not in _REVISION_STATUS}
    differ = diff_fields(project_onto(serving, wanted), wanted)
    if not differ:
        return None
    return UnservedTemplate(
        revision=revision,
        latest_created=revision == latest,
        percent=percent.get(revision, 0),
        serving=_short(serving_revision.get("name")),
        fields=tuple(dict.fromkeys("template." + d.path_str() for d in differ)),
    )


def _short(name: Any) -> str:
    return str(name or "").rsplit("/", 1)[-1]


def _service_change(desired: DesiredState, observed: Observed) -> Change:
    after = {k: copy.deepcopy(v) for k, v in desired.service.items() if k != "name"}
    if isinstance(after.get("annotations"), dict):
        after["annotations"] = {
            k: v for k, v in after["annotations"].items() if not k.startswith(OWN_ANNOTATION_PREFIX)
        }
    live = observed.service
    if live is None:
        return Change(kind=RUN_SERVICE, id=desired.service_name, action=Action.CREATE, after=after)
    current = {k: v for k, v in live.items() if k != "template"}
    current["template"] = serving_template(observed) or {}
    before = project_onto(current, after)
    action = Action.UPDATE if diff_fields(before, after) else Action.NOOP
    return Change(
        kind=RUN_SERVICE,
        id=desired.service_name,
        action=action,
        before=before,
        after=after,
        precondition=live.get("etag"),
    )


def backend_service_owned(desired: DesiredState, observed: Observed) -> dict[str, Any]:
    """The backend-service fields the config owns, as a patch body (no ``name``). ``timeoutSec`` is
    never sent for a serverless NEG backend: gcp-facts §2.1, "Timeout sec is not supported for a
    backend service with Serverless network endpoint groups" (HTTP 400)."""
    owned = {k: copy.deepcopy(v) for k, v in (desired.backend_service or {}).items() if k != "name"}
    if observed.serverless_negs:
        owned.pop("timeoutSec", None)
    return owned


def _backend_change(desired: DesiredState, observed: Observed) -> Change | None:
    if desired.backend_service_name is None or desired.backend_service is None:
        return None
    rid = backend_service_id(desired.project, desired.backend_service_name)
    after = backend_service_owned(desired, observed)
    live = observed.backend_service
    if live is None:
        return Change(kind=BACKEND_SERVICE, id=rid, action=Action.CREATE, after=after)
    before = project_onto(live, after)
    action = Action.UPDATE if diff_fields(before, after) else Action.NOOP
    return Change(
        kind=BACKEND_SERVICE, id=rid, action=action, before=before, after=after, precondition=live.get("fingerprint")
    )


def rule_as_owned(rule: Mapping[str, Any], wanted: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A live Cloud Armor rule as compared with the config's: the config owns the whole rule, so
    every top-level field counts (a field the config drops is a difference); nested maps compare
    with ``project_onto`` (server defaults inside them are not differences)."""
    out: dict[str, Any] = {}
    for key, value in rule.items():
        if key in _RULE_OUTPUT_ONLY:
            continue
        want = (wanted or {}).get(key)
        out[key] = project_onto(value, want) if want is not None else copy.deepcopy(value)
    for key, want in (wanted or {}).items():
        if key not in out and _is_zero(want):
            out[key] = copy.deepcopy(want)
    return out


def _rule_changes(desired: DesiredState, observed: Observed, owned_before: Iterable[int]) -> list[Change]:
    if desired.security_policy_name is None:
        return []
    policy_id = security_policy_id(desired.project, desired.security_policy_name)
    live_policy = observed.security_policy
    fingerprint = live_policy.get("fingerprint") if live_policy else None
    live = observed.armor_rules() if live_policy else {}
    out: list[Change] = []
    for priority, body in sorted(desired.armor_rules.items()):
        rid = armor_rule_id(policy_id, priority)
        after = copy.deepcopy(dict(body))
        found = live.get(priority)
        if found is None:
            out.append(Change(kind=ARMOR_RULE, id=rid, action=Action.CREATE, after=after, precondition=fingerprint))
            continue
        before = rule_as_owned(found, after)
        action = Action.UPDATE if diff_fields(before, after) else Action.NOOP
        out.append(Change(kind=ARMOR_RULE, id=rid, action=action, before=before, after=after, precondition=fingerprint))
    # Rules the last deploy owned and the config no longer lists are removed (never the default rule:
    # gcp-facts §3.1, priority 2147483647 "is reserved for the default rule").
    for priority in sorted(set(owned_before) - set(desired.armor_rules)):
        found = live.get(priority)
        if found is None or priority == facts.ARMOR_DEFAULT_RULE_PRIORITY:
            continue
        out.append(
            Change(
                kind=ARMOR_RULE,
                id=armor_rule_id(policy_id, priority),
                action=Action.DELETE,
                before=rule_as_owned(found),
                precondition=fingerprint,
            )
        )
    return out


def make_plan(
    desired: DesiredState,
    observed: Observed,
    *,
    created_at: datetime,
    config_digest: str,
    owned_armor_priorities: Iterable[int] = (),
) -> Plan:
    """The changes that take ``observed`` to ``desired`` (pure).

    - the Cloud Run service: the config's template against what SERVES (``serving_template``), and
      its service-level fields (ingress, labels and annotations it names; deployer's own
      ``deployer.dev/`` annotations are not configuration);
    - the backend service: only the fields the config owns (``backend_service_owned``);
    - each Cloud Armor rule the config owns, by priority: create (addRule), update (patchRule),
      no-op, or delete (removeRule) for a priority the last deploy owned (``owned_armor_priorities``)
      that the config no longer lists.

    Preconditions: the service's etag, the backend service's fingerprint, and for rules the security
    policy's fingerprint (single-rule calls carry none, gcp-facts §3.6, so the policy's guards them).
    """
    changes: list[Change] = [_service_change(desired, observed)]
    backend = _backend_change(desired, observed)
    if backend is not None:
        changes.append(backend)
    changes.extend(_rule_changes(desired, observed, owned_armor_priorities))
    return Plan(
        service=desired.service_name,
        created_at=created_at,
        config_digest=config_digest,
        changes=tuple(changes),
    )


def current_preconditions(plan: Plan, observed: Observed) -> dict[str, str | None]:
    """The etag / fingerprint of every resource in ``plan`` as observed now (for ``Plan.moved``)."""
    out: dict[str, str | None] = {}
    policy_fp = (observed.security_policy or {}).get("fingerprint")
    for key in plan.preconditions:
        kind, _, _rid = key.partition(":")
        if kind == RUN_SERVICE:
            out[key] = (observed.service or {}).get("etag")
        elif kind == BACKEND_SERVICE:
            out[key] = (observed.backend_service or {}).get("fingerprint")
        elif kind == ARMOR_RULE:
            out[key] = policy_fp
    return {k: v for k, v in out.items() if v is not None}
