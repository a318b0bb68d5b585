"""Cloud Armor security policy rules, pure: the checks Google makes when a rule is written.

Input is a rule in the Compute REST shape (a dict, camelCase, as ``addRule`` takes it). Every check
cites gcp-facts §3 or the compute.proto text it comes from; ``RuleError`` renders Compute's 400 wording
("Invalid value for field 'resource.<field>': '<value>'. <reason>"), which is what the local cloud's
Compute API answers and what ``deployer check`` can show before anything is sent.

Real Google messages we know (and reuse verbatim):
- "Rate limit options must be specified if the action is 'fairshare', 'rate_based_ban' or 'throttle'.
  It cannot be specified for any other actions" (pulumi/pulumi-gcp#1432, a real 400).
- "Error parsing Cloud Armor rule matcher expression: …" (kubernetes/k8s.io#6979).
The other texts are ours (Google's are not recorded anywhere we found); they name the field, the
value and the rule.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from typing import Any

from deployer import facts
from deployer.cloudarmor.expression import ExpressionError, validate

RATE_LIMIT_OPTIONS_MESSAGE = (
    "Rate limit options must be specified if the action is 'fairshare', 'rate_based_ban' or 'throttle'. "
    "It cannot be specified for any other actions"
)
_PRIORITY_MAX = facts.ARMOR_DEFAULT_RULE_PRIORITY  # proto: "between 0 and 2147483647"


class RuleError(ValueError):
    """One invalid field of a rule: ``field`` is relative to the rule (``rateLimitOptions.…``)."""

    def __init__(self, field: str, value: Any, reason: str, *, required: bool = False) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        self.required = required
        super().__init__(self.message())

    def message(self, prefix: str = "resource") -> str:
        path = f"{prefix}.{self.field}" if prefix and self.field else (self.field or prefix)
        if self.required:
            return f"Required field '{path}' not specified"
        return f"Invalid value for field '{path}': '{render_value(self.value)}'. {self.reason}"

    def under(self, parent: str) -> RuleError:
        """The same error for a rule nested at ``parent`` (e.g. ``rules[2]``)."""
        return RuleError(
            f"{parent}.{self.field}" if self.field else parent, self.value, self.reason, required=self.required
        )


def render_value(value: Any) -> str:
    """A value as Compute quotes it in errors: scalars as text, objects as (truncated) JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        # Google renders the object as indented JSON with the newlines removed and \u0027 for '.
        text = json.dumps(value, indent=2).replace("\n", "").replace("'", "\\u0027")
        return text if len(text) <= 100 else text[:100] + "..."
    return str(value)


def _int(rule: Mapping[str, Any], key: str, field: str) -> int | None:
    value = rule.get(key)
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise RuleError(field, value, "Must be an integer.") from exc


# ---- the rule ----------------------------------------------------------------------------------
def validate_rule(rule: Mapping[str, Any], *, policy_type: str = "CLOUD_ARMOR") -> None:
    """Raise ``RuleError`` for the first thing Cloud Armor would refuse in ``rule``."""
    priority = _int(rule, "priority", "priority")
    if priority is None:
        raise RuleError("priority", None, "", required=True)
    if not 0 <= priority <= _PRIORITY_MAX:
        # proto: "The priority must be a positive value between 0 and 2147483647."
        raise RuleError("priority", priority, f"The priority must be between 0 and {_PRIORITY_MAX}.")
    action = rule.get("action")
    if not action:
        raise RuleError("action", None, "", required=True)
    validate_action(str(action), policy_type)
    validate_match(rule.get("match"))
    validate_rate_limit_options(str(action), rule.get("rateLimitOptions"))
    if rule.get("redirectOptions") is not None and action != "redirect":
        # proto redirect_options: "Cannot be specified for any other actions."
        raise RuleError("redirectOptions", rule["redirectOptions"], "Redirect options can only be set for a redirect.")


def validate_action(action: str, policy_type: str = "CLOUD_ARMOR") -> None:
    # compute.proto SecurityPolicyRule.action (facts.ARMOR_RULE_ACTIONS).
    if action not in facts.ARMOR_RULE_ACTIONS:
        raise RuleError(
            "action",
            action,
            "Valid actions are allow, deny(403), deny(404), deny(502), rate_based_ban, redirect and throttle.",
        )
    if action == "fairshare" and policy_type != "CLOUD_ARMOR_INTERNAL_SERVICE":
        raise RuleError("action", action, "fairshare is only allowed in policies of type CLOUD_ARMOR_INTERNAL_SERVICE.")


