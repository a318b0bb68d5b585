"""Cloud Armor rules: the policy's rules this config owns (gcp-facts §3).

Expressions are parsed with ``deployer.cloudarmor.expression`` (the same parser the local cloud's
Compute API uses at write time), so ``check`` and the API agree on what is valid.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from deployer import facts
from deployer.cloudarmor.expression import Expression, ExpressionError, RequestAttributes, parse
from deployer.config import ArmorRule, DeployConfig
from deployer.model import Observed
from deployer.preflight.base import Finding, Rule, Severity, policy_resource, register

ERROR, WARNING, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO

DOC_LANGUAGE = "https://cloud.google.com/armor/docs/rules-language-reference"
DOC_RATE_LIMITS = "https://cloud.google.com/armor/docs/rate-limiting-overview"
DOC_OVERVIEW = "https://cloud.google.com/armor/docs/security-policy-overview"
DOC_RULE_API = "https://cloud.google.com/compute/docs/reference/rest/v1/securityPolicies"

# gcp-facts §3.4 (inference from Google's language reference): the recommended WebSocket match.
WS_MATCH = "has(request.headers['upgrade']) && request.headers['upgrade'].lower().contains('websocket') && " + (
    "request.path.matches('^/ws(?:/|$)')"
)


def _rule_field(i: int, key: str) -> str:
    return f"armor.rules[{i}].{key}"


def _rules(config: DeployConfig) -> list[tuple[int, ArmorRule]]:
    return list(enumerate(config.armor.rules)) if config.armor is not None else []


def _parsed(rule: ArmorRule) -> Expression | None:
    if rule.expression is None:
        return None
    try:
        return parse(rule.expression)
    except ExpressionError:
        return None


# ---- AR001: expression syntax -------------------------------------------------------------------
# gcp-facts §3.4: Expr.expression is "Textual representation of an expression in Common Expression
# Language syntax"; Google answers 400 "Error parsing Cloud Armor rule matcher expression: ..." for what
# it cannot parse (the prefix is from a real error; see cloudarmor/expression.py).
AR001 = Rule("AR001", ERROR, "Cloud Armor expression does not parse", DOC_LANGUAGE)


@register(AR001)
def expression_syntax(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    for i, rule in _rules(config):
        if rule.expression is None:
            continue
        try:
            parse(rule.expression)
        except ExpressionError as exc:
            yield AR001.at(
                policy_resource(config),
                _rule_field(i, "expression"),
                f"rule {rule.priority}: {exc.message}",
                "fix the expression; e.g. for WebSocket upgrades: " + WS_MATCH,
            )


# ---- AR002: at most five subexpressions ---------------------------------------------------------
# gcp-facts §3.4: "An advanced match condition contains an expression with up to five subexpressions".
AR002 = Rule("AR002", ERROR, "More than five subexpressions in one rule", DOC_LANGUAGE)


@register(AR002)
def subexpressions(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    for i, rule in _rules(config):
        expr = _parsed(rule)
        if expr is None:
            continue
        count = expr.subexpressions()
        if count > facts.ARMOR_MAX_SUBEXPRESSIONS:
            yield AR002.at(
                policy_resource(config),
                _rule_field(i, "expression"),
                f'rule {rule.priority} has {count} subexpressions: "An advanced match condition contains an expression '
                f'with up to five subexpressions".',
                "split it into several rules (one per condition group), or combine paths into one matches() regex",
            )


# ---- AR003: header lookups without has() ---------------------------------------------------------
# gcp-facts §3.4: m['k'] "returns an error" when k is missing; "Recommended approach is to first check for
# availability using has(), such as has(request.headers['header-key']) && …"
AR003 = Rule("AR003", WARNING, "Header lookup without has()", DOC_LANGUAGE)


@register(AR003)
def unguarded_headers(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    for i, rule in _rules(config):
        expr = _parsed(rule)
        if expr is None:
            continue
        missing = expr.header_lookups_without_has()
        if not missing:
            continue
        guards = " && ".join(f"has(request.headers['{k}'])" for k in missing)
        yield AR003.at(
            policy_resource(config),
            _rule_field(i, "expression"),
            f"rule {rule.priority} reads {', '.join(repr(k) for k in missing)} without has(): a request without the "
            f'header makes the lookup an error ("returns an error"); Google: "Recommended approach is to first check '
            f'for availability using has()".',
            f"{guards} && {rule.expression}",
        )


# ---- AR004: rate-limit options ------------------------------------------------------------------
# gcp-facts §3.2: rate_limit_options "Must be specified if the action is "rate_based_ban" or "throttle" or
# "fairshare". Cannot be specified for any other actions."; interval_sec "must be 10, 30, 60, 120, 180,
# 240, 300, 600, 900, 1200, 1800, 2700, or 3600 seconds"; throttle count 1..1,000,000; rate_based_ban
# count 1..10,000; ban_duration_sec "must be 60, 120, …, 3600"; conform_action "Valid option is "allow"
# only"; exceed_action deny(403|404|429|502) or redirect; enforce_on_key_name for HTTP_HEADER/HTTP_COOKIE.
AR004 = Rule("AR004", ERROR, "Invalid rate-limit options", DOC_RATE_LIMITS)


def _rate_limit_problems(rule: ArmorRule) -> Iterator[tuple[str, str, str]]:
    """(config key under the rule, message, fix) for each problem."""
    rl = rule.rate_limit
    needs = rule.action in facts.ARMOR_RATE_LIMIT_ACTIONS
    if needs and rl is None:
        yield (
            "rate_limit",
            f'action {rule.action} "Requires rate_limit_options to be set".',
            "rate_limit: {count: 100, interval_sec: 60, enforce_on_key: IP, exceed_action: deny(429)}",
        )
        return
    if rl is None:
        return
    if not needs:
        yield (
            "rate_limit",
            f'rate_limit on a rule whose action is {rule.action}: rate_limit_options "Cannot be specified for any '
            f'other actions" than throttle, rate_based_ban or fairshare.',
            "action: throttle, or remove rate_limit",
        )
        return
    intervals = ", ".join(str(s) for s in facts.ARMOR_RATE_LIMIT_INTERVALS_S)
    if rl.interval_sec not in facts.ARMOR_RATE_LIMIT_INTERVALS_S:
        nearest = min(facts.ARMOR_RATE_LIMIT_INTERVALS_S, key=lambda s: abs(s - rl.interval_sec))
        yield (
            "rate_limit.interval_sec",
            f'interval_sec {rl.interval_sec}: "The value must be {intervals} seconds."',
            f"interval_sec: {nearest}",
        )
    top = facts.ARMOR_BAN_COUNT_MAX if rule.action == "rate_based_ban" else facts.ARMOR_THROTTLE_COUNT_MAX
    if not 1 <= rl.count <= top:
        yield (
            "rate_limit.count",
            f'count {rl.count} for {rule.action}: "The minimum value is 1 and the maximum value is {top:,}."',
            f"count: {min(max(rl.count, 1), top)}",
        )
    if rl.conform_action not in facts.ARMOR_CONFORM_ACTIONS:
        yield (
            "rate_limit.conform_action",
            f'conform_action {rl.conform_action!r}: "Valid option is "allow" only."',
            "conform_action: allow",
        )
    if rl.exceed_action != "redirect" and rl.exceed_action not in facts.ARMOR_DENY_ACTIONS:
        yield (
            "rate_limit.exceed_action",
            f"exceed_action {rl.exceed_action!r}: valid values are deny(STATUS) with STATUS 403, 404, 429 or 502, "
            f'and redirect; "We recommend using the 429 Too Many Requests status code."',
            "exceed_action: deny(429)",
        )
    keyed = rl.enforce_on_key in ("HTTP_HEADER", "HTTP_COOKIE")
    if keyed and not rl.enforce_on_key_name:
        yield (
            "rate_limit.enforce_on_key_name",
            f"enforce_on_key {rl.enforce_on_key} needs enforce_on_key_name (the header or cookie to key on).",
            "enforce_on_key_name: x-client-id",
        )
    if rl.enforce_on_key_name and not keyed:
        yield (
            "rate_limit.enforce_on_key_name",
            "enforce_on_key_name is used only with enforce_on_key HTTP_HEADER or HTTP_COOKIE.",
            "remove enforce_on_key_name, or enforce_on_key: HTTP_HEADER",
        )
    ban_only = rule.action != "rate_based_ban"
    if rl.ban_duration_sec is not None:
        if ban_only:
            yield ("rate_limit.ban_duration_sec", "ban_duration_sec applies only to rate_based_ban.", "remove it")
        elif rl.ban_duration_sec not in facts.ARMOR_BAN_DURATIONS_S:
            durations = ", ".join(str(s) for s in facts.ARMOR_BAN_DURATIONS_S)
            yield (
                "rate_limit.ban_duration_sec",
                f'ban_duration_sec {rl.ban_duration_sec}: "must be {durations} seconds."',
                "ban_duration_sec: 600",
            )
    if rl.ban_threshold is not None:
        if ban_only:
            yield ("rate_limit.ban_threshold", "ban_threshold applies only to rate_based_ban.", "remove it")
        elif rl.ban_threshold.interval_sec not in facts.ARMOR_RATE_LIMIT_INTERVALS_S:
            yield (
                "rate_limit.ban_threshold.interval_sec",
                f"ban_threshold.interval_sec {rl.ban_threshold.interval_sec}: the allowed values are those of "
                f"interval_sec ({intervals}).",
                "interval_sec: 600",
            )


@register(AR004)
def rate_limits(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    for i, rule in _rules(config):
        for key, message, fix in _rate_limit_problems(rule):
            yield AR004.at(policy_resource(config), _rule_field(i, key), f"rule {rule.priority}: {message}", fix)


# ---- AR005: an allow rule that exempts WebSocket upgrades from every rate limit -------------------
# gcp-facts §3.1: "Cloud Armor performs the action of the highest priority rule that matches a request.
# Rules with a lower priority than the highest priority matching rule are not evaluated"; §3.3: a
# WebSocket is one request (the upgrade) to Cloud Armor, so rate limits must count connection attempts.
# An allow for upgrades placed before the rate limits lets any client open sockets without limit.
AR005 = Rule("AR005", WARNING, "Allow rule exempts WebSocket upgrades from every rate limit", DOC_OVERVIEW)


@dataclass(frozen=True)
class _PolicyRule:
    priority: int
    action: str
    preview: bool
    matches_upgrade: bool
    index: int | None  # index in config.armor.rules, None for live-only rules


def _upgrade_request(config: DeployConfig) -> RequestAttributes:
    path = config.gate.public.path or "/ws"
    return RequestAttributes.from_http(
        "GET",
        path,
        [
            ("Host", "api.example.com"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        scheme="https",
        origin_ip="203.0.113.7",
    )


def _matches(expression: str | None, src_ip_ranges: list[str] | None, request: RequestAttributes) -> bool:
    if expression is not None:
        try:
            return parse(expression).evaluate(request)
        except ExpressionError:
            return False
    return "*" in (src_ip_ranges or [])  # an IP list other than "*" is not about WebSockets


def _live_rule(rule: dict[str, Any], request: RequestAttributes) -> _PolicyRule:
    match = rule.get("match") or {}
    expression = (match.get("expr") or {}).get("expression")
    ranges = (match.get("config") or {}).get("srcIpRanges")
    return _PolicyRule(
        priority=int(rule.get("priority", 0)),
        action=str(rule.get("action", "")),
        preview=bool(rule.get("preview", False)),
        matches_upgrade=_matches(expression, ranges, request),
        index=None,
    )


def effective_rules(config: DeployConfig, live: Observed | None) -> list[_PolicyRule]:
    """The policy as it will be after a deploy: the config's rules, plus live rules at other priorities."""
    request = _upgrade_request(config)
    rules = {
        r.priority: _PolicyRule(r.priority, r.action, r.preview, _matches(r.expression, r.src_ip_ranges, request), i)
        for i, r in _rules(config)
    }
    if live is not None:
        for priority, raw in live.armor_rules().items():
            if priority not in rules and priority != facts.ARMOR_DEFAULT_RULE_PRIORITY:
                rules[priority] = _live_rule(raw, request)
    return [rules[p] for p in sorted(rules)]


