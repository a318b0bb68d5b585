"""Pure rules of the Compute API: JSON merge patch, update masks, custom request headers (gcp-facts
§2.5), and security policy rules as stored and rendered (Cloud Armor checks: ``deployer.cloudarmor``)."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from deployer import facts
from deployer.cloudarmor import policy as armor
from deployer.localcloud.api.common import ApiError
from deployer.localcloud.api.compute.links import invalid, parse_link

# RFC 7230 token characters, for header names (§2.5 "a valid HTTP header-field name").
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def merge_patch(target: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7396 JSON merge patch: objects merge, ``null`` deletes, lists and scalars replace."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(target.get(key), dict):
            target[key] = merge_patch(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


def _camel(segment: str) -> str:
    return re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), segment)


def clear_masked(target: dict[str, Any], explicit: Mapping[str, Any], update_mask: str | None) -> None:
    """§3.6 "To clear fields in the rule, leave the fields empty and specify them in the updateMask":
    each masked path (camelCase or snake_case) that ``explicit`` does not carry is removed from ``target``."""
    for raw in (update_mask or "").split(","):
        parts = [_camel(p) for p in raw.strip().split(".") if p]
        if not parts:
            continue
        probe: Any = explicit
        for part in parts:
            probe = probe.get(part) if isinstance(probe, Mapping) else None
        if probe is not None:
            continue
        parent: Any = target
        for part in parts[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if isinstance(parent, dict):
            parent.pop(parts[-1], None)


def url_map_references(url_map: Mapping[str, Any]) -> set[str]:
    refs = {str(url_map.get("defaultService", ""))}
    for matcher in url_map.get("pathMatchers") or []:
        refs.add(str(matcher.get("defaultService", "")))
        for rule in [*(matcher.get("pathRules") or []), *(matcher.get("routeRules") or [])]:
            refs.add(str(rule.get("service", "")))
    return refs


def in_use(kind: str, resource: Mapping[str, Any], user: str) -> ApiError:
    path = parse_link(str(resource["selfLink"]))
    name = path.path if path else resource.get("name")
    return ApiError(
        400, f"The {kind} resource '{name}' is already being used by '{user}'", reason="resourceInUseByAnotherResource"
    )


def checked_rule(rule: Mapping[str, Any], policy_type: str, prefix: str) -> dict[str, Any]:
    try:
        armor.validate_rule(rule, policy_type=policy_type)
    except armor.RuleError as exc:
        raise ApiError(400, exc.message(prefix), reason="required" if exc.required else "invalid") from exc
    return rule_defaults(rule)


def checked_rules(rules: list[Mapping[str, Any]], policy_type: str, *, creating: bool) -> list[dict[str, Any]]:
    checked = [checked_rule(rule, policy_type, f"resource.rules[{i}]") for i, rule in enumerate(rules)]
    try:
        armor.validate_priorities(checked)
    except armor.RuleError as exc:
        raise ApiError(400, exc.message("resource"), reason="invalid") from exc
    if not any(int(r["priority"]) == facts.ARMOR_DEFAULT_RULE_PRIORITY for r in checked):
        if not creating:
            raise invalid("resource.rules", "", "The default rule (priority 2147483647) cannot be removed.")
        # §3.1 (proto): "If no rules are provided when creating a security policy, a default rule with
        # action 'allow' will be added." We also add it when rules are given without one (doubt: Google
        # may refuse that instead); every policy then has its default rule.
        checked.append(rule_defaults(armor.default_rule()))
    return sorted_rules(checked)


def rule_defaults(rule: Mapping[str, Any]) -> dict[str, Any]:
    """A rule as GET renders it: ``kind``, ``description: ""`` and ``preview: false`` by default."""
    out = copy.deepcopy(dict(rule))
    out["kind"] = "compute#securityPolicyRule"
    out.setdefault("description", "")
    out.setdefault("preview", False)
    out["priority"] = int(out["priority"])
    return out


def sorted_rules(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rules, key=lambda r: int(r["priority"]))


def render_policy(policy: Mapping[str, Any]) -> dict[str, Any]:
    """A policy as GET answers it: rules ordered by priority *as text*, as the real recording shows."""
    out = copy.deepcopy(dict(policy))
    out["rules"] = sorted(out.get("rules") or [], key=lambda r: str(r["priority"]))
    return out


def check_custom_request_headers(headers: list[str], field: str = "resource.customRequestHeaders") -> None:
    """gcp-facts §2.5, for ``customRequestHeaders`` entries of the form ``Name: value``."""
    if len(headers) > facts.CUSTOM_HEADERS_MAX:
        # "Maximum number of configured custom request headers for each backend service: 16"
        raise invalid(field, len(headers), f"At most {facts.CUSTOM_HEADERS_MAX} custom request headers are allowed.")
    seen: dict[str, int] = {}
    total = 0
    for i, entry in enumerate(headers):
        where = f"{field}[{i}]"
        if ":" not in entry:
            # "The header must contain a colon separating the header name and header value."
            raise invalid(where, entry, "The header must contain a colon separating the header name and header value.")
        name, value = entry.split(":", 1)
        name = name.strip()
        lower = name.lower()
        if not _TOKEN.match(name):
            raise invalid(where, entry, "The header name must be a valid HTTP header-field name (RFC 7230).")
        if lower in facts.HOP_BY_HOP_HEADERS:
            # "The following hop-by-hop headers must not be used: Keep-Alive, Transfer-Encoding, TE,
            # Connection, Trailer, and Upgrade." (+ Proxy-Authorization, Proxy-Authenticate)
            raise invalid(where, entry, f"The hop-by-hop header {name} must not be used as a custom header.")
        if lower.startswith(facts.RESERVED_HEADER_PREFIXES):
            # "The header name must not begin with X-Google, X-Goog-, X-GFE or X-Amz-."
            raise invalid(where, entry, "The header name must not begin with X-Google, X-Goog-, X-GFE or X-Amz-.")
        if lower in facts.FORBIDDEN_HEADER_NAMES:
            # "The header name must not be X-User-IP or CDN-Loop." (global ALB page: nor "authority")
            raise invalid(where, entry, f"The header name must not be {name}.")
        if lower in seen:
            # "A header name must not appear more than once in the list of added headers."
            raise invalid(where, entry, f"The header {name} appears more than once (also at [{seen[lower]}]).")
        seen[lower] = i
        total += len(name.encode()) + len(value.strip().encode())
    if total > facts.CUSTOM_HEADERS_MAX_BYTES:
        # "Total size of all custom request headers per backend service (name and value combined,
        # before variable expansion): 8 KB."
        raise invalid(field, f"{total} bytes", "The custom request headers exceed 8 KB (names and values combined).")