def validate_match(match: Any) -> None:
    """``versionedExpr: SRC_IPS_V1`` with ``config.srcIpRanges``, or ``expr.expression`` (gcp-facts §3.4)."""
    if not isinstance(match, Mapping) or not match:
        raise RuleError("match", None, "", required=True)
    versioned = match.get("versionedExpr")
    expr = match.get("expr")
    if versioned is not None and expr is not None:
        raise RuleError("match", match, "Specify either versionedExpr with config, or expr, not both.")
    if expr is not None:
        expression = expr.get("expression") if isinstance(expr, Mapping) else None
        if not expression:
            raise RuleError("match.expr.expression", None, "", required=True)
        try:
            validate(str(expression))
        except ExpressionError as exc:
            raise RuleError("match.expr", expr, exc.message) from exc
        return
    if versioned is None:
        raise RuleError("match", match, "A match needs versionedExpr (with config.srcIpRanges) or expr.")
    if versioned not in facts.ARMOR_VERSIONED_EXPRS:
        raise RuleError("match.versionedExpr", versioned, "The only versioned expression is SRC_IPS_V1.")
    config = match.get("config")
    ranges = config.get("srcIpRanges") if isinstance(config, Mapping) else None
    if not ranges:
        # proto: "SRC_IPS_V1 - must specify the corresponding src_ip_range field in config."
        raise RuleError("match.config.srcIpRanges", None, "", required=True)
    for i, value in enumerate(ranges):
        if value == "*":
            continue
        try:
            ipaddress.ip_network(str(value), strict=False)
        except ValueError as exc:
            raise RuleError(f"match.config.srcIpRanges[{i}]", value, "Not a valid IP address or range.") from exc


# ---- rate limits (gcp-facts §3.2) --------------------------------------------------------------
def validate_rate_limit_options(action: str, options: Any) -> None:
    """The ``rateLimitOptions`` rules of §3.2 for a rule whose action is ``action``."""
    rate_limited = action in facts.ARMOR_RATE_LIMIT_ACTIONS
    if rate_limited != (options is not None):
        # The real message (pulumi/pulumi-gcp#1432); Google quotes the value as ''.
        raise RuleError("rateLimitOptions", "", RATE_LIMIT_OPTIONS_MESSAGE)
    if not rate_limited:
        return
    if not isinstance(options, Mapping):
        raise RuleError("rateLimitOptions", options, "Must be an object.")
    base = "rateLimitOptions"
    conform = options.get("conformAction")
    if conform is None:
        raise RuleError(f"{base}.conformAction", None, "", required=True)
    if conform not in facts.ARMOR_CONFORM_ACTIONS:
        # §3.2 conform_action: "Valid option is "allow" only."
        raise RuleError(f"{base}.conformAction", conform, 'Valid option is "allow" only.')
    exceed = options.get("exceedAction")
    if exceed is None:
        raise RuleError(f"{base}.exceedAction", None, "", required=True)
    if exceed not in (*facts.ARMOR_DENY_ACTIONS, "redirect"):
        # §3.2 exceed_action: "deny(STATUS), where valid values for STATUS are 403, 404, 429, and 502, and redirect"
        raise RuleError(
            f"{base}.exceedAction", exceed, "Valid options are deny(403), deny(404), deny(429), deny(502) and redirect."
        )
    if options.get("exceedRedirectOptions") is not None and exceed != "redirect":
        raise RuleError(
            f"{base}.exceedRedirectOptions", options["exceedRedirectOptions"], "Only for exceedAction redirect."
        )
    # §3.2 counts: throttle 1..1,000,000; rate_based_ban 1..10,000.
    count_max = facts.ARMOR_BAN_COUNT_MAX if action == "rate_based_ban" else facts.ARMOR_THROTTLE_COUNT_MAX
    threshold = options.get("rateLimitThreshold")
    if threshold is None:
        raise RuleError(f"{base}.rateLimitThreshold", None, "", required=True)
    _validate_threshold(threshold, f"{base}.rateLimitThreshold", count_max)
    ban_duration = _int(options, "banDurationSec", f"{base}.banDurationSec")
    ban_threshold = options.get("banThreshold")
    if action == "rate_based_ban":
        if ban_duration is None:
            raise RuleError(f"{base}.banDurationSec", None, "", required=True)
        if ban_duration not in facts.ARMOR_BAN_DURATIONS_S:
            # §3.2 ban_duration_sec "must be 60, 120, 180, 240, 300, 600, 900, 1200, 1800, 2700, or 3600 seconds."
            raise RuleError(
                f"{base}.banDurationSec", ban_duration, f"Must be one of {_seconds(facts.ARMOR_BAN_DURATIONS_S)}."
            )
        if ban_threshold is not None:
            _validate_threshold(ban_threshold, f"{base}.banThreshold", facts.ARMOR_BAN_COUNT_MAX)
    else:
        # §3.2 "ban_duration_sec and ban_threshold apply only to rate_based_ban."
        if ban_duration is not None:
            raise RuleError(
                f"{base}.banDurationSec", ban_duration, "Only a rate_based_ban rule can set a ban duration."
            )
        if ban_threshold is not None:
            raise RuleError(
                f"{base}.banThreshold", ban_threshold, "Only a rate_based_ban rule can set a ban threshold."
            )
    _validate_keys(options, base)


