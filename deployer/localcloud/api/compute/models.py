"""State and rules of the emulated Compute API: global load balancing, Cloud Armor, serverless NEGs.

State layout (a contract: the local load balancer reads it): ``world.apis["compute"]`` is a
``State`` whose resources are JSON dicts in the REST shape, as GET renders them (camelCase):

- ``backend_services[(project, name)]``, ``security_policies[(project, name)]``,
  ``url_maps[(project, name)]``, ``negs[(project, region, name)]``;
- references between resources are full URLs (``https://www.googleapis.com/compute/v1/projects/…``,
  as real Google renders ``selfLink``); ``State.resolve(url_or_name)`` finds the dict behind one;
- a security policy's ``rules`` are kept sorted by numeric priority here (first match wins, §3.1).
  GET renders them in the order Google's recording shows: sorted by priority *as text*
  (``0, 111111111, 2147483647, 555`` in compute-securitypolicy-basic.http.log), so clients must not
  rely on the order they receive.

Every mutation answers a Compute ``Operation`` (``operations.py``). Validation happens before the
operation exists (a 4xx on the call itself); the change is applied when the operation is created,
and the operation reports ``RUNNING`` until ``world.faults.operation_duration("compute", method)``
seconds of ``world.clock`` have passed (0: ``DONE`` at once). Doubt: real Google applies the change
while the operation runs; applying at once keeps reads simple, and a failing operation (an injected
``kind="operation"`` fault) applies nothing.

Rules enforced, with their sources (gcp-facts.md sections):
- fingerprints (§5.1, §3.6; UrlMap per compute.proto): patch/update must carry the current
  ``fingerprint`` or answer 412 ``conditionNotMet``; every mutation mints a new one;
- ``requestId`` (§5.1): a retried mutation with the same id returns the same operation and is not
  applied again, remembered per (project, requestId);
- serverless NEG backends (§2.1, §2.4): ``timeoutSec`` is refused with Google's exact message, as
  are health checks, a balancing mode, and two serverless NEGs of one region;
- ``customRequestHeaders`` (§2.5): format, names, hop-by-hop, reserved prefixes, duplicates, 16 and
  8 KB limits;
- Cloud Armor rules (§3.1, §3.2, §3.4): ``deployer.cloudarmor.policy`` (pure) plus, here, unique
  priorities, the undeletable default rule and a default rule for a policy created without one.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

from deployer import facts
from deployer.cloudarmor import policy as armor
from deployer.localcloud.api.common import DEFAULT_FAULT_MESSAGE, ApiError
from deployer.localcloud.api.compute.links import (
    NAME,
    NAME_PATTERN,
    REGION_LINK,
    Link,
    global_link,
    invalid,
    not_found,
    parse_link,
    region_link,
    regional_link,
)
from deployer.localcloud.api.compute.operations import Operation, check_request_id
from deployer.localcloud.api.compute.rules import (
    check_custom_request_headers,
    checked_rule,
    checked_rules,
    clear_masked,
    in_use,
    merge_patch,
    render_policy,
    sorted_rules,
    url_map_references,
)
from deployer.localcloud.api.compute.wire import normalize
from deployer.localcloud.world import World

# Compute's empty-labels fingerprint, rendered as labelFingerprint on a policy without labels.
EMPTY_LABEL_FINGERPRINT = "42WmSpB8rSM="
FINGERPRINT_MESSAGE = "Supplied fingerprint does not match current metadata fingerprint."
# Output-only fields a client may echo back from a GET; the server keeps its own values.
_OUTPUT_ONLY = ("id", "kind", "selfLink", "creationTimestamp", "fingerprint")
# ... plus, on a backend service, the attached policies ("[Output Only]", §3.6: use setSecurityPolicy).
_BS_SERVER_FIELDS = (*_OUTPUT_ONLY, "securityPolicy", "edgeSecurityPolicy")


@dataclass(frozen=True)
class _GlobalKind:
    """A global Compute collection whose insert/patch/update follow one flow (``State._insert_global``)."""

    message: str  # the compute_v1 message that parses its bodies
    collection: str  # the REST collection: URL path segment and method-id prefix
    store: str  # the State attribute holding it, keyed (project, name)
    kind: str
    server_fields: tuple[str, ...]  # fields the server owns: dropped from bodies, kept across changes


_BACKEND_SERVICES = _GlobalKind(
    "BackendService", "backendServices", "backend_services", "compute#backendService", _BS_SERVER_FIELDS
)
_URL_MAPS = _GlobalKind("UrlMap", "urlMaps", "url_maps", "compute#urlMap", _OUTPUT_ONLY)
_SHA256_EMPTY = hashlib.sha256(b"").hexdigest()  # iap.oauth2ClientSecretSha256 in the recorded GET


# ---- links -------------------------------------------------------------------------------------


# ---- operations --------------------------------------------------------------------------------


# ---- the state ---------------------------------------------------------------------------------
class State:
    """Compute resources of one local cloud (see the module docstring for the layout contract)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.backend_services: dict[tuple[str, str], dict[str, Any]] = {}
        self.security_policies: dict[tuple[str, str], dict[str, Any]] = {}
        self.url_maps: dict[tuple[str, str], dict[str, Any]] = {}
        self.negs: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.operations: dict[tuple[str, str | None, str], Operation] = {}
        self._request_ids: dict[tuple[str, str], tuple[str, str | None, str]] = {}
        self._seeding = False
        self.wait_bound_s = 2.0  # operations.wait answers within this (Google: "approach the 2 minute deadline")

    def reset(self) -> None:
        with self.world.lock:
            self.backend_services.clear()
            self.security_policies.clear()
            self.url_maps.clear()
            self.negs.clear()
            self.operations.clear()
            self._request_ids.clear()

    # ---- lookups -------------------------------------------------------------------------------
    def resolve(self, url_or_name: str, kind: str | None = None) -> dict[str, Any] | None:
        """The resource behind a full/partial URL, or a short name (searched in ``world.project``;
        ``kind`` is a collection such as ``"backendServices"`` to disambiguate)."""
        link = parse_link(url_or_name)
        if link is not None:
            if kind is not None and link.collection != kind:
                return None
            return self._by_link(link)
        for collection, key in self._short_name_keys(str(url_or_name)):
            if kind is None or kind == collection:
                found = self._collection(collection).get(key)
                if found is not None:
                    return found
        return None

    def _short_name_keys(self, name: str) -> Iterator[tuple[str, Any]]:
        project = self.world.project
        yield "backendServices", (project, name)
        yield "securityPolicies", (project, name)
        yield "urlMaps", (project, name)
        for p, region, n in list(self.negs):
            if p == project and n == name:
                yield "networkEndpointGroups", (p, region, n)

    def _collection(self, collection: str) -> dict[Any, dict[str, Any]]:
        return {
            "backendServices": self.backend_services,
            "securityPolicies": self.security_policies,
            "urlMaps": self.url_maps,
            "networkEndpointGroups": self.negs,
        }.get(collection, {})  # type: ignore[return-value]

    def _by_link(self, link: Link) -> dict[str, Any] | None:
        if link.collection == "networkEndpointGroups":
            return self.negs.get((link.project, link.region or "", link.name)) if link.region else None
        if link.region is not None:
            return None
        return self._collection(link.collection).get((link.project, link.name))

    def _reference(self, value: Any, collection: str, field: str, project: str) -> str:
        """A reference in a request body, as the full URL of an existing resource (404 otherwise).
        Bare names are accepted while seeding only (the API itself wants URLs)."""
        if not isinstance(value, str) or not value:
            raise invalid(field, value, "The URL is malformed.")
        link = parse_link(value)
        if link is None and self._seeding:
            for coll, key in self._short_name_keys(value):
                if coll == collection and key in self._collection(coll):
                    link = Link(key[0], key[1] if len(key) == 3 else None, coll, key[-1])
                    break
            else:
                where = "global" if collection != "networkEndpointGroups" else "regions/*"
                raise not_found(f"projects/{project}/{where}/{collection}/{value}")
        if link is None:
            raise invalid(field, value, "The URL is malformed.")
        if link.collection != collection:
            raise invalid(field, value, f"Must be the URL of a {collection} resource.")
        if self._by_link(link) is None:
            raise not_found(link.path)
        return link.url

    # ---- operations ----------------------------------------------------------------------------
    def _replayed(self, project: str, request_id: str | None) -> dict[str, Any] | None:
        check_request_id(request_id)
        if request_id is None:
            return None
        key = self._request_ids.get((project, request_id))
        if key is None or key not in self.operations:
            return None
        return self.operations[key].render(self.world.clock())

    def _operate(
        self,
        *,
        project: str,
        region: str | None,
        method: str,
        operation_type: str,
        target: Mapping[str, Any],
        commit: Callable[[], None],
        request_id: str | None = None,
        validate_only: bool = False,
    ) -> dict[str, Any]:
        """Create the operation for a validated mutation, apply it (unless it is to fail), render it."""
        world = self.world
        fault = None if self._seeding else world.faults.take(method, kind="operation")
        now = world.clock()
        duration = 0.0 if self._seeding else world.faults.operation_duration("compute", method)
        op = Operation(
            project=project,
            region=region,
            name=f"operation-{int(now * 1000)}-{world.hex(13)}-{world.hex(8)}-{world.hex(8)}",
            id=world.numeric_id(),
            operation_type=operation_type,
            target_link=str(target.get("selfLink", "")),
            target_id=str(target.get("id", "")),
            method=method,
            insert_time=now,
            done_at=now + max(0.0, duration),
        )
        if fault is not None:
            op.error = (fault.status, fault.message or DEFAULT_FAULT_MESSAGE.get(fault.status, "Injected fault."))
        elif not validate_only:
            commit()
        self.operations[(project, region, op.name)] = op
        if request_id is not None:
            self._request_ids[(project, request_id)] = (project, region, op.name)
        return op.render(now)

    def operation(self, project: str, region: str | None, name: str) -> Operation:
        op = self.operations.get((project, region, name))
        if op is None:
            where = f"regions/{region}" if region else "global"
            raise not_found(f"projects/{project}/{where}/operations/{name}")
        return op

    def list_operations(self, project: str, region: str | None) -> list[dict[str, Any]]:
        now = self.world.clock()
        return [op.render(now) for (p, r, _n), op in self.operations.items() if p == project and r == region]

    # ---- shared checks -------------------------------------------------------------------------
    def _check_new_name(
        self, body: Mapping[str, Any], exists: Callable[[str], bool], path: Callable[[str], str]
    ) -> str:
        name = body.get("name")
        if not name:
            raise ApiError(400, "Required field 'resource.name' not specified", reason="required")
        if not NAME.match(str(name)):
            raise invalid("resource.name", name, f"Must be a match of regex '(?:{NAME_PATTERN})'")
        if exists(str(name)):
            raise ApiError(409, f"The resource '{path(str(name))}' already exists", reason="alreadyExists")
        return str(name)

    @staticmethod
    def _check_fingerprint(body: Mapping[str, Any], current: Mapping[str, Any]) -> None:
        # §5.1 / §3.6: "An up-to-date fingerprint must be provided in order to update …, otherwise the
        # request will fail with error 412 conditionNotMet." A missing fingerprint is not up to date.
        if body.get("fingerprint") != current.get("fingerprint"):
            raise ApiError(412, FINGERPRINT_MESSAGE, reason="conditionNotMet")

    def _stamp(self, resource: dict[str, Any], kind: str, self_link: str) -> None:
        resource["kind"] = kind
        resource["id"] = self.world.numeric_id()
        resource["creationTimestamp"] = self.world.rfc3339()
        resource["selfLink"] = self_link
        resource["fingerprint"] = self.world.fingerprint()

    # ==== backend services ======================================================================
    def _bs(self, project: str, name: str) -> dict[str, Any]:
        return self._find(_BACKEND_SERVICES, project, name)

    def get_backend_service(self, project: str, name: str) -> dict[str, Any]:
        return copy.deepcopy(self._bs(project, name))

    def list_backend_services(self, project: str) -> list[dict[str, Any]]:
        return self._list(_BACKEND_SERVICES, project)

    def insert_backend_service(
        self, project: str, body: Mapping[str, Any], *, request_id: str | None = None
    ) -> dict[str, Any]:
        return self._insert_global(_BACKEND_SERVICES, project, body, request_id=request_id)

    def patch_backend_service(
        self, project: str, name: str, body: Mapping[str, Any], *, request_id: str | None = None
    ) -> dict[str, Any]:
        return self._change_global(_BACKEND_SERVICES, project, name, body, request_id=request_id, merge=True)

    def update_backend_service(
        self, project: str, name: str, body: Mapping[str, Any], *, request_id: str | None = None
    ) -> dict[str, Any]:
        return self._change_global(_BACKEND_SERVICES, project, name, body, request_id=request_id, merge=False)

    # ---- global resources that share one insert/patch/update flow (backend services, URL maps) ----------

    def _find(self, kind: _GlobalKind, project: str, name: str) -> dict[str, Any]:
        found = getattr(self, kind.store).get((project, name))
        if found is None:
            raise not_found(f"projects/{project}/global/{kind.collection}/{name}")
        return cast(dict[str, Any], found)

    def _list(self, kind: _GlobalKind, project: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(v) for (p, _n), v in sorted(getattr(self, kind.store).items()) if p == project]

    def _prepare(self, kind: _GlobalKind, project: str, resource: dict[str, Any], explicit: Mapping[str, Any]) -> None:
        if kind is _BACKEND_SERVICES:
            self._prepare_backend_service(project, resource, explicit=explicit)
        else:
            self._prepare_url_map(project, resource)

    def _insert_global(
        self, kind: _GlobalKind, project: str, body: Mapping[str, Any], *, request_id: str | None
    ) -> dict[str, Any]:
        store: dict[tuple[str, str], dict[str, Any]] = getattr(self, kind.store)
        with self.world.lock:
            if (replay := self._replayed(project, request_id)) is not None:
                return replay
            resource = normalize(kind.message, body)
            name = self._check_new_name(
                resource,
                lambda n: (project, n) in store,
                lambda n: f"projects/{project}/global/{kind.collection}/{n}",
            )
            for key in kind.server_fields:
                # output-only fields; on a backend service also securityPolicy, "[Output Only]" (§3.6):
                # attach with setSecurityPolicy.
                resource.pop(key, None)
            self._prepare(kind, project, resource, resource)
            self._stamp(resource, kind.kind, global_link(project, kind.collection, name))

            def commit() -> None:
                store[(project, name)] = resource

            return self._operate(
                project=project,
                region=None,
                method=f"compute.{kind.collection}.insert",
                operation_type="insert",
                target=resource,
                commit=commit,
                request_id=request_id,
            )

    def _change_global(
        self,
        kind: _GlobalKind,
        project: str,
        name: str,
        body: Mapping[str, Any],
        *,
        request_id: str | None,
        merge: bool,
    ) -> dict[str, Any]:
        store: dict[tuple[str, str], dict[str, Any]] = getattr(self, kind.store)
        verb = "patch" if merge else "update"
        with self.world.lock:
            if (replay := self._replayed(project, request_id)) is not None:
                return replay
            explicit = normalize(kind.message, body)  # strict: unknown fields are a 400
            current = self._find(kind, project, name)
            # §5.1 (and compute.proto UrlMap.fingerprint, the same rule): an up-to-date fingerprint or 412.
            self._check_fingerprint(explicit, current)
            if "name" in explicit and explicit["name"] != name:
                raise invalid("resource.name", explicit["name"], "The name of a resource cannot be changed.")
            changes = {k: v for k, v in body.items() if k not in kind.server_fields}
            if merge:
                # clientlibs.md §4: Compute PATCH is a JSON merge patch in which lists replace wholesale.
                resource = normalize(kind.message, merge_patch(_without_output(current), changes))
            else:
                resource = normalize(kind.message, {**changes, "name": name})
            kept = {k: current[k] for k in kind.server_fields if k in current}
            self._prepare(kind, project, resource, explicit)
            resource.update(kept)
            resource["fingerprint"] = self.world.fingerprint()

            def commit() -> None:
                store[(project, name)] = resource

            return self._operate(
                project=project,
                region=None,
                method=f"compute.{kind.collection}.{verb}",
                operation_type=verb,
                target=resource,
                commit=commit,
                request_id=request_id,
            )

    def _prepare_backend_service(self, project: str, resource: dict[str, Any], *, explicit: Mapping[str, Any]) -> None:
        """Validate and complete a backend service; ``explicit`` holds the fields the caller sent."""
        serverless_regions: dict[str, int] = {}
        for i, backend in enumerate(resource.get("backends") or []):
            field = f"resource.backends[{i}].group"
            backend["group"] = self._reference(backend.get("group"), "networkEndpointGroups", field, project)
            neg = self.resolve(backend["group"]) or {}
            if neg.get("networkEndpointType") == "SERVERLESS":
                region = str(neg.get("region", "")).rsplit("/", 1)[-1]
                if region in serverless_regions:
                    # §2.4 "A global backend service … can have only one serverless NEG per region."
                    raise invalid(
                        field,
                        backend["group"],
                        f"A backend service can have only one serverless NEG per region ({region}).",
                    )
                serverless_regions[region] = i
                if "balancingMode" in backend:
                    # §2.4 "You cannot specify a balancing mode."
                    raise invalid(
                        f"resource.backends[{i}].balancingMode",
                        backend["balancingMode"],
                        "Balancing mode is not supported for serverless network endpoint groups.",
                    )
        serverless = bool(serverless_regions)
        if serverless:
            if "timeoutSec" in explicit:
                # §2.1, the real 400: "Invalid value for field 'resource.timeoutSec': '120'. Timeout sec is
                # not supported for a backend service with Serverless network endpoint groups."
                raise invalid("resource.timeoutSec", explicit["timeoutSec"], facts.SERVERLESS_NEG_TIMEOUT_MESSAGE)
            # The fixed 60 minutes "is not configurable" (§2.1): the field does not apply, so it is not
            # kept (doubt: whether Google renders a timeoutSec for such a service is not recorded).
            resource.pop("timeoutSec", None)
            if resource.get("healthChecks"):
                # §2.4 "Health checks are not supported for serverless backends."
                raise invalid(
                    "resource.healthChecks",
                    resource["healthChecks"],
                    "Health checks are not supported for backend services with serverless network endpoint groups.",
                )
        elif "timeoutSec" in resource and not 1 <= int(resource["timeoutSec"]) <= 2_147_483_647:
            # §2.1 "The full range of timeout values allowed goes from 1 through 2,147,483,647 seconds."
            raise invalid("resource.timeoutSec", resource["timeoutSec"], "Must be between 1 and 2147483647.")
        affinity = resource.get("sessionAffinity")
        if affinity is not None and affinity not in facts.BACKEND_SESSION_AFFINITIES:
            raise invalid(
                "resource.sessionAffinity", affinity, f"Must be one of {', '.join(facts.BACKEND_SESSION_AFFINITIES)}."
            )
        ttl = resource.get("affinityCookieTtlSec")
        if ttl is not None and not 0 <= int(ttl) <= facts.AFFINITY_COOKIE_TTL_MAX_S:
            # §5.1 "The maximum allowed value is two weeks (1,209,600)."
            raise invalid("resource.affinityCookieTtlSec", ttl, "The maximum allowed value is two weeks (1,209,600).")
        check_custom_request_headers(resource.get("customRequestHeaders") or [])
        # Server defaults, as the recorded GET shows them (compute-backendservice-crud.http.log).
        defaults: dict[str, Any] = {
            "affinityCookieTtlSec": 0,
            "connectionDraining": {"drainingTimeoutSec": 0},
            "description": "",
            "iap": {
                "enabled": False,
                "oauth2ClientId": "",
                "oauth2ClientSecretSha256": _SHA256_EMPTY,
            },
            "loadBalancingScheme": "EXTERNAL",
            "port": 80,
            "portName": "http",
            "protocol": "HTTP",
            "sessionAffinity": "NONE",
        }
        if not serverless:
            defaults["timeoutSec"] = 30  # §2.1 "For all other backend types on a backend service: 30 seconds"
        for key, value in defaults.items():
            resource.setdefault(key, value)

    def delete_backend_service(self, project: str, name: str, *, request_id: str | None = None) -> dict[str, Any]:
        with self.world.lock:
            if (replay := self._replayed(project, request_id)) is not None:
                return replay
            resource = self._bs(project, name)
            for (p, map_name), url_map in self.url_maps.items():
                if p == project and resource["selfLink"] in url_map_references(url_map):
                    raise in_use("backend_service", resource, f"projects/{p}/global/urlMaps/{map_name}")

            def commit() -> None:
                self.backend_services.pop((project, name), None)

            return self._operate(
                project=project,
                region=None,
                method="compute.backendServices.delete",
                operation_type="delete",
                target=resource,
                commit=commit,
                request_id=request_id,
            )

    def set_security_policy(
        self, project: str, name: str, body: Mapping[str, Any], *, request_id: str | None = None
    ) -> dict[str, Any]:
        """§3.6 backendServices.setSecurityPolicy: body ``{"securityPolicy": "<url>"}`` ("" detaches)."""
        with self.world.lock:
            if (replay := self._replayed(project, request_id)) is not None:
                return replay
            reference = normalize("SecurityPolicyReference", body)
            current = self._bs(project, name)
            target = reference.get("securityPolicy") or ""
            url = self._reference(target, "securityPolicies", "securityPolicy", project) if target else ""
            resource = copy.deepcopy(current)
            if url:
                resource["securityPolicy"] = url
            else:
                resource.pop("securityPolicy", None)
            resource["fingerprint"] = self.world.fingerprint()

            def commit() -> None:
                self.backend_services[(project, name)] = resource

            return self._operate(
                project=project,
                region=None,
                method="compute.backendServices.setSecurityPolicy",
                operation_type="setSecurityPolicy",
                target=resource,
                commit=commit,
                request_id=request_id,
            )

    # ==== security policies =====================================================================
    def _sp(self, project: str, name: str) -> dict[str, Any]:
        found = self.security_policies.get((project, name))
        if found is None:
            raise not_found(f"projects/{project}/global/securityPolicies/{name}")
        return found

    def get_security_policy(self, project: str, name: str) -> dict[str, Any]:
        return render_policy(self._sp(project, name))

    def list_security_policies(self, project: str) -> list[dict[str, Any]]:
        return [render_policy(v) for (p, _n), v in sorted(self.security_policies.items()) if p == project]

    def insert_security_policy(
        self, project: str, body: Mapping[str, Any], *, request_id: str | None = None, validate_only: bool = False
    ) -> dict[str, Any]:
        with self.world.lock:
            if (replay := self._replayed(project, request_id)) is not None:
                return replay
            resource = normalize("SecurityPolicy", body)
            name = self._check_new_name(
                resource,
                lambda n: (project, n) in self.security_policies,
                lambda n: f"projects/{project}/global/securityPolicies/{n}",
            )
            for key in (*_OUTPUT_ONLY, "labelFingerprint"):
                resource.pop(key, None)
            resource.setdefault("type", "CLOUD_ARMOR")
            resource["rules"] = checked_rules(resource.get("rules") or [], str(resource["type"]), creating=True)
            self._stamp(resource, "compute#securityPolicy", global_link(project, "securityPolicies", name))
            resource["labelFingerprint"] = EMPTY_LABEL_FINGERPRINT

            def commit() -> None:
                self.security_policies[(project, name)] = resource

            return self._operate(
                project=project,
                region=None,
                method="compute.securityPolicies.insert",
                operation_type="insert",
                target=resource,
                commit=commit,
                request_id=request_id,
                validate_only=validate_only,
            )

    def patch_security_policy(
        self,
        project: str,
        name: str,
        body: Mapping[str, Any],
        *,
        request_id: str | None = None,
        update_mask: str | None = None,
    ) -> dict[str, Any]:
        with self.world.lock:
            if (replay := self._replayed(project, request_id)) is not None:
                return replay
            explicit = normalize("SecurityPolicy", body)
            current = self._sp(project, name)
            self._check_fingerprint(explicit, current)
            if "name" in explicit and explicit["name"] != name:
                raise invalid("resource.name", explicit["name"], "The name of a resource cannot be changed.")
            changes = {k: v for k, v in body.items() if k not in (*_OUTPUT_ONLY, "labelFingerprint", "type")}
            merged = merge_patch(_without_output(current), changes)
            clear_masked(merged, explicit, update_mask)
            resource = normalize("SecurityPolicy", merged)
            if "rules" in changes:
                # The proto says patch "cannot be used to … update the rules", but the recorded real PATCH
                # (compute-securitypolicy-basic.http.log) replaced all four rules; we follow the recording.
                resource["rules"] = checked_rules(resource.get("rules") or [], str(current.get("type")), creating=False)
            else:
                resource["rules"] = copy.deepcopy(current["rules"])
            resource.update({k: current[k] for k in (*_OUTPUT_ONLY, "labelFingerprint", "type") if k in current})
            resource["fingerprint"] = self.world.fingerprint()

            def commit() -> None:
                self.security_policies[(project, name)] = resource

            return self._operate(
                project=project,
                region=None,
                method="compute.securityPolicies.patch",
                operation_type="patch",
                target=resource,
                commit=commit,
                request_id=request_id,
            )

    def delete_security_policy(self, project: str, name: str, *, request_id: str | None = None) -> dict[str, Any]:
        with self.world.lock:
            if (replay := self._replayed(project, request_id)) is not None:
                return replay
            resource = self._sp(project, name)
            for (p, bs_name), bs in self.backend_services.items():
                if bs.get("securityPolicy") == resource["selfLink"]:
                    raise in_use("security_policy", resource, f"projects/{p}/global/backendServices/{bs_name}")

            def commit() -> None:
                self.security_policies.pop((project, name), None)

            return self._operate(
                project=project,
                region=None,
                method="compute.securityPolicies.delete",
                operation_type="delete",
                target=resource,
                commit=commit,
                request_id=request_id,
            )

    def _rule_at(self, policy: Mapping[str, Any], priority: int) -> dict[str, Any]:
        for rule in policy["rules"]:
            if int(rule["priority"]) == priority:
                return rule
        # python-compute#173, a real 400: "Invalid value for field 'priority': '0'. <policy> does not
        # contain a rule at priority 0."
        raise invalid("priority", priority, f"{policy['name']} does not contain a rule at priority {priority}.")

    def get_rule(self, project: str, name: str, priority: int) -> dict[str, Any]:
        return copy.deepcopy(self._rule_at(self._sp(project, name), priority))

    def add_rule(
        self, project: str, name: str, body: Mapping[str, Any], *, validate_only: bool = False
    ) -> dict[str, Any]:
        """§3.6 addRule (no requestId in the API, no fingerprint)."""
        with self.world.lock:
            rule = normalize("SecurityPolicyRule", body)
            current = self._sp(project, name)
            rule = checked_rule(rule, str(current.get("type")), "resource")
            priority = int(rule["priority"])
            if any(int(r["priority"]) == priority for r in current["rules"]):
                # §3.1 "You cannot configure two or more rules with the same priority."
                raise invalid(
                    "resource.priority",
                    priority,
                    f"A rule with priority {priority} already exists in security policy '{name}'; "
                    "priorities must be unique.",
                )
            resource = copy.deepcopy(current)
            resource["rules"] = sorted_rules([*resource["rules"], rule])
            resource["fingerprint"] = self.world.fingerprint()
            return self._commit_policy(project, name, resource, "addRule", validate_only)

    def patch_rule(
        self,
        project: str,
        name: str,
        priority: int,
        body: Mapping[str, Any],
        *,
        update_mask: str | None = None,
        validate_only: bool = False,
    ) -> dict[str, Any]:
        """§3.6 patchRule: merge ``body`` into the rule at ``priority``; masked fields absent from the
        body are cleared. The rule may move to a new (free) priority, except the default rule."""
        with self.world.lock:
            explicit = normalize("SecurityPolicyRule", body)
            current = self._sp(project, name)
            old = self._rule_at(current, priority)
            # Top-level fields of the body replace the rule's (a new match replaces the old one whole);
            # fields named in updateMask but absent from the body are cleared.
            merged = {**copy.deepcopy(old), **{k: copy.deepcopy(v) for k, v in body.items() if k != "kind"}}
            merged = {k: v for k, v in merged.items() if v is not None}
            clear_masked(merged, explicit, update_mask)
            merged.setdefault("priority", priority)
            rule = checked_rule(normalize("SecurityPolicyRule", merged), str(current.get("type")), "resource")
            try:
                armor.validate_action_change(str(old.get("action")), str(rule.get("action")))
            except armor.RuleError as exc:
                raise ApiError(400, exc.message(), reason="invalid") from exc
            new_priority = int(rule["priority"])
            if new_priority != priority:
                if priority == facts.ARMOR_DEFAULT_RULE_PRIORITY:
                    raise invalid(
                        "resource.priority", new_priority, "The priority of the default rule cannot be changed."
                    )
                if any(int(r["priority"]) == new_priority for r in current["rules"]):
                    raise invalid(
                        "resource.priority", new_priority, f"A rule with priority {new_priority} already exists."
                    )
            resource = copy.deepcopy(current)
            others = [r for r in resource["rules"] if int(r["priority"]) != priority]
            resource["rules"] = sorted_rules([*others, rule])
            resource["fingerprint"] = self.world.fingerprint()
            return self._commit_policy(project, name, resource, "patchRule", validate_only)

    def remove_rule(self, project: str, name: str, priority: int) -> dict[str, Any]:
        with self.world.lock:
            current = self._sp(project, name)
            if priority == facts.ARMOR_DEFAULT_RULE_PRIORITY:
                # §3.1 the priority 2147483647 "is reserved for the default rule" (which every policy has).
                raise invalid("priority", priority, "The default rule cannot be removed.")
            self._rule_at(current, priority)
            resource = copy.deepcopy(current)
            resource["rules"] = [r for r in resource["rules"] if int(r["priority"]) != priority]
            resource["fingerprint"] = self.world.fingerprint()
            return self._commit_policy(project, name, resource, "removeRule", False)

    def _commit_policy(
        self, project: str, name: str, resource: dict[str, Any], verb: str, validate_only: bool
    ) -> dict[str, Any]:
        def commit() -> None:
            self.security_policies[(project, name)] = resource

        return self._operate(
            project=project,
            region=None,
            method=f"compute.securityPolicies.{verb}",
            operation_type=verb,
            target=resource,
            commit=commit,
            validate_only=validate_only,
        )

    # ==== serverless network endpoint groups (regional) =========================================
    def _neg(self, project: str, region: str, name: str) -> dict[str, Any]:
        found = self.negs.get((project, region, name))
        if found is None:
            raise not_found(f"projects/{project}/regions/{region}/networkEndpointGroups/{name}")
        return found

    def get_neg(self, project: str, region: str, name: str) -> dict[str, Any]:
        return copy.deepcopy(self._neg(project, region, name))

    def list_negs(self, project: str, region: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(v) for (p, r, _n), v in sorted(self.negs.items()) if p == project and r == region]

    def insert_neg(
        self, project: str, region: str, body: Mapping[str, Any], *, request_id: str | None = None
    ) -> dict[str, Any]:
        with self.world.lock:
            if (replay := self._replayed(project, request_id)) is not None:
                return replay
            resource = normalize("NetworkEndpointGroup", body)
            name = self._check_new_name(
                resource,
                lambda n: (project, region, n) in self.negs,
                lambda n: f"projects/{project}/regions/{region}/networkEndpointGroups/{n}",
            )
            for key in (*_OUTPUT_ONLY, "size", "region"):
                resource.pop(key, None)
            kind = resource.get("networkEndpointType")
            if kind != "SERVERLESS":
                raise invalid(
                    "resource.networkEndpointType", kind, "The local cloud emulates serverless (SERVERLESS) NEGs only."
                )
            for other in ("appEngine", "cloudFunction", "serverlessDeployment", "pscTargetService"):
                if other in resource:
                    raise invalid(f"resource.{other}", resource[other], "The local cloud emulates Cloud Run NEGs only.")
            cloud_run = resource.get("cloudRun")
            if not isinstance(cloud_run, dict) or not (cloud_run.get("service") or cloud_run.get("urlMask")):
                # proto NetworkEndpointGroupCloudRun: "The service must be provided explicitly or in the URL mask."
                raise invalid(
                    "resource.cloudRun", cloud_run, "The service must be provided explicitly or in the URL mask."
                )
            for key in ("service", "tag"):
                value = cloud_run.get(key)
                if value is not None and not NAME.match(str(value)):
                    # proto: "must be 1-63 characters long, and comply with RFC1035" (gcp-facts §3.5 for tag).
                    raise invalid(
                        f"resource.cloudRun.{key}", value, "Must be 1-63 characters long, and comply with RFC1035."
                    )
            self._stamp(
                resource, "compute#networkEndpointGroup", regional_link(project, region, "networkEndpointGroups", name)
            )
            resource.pop("fingerprint", None)  # NEGs have no fingerprint (the recording shows none)
            resource["region"] = region_link(project, region)
            resource["size"] = 0

            def commit() -> None:
                self.negs[(project, region, name)] = resource

            # The recording names regional NEG operations by method id.
            return self._operate(
                project=project,
                region=region,
                method="compute.regionNetworkEndpointGroups.insert",
                operation_type="compute.regionNetworkEndpointGroups.insert",
                target=resource,
                commit=commit,
                request_id=request_id,
            )

    def delete_neg(self, project: str, region: str, name: str, *, request_id: str | None = None) -> dict[str, Any]:
        with self.world.lock:
            if (replay := self._replayed(project, request_id)) is not None:
                return replay
            resource = self._neg(project, region, name)
            for (p, bs_name), bs in self.backend_services.items():
                if any(b.get("group") == resource["selfLink"] for b in bs.get("backends") or []):
                    raise in_use("network_endpoint_group", resource, f"projects/{p}/global/backendServices/{bs_name}")

            def commit() -> None:
                self.negs.pop((project, region, name), None)

            return self._operate(
                project=project,
                region=region,
                method="compute.regionNetworkEndpointGroups.delete",
                operation_type="compute.regionNetworkEndpointGroups.delete",
                target=resource,
                commit=commit,
                request_id=request_id,
            )

    # ==== URL maps ==============================================================================
    def _um(self, project: str, name: str) -> dict[str, Any]:
        return self._find(_URL_MAPS, project, name)

    def get_url_map(self, project: str, name: str) -> dict[str, Any]:
        return copy.deepcopy(self._um(project, name))

    def list_url_maps(self, project: str) -> list[dict[str, Any]]:
        return self._list(_URL_MAPS, project)

    def insert_url_map(self, project: str, body: Mapping[str, Any], *, request_id: str | None = None) -> dict[str, Any]:
        return self._insert_global(_URL_MAPS, project, body, request_id=request_id)

    def patch_url_map(
        self, project: str, name: str, body: Mapping[str, Any], *, request_id: str | None = None
    ) -> dict[str, Any]:
        return self._change_global(_URL_MAPS, project, name, body, request_id=request_id, merge=True)

    def update_url_map(
        self, project: str, name: str, body: Mapping[str, Any], *, request_id: str | None = None
    ) -> dict[str, Any]:
        return self._change_global(_URL_MAPS, project, name, body, request_id=request_id, merge=False)

    def delete_url_map(self, project: str, name: str, *, request_id: str | None = None) -> dict[str, Any]:
        with self.world.lock:
            if (replay := self._replayed(project, request_id)) is not None:
                return replay
            resource = self._um(project, name)

            def commit() -> None:
                self.url_maps.pop((project, name), None)

            return self._operate(
                project=project,
                region=None,
                method="compute.urlMaps.delete",
                operation_type="delete",
                target=resource,
                commit=commit,
                request_id=request_id,
            )

    def _prepare_url_map(self, project: str, resource: dict[str, Any]) -> None:
        """Every service reference must name an existing backend service (stored as its full URL);
        every host rule must name a path matcher of this map."""
        if "defaultService" in resource:
            resource["defaultService"] = self._reference(
                resource["defaultService"], "backendServices", "resource.defaultService", project
            )
        matchers = resource.get("pathMatchers") or []
        names = {m.get("name") for m in matchers}
        for i, host_rule in enumerate(resource.get("hostRules") or []):
            if host_rule.get("pathMatcher") not in names:
                raise invalid(
                    f"resource.hostRules[{i}].pathMatcher",
                    host_rule.get("pathMatcher"),
                    "The host rule names a path matcher this URL map does not have.",
                )
        for i, matcher in enumerate(matchers):
            base = f"resource.pathMatchers[{i}]"
            if "defaultService" in matcher:
                matcher["defaultService"] = self._reference(
                    matcher["defaultService"], "backendServices", f"{base}.defaultService", project
                )
            for j, rule in enumerate(matcher.get("pathRules") or []):
                if "service" in rule:
                    rule["service"] = self._reference(
                        rule["service"], "backendServices", f"{base}.pathRules[{j}].service", project
                    )
            for j, rule in enumerate(matcher.get("routeRules") or []):
                if "service" in rule:
                    rule["service"] = self._reference(
                        rule["service"], "backendServices", f"{base}.routeRules[{j}].service", project
                    )

    # ==== seeding ===============================================================================
    # the seed document's top-level keys this reads
    seed_keys = ("networkEndpointGroups", "securityPolicies", "backendServices", "urlMaps")

    def seed(self, doc: dict[str, Any]) -> None:
        """Create ``networkEndpointGroups`` (each with a ``region``), ``securityPolicies``,
        ``backendServices`` (a ``securityPolicy`` key attaches that policy as setSecurityPolicy does)
        and ``urlMaps`` from REST-shaped dicts, in that order, through the same validated paths.
        Short names stand for full URLs here."""
        project = self.world.project
        self._seeding = True
        try:
            for item in _items(doc, "networkEndpointGroups"):
                body = dict(item)
                region = str(body.pop("region", None) or self.world.region)
                match = REGION_LINK.match(region)
                self.insert_neg(project, match["region"] if match else region, body)
            for item in _items(doc, "securityPolicies"):
                self.insert_security_policy(project, item)
            for item in _items(doc, "backendServices"):
                body = dict(item)
                attach = body.pop("securityPolicy", None)
                self.insert_backend_service(project, body)
                if attach:
                    self.set_security_policy(project, str(body.get("name")), {"securityPolicy": attach})
            for item in _items(doc, "urlMaps"):
                self.insert_url_map(project, item)
        finally:
            self._seeding = False


def install(world: World) -> State:
    state = State(world)
    world.apis["compute"] = state
    return state


# ---- pure helpers ------------------------------------------------------------------------------


def _without_output(resource: Mapping[str, Any]) -> dict[str, Any]:
    return {k: copy.deepcopy(v) for k, v in resource.items() if k not in _OUTPUT_ONLY}


def _items(doc: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    items = doc.get(key) or []
    if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
        raise ApiError(400, f"seed: {key} must be a list of objects in the Compute REST shape")
    return items