@register(AR005)
def websocket_exemption(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    if config.armor is None:
        return
    enforced = [r for r in effective_rules(config, live) if not r.preview and r.matches_upgrade]
    if not enforced or enforced[0].action != "allow" or enforced[0].index is None:
        return
    first, index = enforced[0], enforced[0].index
    shadowed = [r for r in enforced[1:] if r.action in facts.ARMOR_RATE_LIMIT_ACTIONS]
    if not shadowed:
        return
    rule = config.armor.rules[index]
    limits = ", ".join(f"{r.priority} ({r.action})" for r in shadowed)
    yield AR005.at(
        policy_resource(config),
        _rule_field(index, "action"),
        f"rule {first.priority} allows WebSocket upgrades before every rate limit that would count them ({limits}): "
        f'"Cloud Armor performs the action of the highest priority rule that matches a request. Rules with a lower '
        f'priority … are not evaluated." To Cloud Armor a WebSocket is one request — its upgrade — so this is an '
        f"open door for connection floods.",
        f'priority: {rule.priority}, action: throttle, expression: "{WS_MATCH}", rate_limit: {{count: 60, '
        f"interval_sec: 60, enforce_on_key: IP, exceed_action: deny(429)}}",
    )


# ---- AR006: new deny rules not first in preview -------------------------------------------------
# gcp-facts §3.1: the first matching rule decides; a wrong deny rule blocks users at once. Cloud Armor's
# preview mode logs what a rule would do without enforcing it (SecurityPolicyRule.preview).
AR006 = Rule("AR006", INFO, "New deny rule not in preview first", DOC_OVERVIEW)


@register(AR006)
def deny_preview(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    live_rules = live.armor_rules() if live is not None else {}
    for i, rule in _rules(config):
        if not rule.action.startswith("deny") or rule.preview:
            continue
        existing = live_rules.get(rule.priority)
        if existing is not None and str(existing.get("action", "")).startswith("deny"):
            continue  # already enforced live: not new
        yield AR006.at(
            policy_resource(config),
            _rule_field(i, "preview"),
            f"rule {rule.priority} ({rule.action}) is new and enforced at once; a deny rule that matches more than "
            f"intended blocks users (and WebSocket handshakes) the moment it lands.",
            "preview: true for one deploy; read the Cloud Armor logs; then preview: false",
        )


# ---- AR007: priorities --------------------------------------------------------------------------
# gcp-facts §3.1: "You cannot configure two or more rules with the same priority. The priority for each rule
# must be set to a number from 0 to 2147483646 inclusive. The priority value 2147483647, also known as
# INT-MAX, is reserved for the default rule."
AR007 = Rule("AR007", ERROR, "Rule priority out of range, reserved or duplicated", DOC_OVERVIEW)


@register(AR007)
def priorities(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    seen: dict[int, int] = {}
    for i, rule in _rules(config):
        p = rule.priority
        if p == facts.ARMOR_DEFAULT_RULE_PRIORITY:
            yield AR007.at(
                policy_resource(config),
                _rule_field(i, "priority"),
                '"The priority value 2147483647, also known as INT-MAX, is reserved for the default rule."',
                f"armor.default_action: {rule.action}  (and remove this rule)",
            )
        elif p > facts.ARMOR_PRIORITY_MAX:
            yield AR007.at(
                policy_resource(config),
                _rule_field(i, "priority"),
                f'priority {p}: "The priority for each rule must be set to a number from 0 to 2147483646 inclusive."',
                "priority: 1000",
            )
        if p in seen:
            yield AR007.at(
                policy_resource(config),
                _rule_field(i, "priority"),
                f'priority {p} is used twice (also armor.rules[{seen[p]}]): "You cannot configure two or more rules '
                f'with the same priority."',
                f"priority: {p + 1}",
            )
        seen.setdefault(p, i)


# ---- AR008: rule actions ------------------------------------------------------------------------
# gcp-facts §3.2 and compute.proto SecurityPolicyRule.action: allow, deny(STATUS) with STATUS 403, 404 or
# 502 (429 only as a rate limit's exceed action), throttle, rate_based_ban, redirect (needs
# redirectOptions, which this config cannot express), fairshare (only for CLOUD_ARMOR_INTERNAL_SERVICE).
AR008 = Rule("AR008", ERROR, "Invalid rule action", DOC_RULE_API)


def _action_problem(action: str) -> tuple[str, str] | None:
    if action in ("allow", "throttle", "rate_based_ban"):
        return None
    if action in facts.ARMOR_RULE_DENY_ACTIONS:
        return None
    if action == "deny" or action.startswith("deny("):
        allowed = ", ".join(facts.ARMOR_RULE_DENY_ACTIONS)
        return f"action {action!r}: a deny rule returns one of {allowed}.", "action: deny(403)"
    if action == "redirect":
        return "action redirect needs redirect options, which this config cannot express.", "action: deny(403)"
    if action == "fairshare":
        return (
            'action fairshare is "only allowed in security policies of type CLOUD_ARMOR_INTERNAL_SERVICE".',
            "action: throttle",
        )
    return f"action {action!r} is not a Cloud Armor action.", "action: allow"


@register(AR008)
def actions(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    if config.armor is None:
        return
    for i, rule in _rules(config):
        problem = _action_problem(rule.action)
        if problem is not None:
            yield AR008.at(
                policy_resource(config), _rule_field(i, "action"), f"rule {rule.priority}: {problem[0]}", problem[1]
            )
    default = config.armor.default_action
    if default is not None and (default not in ("allow", *facts.ARMOR_RULE_DENY_ACTIONS)):
        yield AR008.at(
            policy_resource(config),
            "armor.default_action",
            f"default_action {default!r}: the default rule allows or denies (deny(403), deny(404), deny(502)).",
            "default_action: allow",
        )


# ---- AR009: rate_based_ban → throttle ------------------------------------------------------------
# gcp-facts §3.2: "When you configure a rule with a rate-based ban action, you can't change it to a
# throttle action later."
AR009 = Rule("AR009", ERROR, "rate_based_ban rule changed to throttle", DOC_RATE_LIMITS, needs_live=True)


@register(AR009)
def ban_to_throttle(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    if live is None:
        return
    live_rules = live.armor_rules()
    for i, rule in _rules(config):
        before = live_rules.get(rule.priority)
        if before is not None and before.get("action") == "rate_based_ban" and rule.action == "throttle":
            yield AR009.at(
                policy_resource(config),
                _rule_field(i, "action"),
                f"live rule {rule.priority} is rate_based_ban: "
                "\"When you configure a rule with a rate-based ban action, you can't change it to a throttle action "
                'later."',
                f"keep action: rate_based_ban, or use a new priority (e.g. {rule.priority + 1}) for the throttle rule "
                f"and remove {rule.priority}",
            )
