"""Pure routing for the local load balancer: URL map → backend service → serverless NEG → Cloud Run
service → revision. Values in, values out; no sockets, no clocks (the picker takes its ``Random``).

Google's rules, from the Compute v1 field docs ([G-proto] ``google/cloud/compute/v1/compute.proto``;
gcp-facts.md does not cover URL maps):
- ``HostRule.hosts``: "host patterns … with optional port numbers in the format host:port. * matches
  any string of ([a-z0-9-.]*). In that case, * must be the first character, and if followed by
  anything, the immediate following character must be either - or .". A host that matches no host
  rule uses the URL map's ``defaultService``. [Inference] an exact host wins over a wildcard, and a
  longer wildcard over a shorter one.
- ``PathMatcher``: "The BackendService from the longest-matched rule will serve the URL. If no rule was
  matched, the default service is used." ``PathRule.paths``: "Each must start with / and the only place
  a * is allowed is at the end following a /. The string fed to the path matcher does not include any
  text after the first ? or #". So ``/ws/*`` matches ``/ws/`` and ``/ws/x`` but not ``/ws``.
- ``routeRules`` (advanced): the lowest ``priority`` rule whose ``matchRules`` match wins; only
  ``prefixMatch`` and ``fullPathMatch`` are understood locally (others never match).
- ``NetworkEndpointGroupCloudRun``: "The service must be provided explicitly or in the URL mask. The tag
  is optional, may be provided explicitly or in the URL mask." ``urlMask``: "A template to parse
  <service> and <tag> fields from a request URL … URL mask <tag>.domain.com/<service>" parses
  ``foo1.domain.com/bar1`` to ``{service="bar1", tag="foo1"}``.
- Cloud Run traffic (gcp-facts §4.1): targets carry percents; a LATEST target follows
  ``latest_ready_revision``; a tag addresses one revision "regardless of the percent traffic
  specified" (§4.4). Tagged URLs are ``TAG---SERVICE…`` (§4.4); locally ``TAG---SERVICE.localhost``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

LATEST = "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST"
RUN_HOST_SUFFIX = ".localhost"
TAG_SEPARATOR = "---"


# ---- resource references ---------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    """A Compute resource reference: ``collection`` like ``backendServices``; ``region`` or None (global)."""

    project: str | None
    region: str | None
    collection: str
    name: str


_REF = re.compile(
    r"(?:^|/)projects/(?P<project>[^/]+)/(?:global|regions/(?P<region>[^/]+)|zones/[^/]+)/"
    r"(?P<collection>[A-Za-z]+)/(?P<name>[^/?#]+)"
)
_PARTIAL = re.compile(r"^(?:global|regions/(?P<region>[^/]+))/(?P<collection>[A-Za-z]+)/(?P<name>[^/?#]+)$")


def parse_ref(url: str, default_collection: str = "") -> Ref:
    """Full URL, ``projects/…`` path, ``global/…`` partial path or a bare name."""
    m = _REF.search(url)
    if m:
        return Ref(m.group("project"), m.group("region"), m.group("collection"), m.group("name"))
    m = _PARTIAL.match(url)
    if m:
        return Ref(None, m.group("region"), m.group("collection"), m.group("name"))
    return Ref(None, None, default_collection, url.rsplit("/", 1)[-1])


# ---- URL map ---------------------------------------------------------------------------------


def split_host(host: str) -> tuple[str, str | None]:
    """``Host`` header → (lower-case name, port or None). Bracketed IPv6 kept as is."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        name, rest = host[: end + 1], host[end + 1 :]
        return name, rest[1:] if rest.startswith(":") else None
    if host.count(":") == 1:
        name, port = host.split(":")
        return name, port
    return host, None


def host_pattern_matches(pattern: str, host: str) -> bool:
    """One ``hostRules[].hosts`` pattern against a ``Host`` header."""
    pattern = pattern.strip().lower()
    if pattern == "*":
        return True
    name, port = split_host(host)
    p_name, p_port = split_host(pattern)
    if p_port is not None and p_port != port:
        return False
    if p_name.startswith("*"):
        suffix = p_name[1:]
        head = name[: len(name) - len(suffix)] if name.endswith(suffix) else None
        return head is not None and re.fullmatch(r"[a-z0-9.-]*", head) is not None
    return p_name == name


