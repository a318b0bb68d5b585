"""Values shared by everything: what the config wants (``DesiredState``) and what is live (``Observed``).

Both hold REST-shaped JSON (camelCase dicts, enums by name, durations as ``"3600s"``) — the shape
Google's APIs speak and the client libraries' ``to_json`` renders — so rules, plans and journals
compare plain dicts and never import a Google library. ``deployer/desired.py`` builds a
``DesiredState`` from a config; ``deployer/gcp/observe.py`` reads an ``Observed`` from the cloud.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]


@dataclass(frozen=True)
class DesiredState:
    """The resources a config asks for, as the request bodies the APIs take.

    - ``service``: a Cloud Run v2 ``Service`` (``template``, ``ingress``, labels...), without
      ``traffic``: traffic belongs to the rollout, not to the desired shape.
    - ``backend_service``: the ``BackendService`` fields the config owns (a patch body), or None
      when the config has no load balancer.
    - ``armor_rules``: ``SecurityPolicyRule`` bodies by priority, for the rules the config owns
      (the default rule, priority 2147483647, only when the config sets ``default_action``).
    """

    project: str
    region: str
    service_name: str  # projects/P/locations/R/services/S
    service: JSON
    backend_service_name: str | None = None
    backend_service: JSON | None = None
    url_map_name: str | None = None
    security_policy_name: str | None = None
    armor_rules: Mapping[int, JSON] = field(default_factory=dict)

    @property
    def service_id(self) -> str:
        return self.service_name.rsplit("/", 1)[-1]

    def to_json(self) -> JSON:
        return {
            "project": self.project,
            "region": self.region,
            "serviceName": self.service_name,
            "service": self.service,
            "backendServiceName": self.backend_service_name,
            "backendService": self.backend_service,
            "urlMapName": self.url_map_name,
            "securityPolicyName": self.security_policy_name,
            "armorRules": {str(p): r for p, r in sorted(self.armor_rules.items())},
        }


@dataclass(frozen=True)
class Observed:
    """What is live, as read through the APIs (None = the resource does not exist).

    - ``service``: the Cloud Run v2 ``Service`` (with ``etag``, ``traffic``, ``trafficStatuses``...).
    - ``serving_revision``: the ``Revision`` that serves the largest share of traffic.
    - ``backend_service``: the ``BackendService`` (with ``fingerprint``, ``backends``, ``securityPolicy``).
    - ``security_policy``: the ``SecurityPolicy`` with its ``rules`` and ``fingerprint``.
    - ``url_map``: the ``UrlMap``.
    - ``negs``: the network endpoint groups behind the backend service.
    """

    service: JSON | None = None
    serving_revision: JSON | None = None
    backend_service: JSON | None = None
    security_policy: JSON | None = None
    url_map: JSON | None = None
    negs: tuple[JSON, ...] = ()

    @property
    def serverless_negs(self) -> tuple[JSON, ...]:
        return tuple(n for n in self.negs if n.get("networkEndpointType") == "SERVERLESS")

    def armor_rules(self) -> dict[int, JSON]:
        """The live policy's rules by priority."""
        rules = (self.security_policy or {}).get("rules") or []
        return {int(r.get("priority", 0)): r for r in rules}

    def revision_env_names(self) -> set[str] | None:
        """The env var names of the serving revision's container (None when there is none)."""
        revision = self.serving_revision
        if not revision:
            return None
        containers = revision.get("containers") or []
        if not containers:
            return set()
        return {str(e.get("name")) for e in containers[0].get("env") or [] if e.get("name")}

    def to_json(self) -> JSON:
        return {
            "service": self.service,
            "servingRevision": self.serving_revision,
            "backendService": self.backend_service,
            "securityPolicy": self.security_policy,
            "urlMap": self.url_map,
            "negs": list(self.negs),
        }