def _seconds(values: Iterable[int]) -> str:
    items = [str(v) for v in values]
    return ", ".join(items[:-1]) + f" or {items[-1]} seconds"


def _validate_threshold(threshold: Any, field: str, count_max: int) -> None:
    if not isinstance(threshold, Mapping):
        raise RuleError(field, threshold, "Must be an object with count and intervalSec.")
    count = _int(threshold, "count", f"{field}.count")
    if count is None:
        raise RuleError(f"{field}.count", None, "", required=True)
    if not 1 <= count <= count_max:
        raise RuleError(f"{field}.count", count, f"The count must be between 1 and {count_max:,}.")
    interval = _int(threshold, "intervalSec", f"{field}.intervalSec")
    if interval is None:
        raise RuleError(f"{field}.intervalSec", None, "", required=True)
    if interval not in facts.ARMOR_RATE_LIMIT_INTERVALS_S:
        # §3.2 "The value must be 10, 30, 60, 120, 180, 240, 300, 600, 900, 1200, 1800, 2700, or 3600 seconds."
        raise RuleError(
            f"{field}.intervalSec", interval, f"The value must be {_seconds(facts.ARMOR_RATE_LIMIT_INTERVALS_S)}."
        )


def _validate_keys(options: Mapping[str, Any], base: str) -> None:
    key = options.get("enforceOnKey")
    configs = options.get("enforceOnKeyConfigs")
    if key is not None and configs:
        # §3.2 "If enforce_on_key_configs is specified, enforce_on_key must not be specified."
        raise RuleError(f"{base}.enforceOnKey", key, "enforceOnKey must not be set together with enforceOnKeyConfigs.")
    if key is not None:
        _validate_key(str(key), options.get("enforceOnKeyName"), f"{base}.enforceOnKey")
    if configs:
        if len(configs) > facts.ARMOR_ENFORCE_ON_KEY_CONFIGS_MAX:
            # §3.2 "You can specify up to 3 enforce_on_key_configs."
            raise RuleError(f"{base}.enforceOnKeyConfigs", len(configs), "At most 3 enforceOnKeyConfigs are allowed.")
        for i, config in enumerate(configs):
            config = config if isinstance(config, Mapping) else {}
            _validate_key(
                str(config.get("enforceOnKeyType", "ALL")),
                config.get("enforceOnKeyName"),
                f"{base}.enforceOnKeyConfigs[{i}].enforceOnKeyType",
            )


def _validate_key(key: str, name: Any, field: str) -> None:
    if key not in facts.ARMOR_ENFORCE_ON_KEYS:
        raise RuleError(field, key, f"Valid values are {', '.join(facts.ARMOR_ENFORCE_ON_KEYS)}.")
    # §3.2 "enforce_on_key_name is used for HTTP_HEADER and HTTP_COOKIE."
    if key in ("HTTP_HEADER", "HTTP_COOKIE") and not name:
        raise RuleError(field.replace("Type", "") + "Name", None, "", required=True)


# ---- rule changes and sets ---------------------------------------------------------------------
def validate_action_change(old_action: str, new_action: str) -> None:
    """§3.2 "When you configure a rule with a rate-based ban action, you can't change it to a throttle
    action later. However, … throttle … you can change it to a rate-based ban action later.\""""
    if old_action == "rate_based_ban" and new_action == "throttle":
        raise RuleError("action", new_action, "A rate_based_ban rule cannot be changed to a throttle rule.")


def validate_priorities(rules: Iterable[Mapping[str, Any]]) -> None:
    """§3.1 "You cannot configure two or more rules with the same priority." (fields ``rules[i].priority``)."""
    seen: dict[int, int] = {}
    for i, rule in enumerate(rules):
        priority = int(rule.get("priority", 0))
        if priority in seen:
            raise RuleError(
                f"rules[{i}].priority",
                priority,
                f"Rules rules[{seen[priority]}] and rules[{i}] have the same priority; each priority can be used once.",
            )
        seen[priority] = i


def default_rule() -> dict[str, Any]:
    """The rule a policy created without one gets (§3.1: the proto says action 'allow'; see facts)."""
    return {
        "action": facts.ARMOR_DEFAULT_RULE_ACTION,
        "description": "default rule",
        "match": {"config": {"srcIpRanges": ["*"]}, "versionedExpr": "SRC_IPS_V1"},
        "priority": facts.ARMOR_DEFAULT_RULE_PRIORITY,
    }