def _host_specificity(pattern: str) -> tuple[int, int]:
    pattern = pattern.strip().lower()
    if pattern == "*":
        return (0, 0)
    if pattern.startswith("*"):
        return (1, len(pattern))
    return (2, len(pattern))


def select_path_matcher(url_map: dict[str, Any], host: str) -> str | None:
    """The ``pathMatcher`` name of the most specific matching host rule, or None."""
    best: tuple[tuple[int, int], str] | None = None
    for rule in url_map.get("hostRules", []) or []:
        for pattern in rule.get("hosts", []) or []:
            if host_pattern_matches(pattern, host):
                spec = _host_specificity(pattern)
                if best is None or spec > best[0]:
                    best = (spec, str(rule.get("pathMatcher", "")))
    return best[1] if best else None


def path_rule_matches(pattern: str, path: str) -> int:
    """Length of the match (for longest-match), or -1."""
    if pattern.endswith("/*"):
        prefix = pattern[:-1]
        return len(prefix) if path.startswith(prefix) else -1
    return len(pattern) if path == pattern else -1


def _route_rule_matches(match_rule: dict[str, Any], path: str) -> bool:
    if "fullPathMatch" in match_rule:
        return path == match_rule["fullPathMatch"]
    if "prefixMatch" in match_rule:
        return path.startswith(str(match_rule["prefixMatch"]))
    return False


def match_path(path_matcher: dict[str, Any], path: str) -> str | None:
    """The backend service reference a path matcher picks for ``path`` (query already removed)."""
    route_rules = sorted(path_matcher.get("routeRules", []) or [], key=lambda r: int(r.get("priority", 0)))
    for rule in route_rules:
        if any(_route_rule_matches(m, path) for m in rule.get("matchRules", []) or []) and rule.get("service"):
            return str(rule["service"])
    best: tuple[tuple[int, int], str] | None = None
    for rule in path_matcher.get("pathRules", []) or []:
        service = rule.get("service")
        if not service:
            continue
        for pattern in rule.get("paths", []) or []:
            length = path_rule_matches(pattern, path)
            if length >= 0:
                key = (length, 0 if pattern.endswith("/*") else 1)  # exact beats a wildcard of equal length
                if best is None or key > best[0]:
                    best = (key, str(service))
    if best is not None:
        return best[1]
    default = path_matcher.get("defaultService")
    return str(default) if default else None


def route(url_map: dict[str, Any], host: str, path: str) -> str | None:
    """Backend service reference for a request, or None (the LB answers 404)."""
    path = path.split("?", 1)[0].split("#", 1)[0] or "/"
    name = select_path_matcher(url_map, host)
    if name is not None:
        for matcher in url_map.get("pathMatchers", []) or []:
            if matcher.get("name") == name:
                return match_path(matcher, path)
    default = url_map.get("defaultService")
    return str(default) if default else None


# ---- serverless NEG --------------------------------------------------------------------------


@dataclass(frozen=True)
class RunTarget:
    service: str
    tag: str | None = None


def _mask_regex(mask: str) -> re.Pattern[str]:
    out = ""
    for part in re.split(r"(<service>|<tag>)", mask):
        if part == "<service>":
            out += r"(?P<service>[a-z0-9-]+)"
        elif part == "<tag>":
            out += r"(?P<tag>[a-z0-9-]+)"
        else:
            out += re.escape(part)
    return re.compile(out)


def parse_url_mask(mask: str, host: str, path: str) -> RunTarget | None:
    """Apply a NEG ``urlMask`` to a request (host without port, path without query)."""
    host_name, _port = split_host(host)
    path = path.split("?", 1)[0]
    if "/" in mask:
        host_mask, path_mask = mask.split("/", 1)
        path_mask = "/" + path_mask
    else:
        host_mask, path_mask = mask, ""
    found: dict[str, str] = {}
    if host_mask:
        m = _mask_regex(host_mask).fullmatch(host_name)
        if not m:
            return None
        found.update({k: v for k, v in m.groupdict().items() if v})
    if path_mask:
        m = _mask_regex(path_mask).match(path)
        if not m or (m.end() < len(path) and path[m.end()] != "/"):
            return None
        found.update({k: v for k, v in m.groupdict().items() if v})
    if "service" not in found:
        return None
    return RunTarget(found["service"], found.get("tag"))


def neg_target(cloud_run: dict[str, Any], host: str, path: str) -> RunTarget | None:
    """The Cloud Run service (and tag) a serverless NEG's ``cloudRun`` block sends a request to."""
    service = cloud_run.get("service") or None
    tag = cloud_run.get("tag") or None
    mask = cloud_run.get("urlMask")
    if mask:
        parsed = parse_url_mask(str(mask), host, path)
        if parsed is not None:
            return RunTarget(service or parsed.service, tag or parsed.tag)
    if service:
        return RunTarget(str(service), str(tag) if tag else None)
    return None


# ---- Cloud Run URLs and traffic ---------------------------------------------------------------


def parse_run_host(host: str) -> RunTarget | None:
    """``SERVICE.localhost`` or ``TAG---SERVICE.localhost`` (any port) → target; anything else None."""
    name, _port = split_host(host)
    if not name.endswith(RUN_HOST_SUFFIX):
        return None
    label = name[: -len(RUN_HOST_SUFFIX)]
    if not label or "." in label:
        return None
    if TAG_SEPARATOR in label:
        tag, _, service = label.partition(TAG_SEPARATOR)
        return RunTarget(service, tag) if tag and service else None
    return RunTarget(label)


def _field(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _type_name(status: Any) -> str:
    t = _field(status, "type_", None)
    if t is None:
        t = _field(status, "type", "")
    return str(getattr(t, "name", t))


def status_revision(status: Any, latest_ready: str) -> str:
    """The revision a traffic status points at (a LATEST status follows ``latest_ready_revision``)."""
    revision = str(_field(status, "revision", "") or "")
    if not revision and (_type_name(status) in (LATEST, "1") or not _type_name(status)):
        revision = latest_ready
    return short_name(revision)


def short_name(revision: str) -> str:
    return revision.rsplit("/", 1)[-1] if revision else ""


def split_targets(traffic_statuses: Iterable[Any], latest_ready: str) -> list[tuple[str, int]]:
    """(revision, percent) with percent > 0, duplicates merged, in first-seen order."""
    merged: dict[str, int] = {}
    for status in traffic_statuses:
        percent = int(_field(status, "percent", 0) or 0)
        revision = status_revision(status, latest_ready)
        if percent > 0 and revision:
            merged[revision] = merged.get(revision, 0) + percent
    return list(merged.items())


def tagged_revision(traffic_statuses: Iterable[Any], tag: str, latest_ready: str) -> str | None:
    for status in traffic_statuses:
        if str(_field(status, "tag", "") or "") == tag:
            return status_revision(status, latest_ready) or None
    return None


def serving_revisions(traffic_statuses: Iterable[Any], latest_ready: str) -> set[str]:
    """Revisions that receive traffic or carry a tag (short names): these are kept running."""
    out: set[str] = set()
    for status in traffic_statuses:
        revision = status_revision(status, latest_ready)
        if revision and (int(_field(status, "percent", 0) or 0) > 0 or _field(status, "tag", "")):
            out.add(revision)
    return out


def pick_revision(targets: Sequence[tuple[str, int]], rng: random.Random) -> str | None:
    """Weighted choice by percent (one draw of ``rng`` per new request/connection)."""
    total = sum(p for _r, p in targets)
    if total <= 0:
        return None
    point = rng.random() * total
    acc = 0.0
    for revision, percent in targets:
        acc += percent
        if point < acc:
            return revision
    return targets[-1][0]
