"""Cloud Armor decisions, pure: a security policy (REST dict) + one request → a ``Decision``.

Expressions are compiled by an injected ``compile_expr`` (the load balancer passes the Cloud Armor
language in ``deployer.cloudarmor``); time comes from an injected clock; rate-limit state lives in a
``RateCounters`` value. No sockets here.

Rules enforced, with their sources:
- gcp-facts §3.1: rules are evaluated "from the lowest number to the highest number"; "Cloud Armor
  performs the action of the highest priority rule that matches a request. Rules with a lower priority
  than the highest priority matching rule are not evaluated".
- ``SecurityPolicyRule.preview``: "If set to true, the specified action is not enforced." [G-proto]
  A matching preview rule is recorded in the decision and evaluation goes on. [Inference] a preview
  rate-limit rule still counts its requests (so the preview shows what enforcement would have done).
- actions ``allow``, ``deny(STATUS)`` with 403/404/429/502 (§3.2), ``throttle`` and
  ``rate_based_ban`` with ``rateLimitOptions`` (§3.2): ``conformAction`` is always allow;
  ``exceedAction`` is ``deny(STATUS)`` or ``redirect``; ``rateLimitThreshold`` ``{count, intervalSec}``.
- ``enforceOnKey`` ALL / IP / HTTP_HEADER / XFF_IP / HTTP_COOKIE / HTTP_PATH / SNI / REGION_CODE / USER_IP
  and the fallbacks in its field doc ([G-proto] ``SecurityPolicyRuleRateLimitOptions.enforce_on_key``):
  "HTTP_HEADER … If no such header is present in the request, the key type defaults to ALL";
  "XFF_IP: The first IP address … under X-Forwarded-For … If no such header is present or the value is
  not a valid IP, the key defaults to the source IP address"; keys are "truncated to the first 128
  bytes"; "SNI … defaults to ALL on a HTTP session". ``enforceOnKeyConfigs`` (up to 3) combine keys.
- rate-based ban ([G-proto] ``ban_threshold``/``ban_duration_sec``): above ``rateLimitThreshold`` the
  exceed action applies; with a ``banThreshold``, "the key will be banned for the configured
  'ban_duration_sec' when the number of requests that exceed the 'rate_limit_threshold' also exceed this
  'ban_threshold'"; without one, exceeding the rate threshold bans the key. During a ban every request
  of the key gets the exceed action; ``banDurationSec`` is "the time (in seconds) the traffic will
  continue to be banned by the rate limit after the rate falls below the threshold" — so the ban runs
  until ``banDurationSec`` after the last request that exceeded.
- counters: "Cloud Armor applies the rate limiting threshold to each associated backend" (§3.2): the
  counter key includes the backend service. Google says enforced limits "are approximate" (§3.2); the
  local model is exact: a fixed window of ``intervalSec`` starting at the key's first request.
- a WebSocket is one request, its upgrade (§3.3): the load balancer asks once per handshake.
- an expression that fails at evaluation (e.g. a missing header read without ``has()``, §3.4) does not
  match ([Inference]: the reference says the map lookup "returns an error").
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from deployer import facts
from deployer.cloudarmor.expression import RequestAttributes

Matcher = Callable[["RequestInfo"], bool]
CompileExpr = Callable[[str], Matcher]

KEY_MAX_BYTES = 128
_DENY = re.compile(r"^deny\((\d{3})\)$")


@dataclass(frozen=True)
class RequestInfo(RequestAttributes):
    """What Cloud Armor sees of one request: the rules language's attributes (headers with lower-case
    keys, §3.4), plus the cookies and SNI that rate-limit keys read."""

    cookies: Mapping[str, str] = field(default_factory=dict)
    sni: str = ""


@dataclass(frozen=True)
class PreviewHit:
    priority: int
    action: str
    outcome: str  # what enforcement would have done: allow | deny(N) | redirect


@dataclass(frozen=True)
class Decision:
    """The outcome for one request. ``outcome``: ``allow``, ``deny(N)`` or ``redirect``."""

    outcome: str
    priority: int | None = None
    rule_action: str = ""
    status: int | None = None
    redirect_to: str | None = None
    rate_key: str | None = None
    rate_state: str = ""  # conform | exceed | banned (rate-limit rules only)
    preview: tuple[PreviewHit, ...] = ()
    errors: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.outcome == "allow"

    def as_log(self) -> dict[str, Any]:
        out: dict[str, Any] = {"outcome": self.outcome, "priority": self.priority, "action": self.rule_action}
        if self.rate_key is not None:
            out["rate_key"] = self.rate_key
            out["rate_state"] = self.rate_state
        if self.preview:
            out["preview"] = [{"priority": p.priority, "action": p.action, "outcome": p.outcome} for p in self.preview]
        if self.errors:
            out["errors"] = list(self.errors)
        return out


ALLOW_NO_POLICY = Decision(outcome="allow")


# ---- rate counters ---------------------------------------------------------------------------


@dataclass
class _Window:
    start: float
    count: int = 0


@dataclass
class _BanState:
    window: _Window | None = None  # counts requests above the rate threshold (banThreshold)
    until: float = 0.0


class RateCounters:
    """Per (scope, rule, key) windows and bans. ``now`` is always passed in (injected clock)."""

    def __init__(self) -> None:
        self._windows: dict[tuple[str, int, str], _Window] = {}
        self._bans: dict[tuple[str, int, str], _BanState] = {}

    def clear(self) -> None:
        self._windows.clear()
        self._bans.clear()

    def _count(self, key: tuple[str, int, str], interval: float, now: float) -> int:
        window = self._windows.get(key)
        if window is None or now >= window.start + interval:
            window = _Window(start=now)
            self._windows[key] = window
        window.count += 1
        return window.count

    def throttle(self, key: tuple[str, int, str], count: int, interval: float, now: float) -> bool:
        """True when the request conforms (is within ``count`` per ``interval``)."""
        return self._count(key, interval, now) <= count

    def rate_based_ban(
        self,
        key: tuple[str, int, str],
        count: int,
        interval: float,
        ban_duration: float,
        ban_count: int | None,
        ban_interval: float | None,
        now: float,
    ) -> str:
        """``conform``, ``exceed`` (over the rate, not banned) or ``banned``."""
        ban = self._bans.setdefault(key, _BanState())
        conform = self._count(key, interval, now) <= count
        if conform:
            return "banned" if now < ban.until else "conform"
        if ban_count is None or ban_interval is None:
            ban.until = now + ban_duration
            return "banned"
        if ban.window is None or now >= ban.window.start + ban_interval:
            ban.window = _Window(start=now)
        ban.window.count += 1
        if ban.window.count > ban_count:
            ban.until = now + ban_duration
        return "banned" if now < ban.until else "exceed"


# ---- matching --------------------------------------------------------------------------------


def _ip_in_ranges(ip: str, ranges: list[str]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    for cidr in ranges:
        if cidr.strip() == "*":
            return True
        try:
            if addr in ipaddress.ip_network(cidr.strip(), strict=False):
                return True
        except ValueError:
            continue
    return False


def rule_matches(rule: Mapping[str, Any], request: RequestInfo, compile_expr: CompileExpr) -> tuple[bool, str | None]:
    """(matched, error). Errors never match."""
    match = rule.get("match") or {}
    versioned = match.get("versionedExpr")
    if versioned:
        if versioned != "SRC_IPS_V1":
            return False, f"unsupported versionedExpr {versioned}"
        ranges = list((match.get("config") or {}).get("srcIpRanges") or [])
        return _ip_in_ranges(request.origin_ip, ranges), None
    expr = (match.get("expr") or {}).get("expression")
    if expr is None:
        return False, "rule has no match condition"
    try:
        matcher = compile_expr(str(expr))
        return bool(matcher(request)), None
    except Exception as exc:
        return False, f"priority {rule.get('priority')}: {exc}"


# ---- keys ------------------------------------------------------------------------------------


def _truncate(value: str) -> str:
    return value.encode()[:KEY_MAX_BYTES].decode(errors="ignore")


def _first_xff_ip(request: RequestInfo) -> str | None:
    xff = request.headers.get("x-forwarded-for", "")
    first = xff.split(",")[0].strip() if xff else ""
    try:
        ipaddress.ip_address(first)
    except ValueError:
        return None
    return first


def _one_key(kind: str, name: str, request: RequestInfo) -> str:
    kind = (kind or "ALL").upper()
    if kind == "ALL":
        return "ALL"
    if kind in ("IP", "USER_IP"):
        return f"IP:{request.origin_ip}"
    if kind == "XFF_IP":
        first = _first_xff_ip(request)
        return f"XFF_IP:{first}" if first else f"IP:{request.origin_ip}"
    if kind == "HTTP_HEADER":
        value = request.headers.get(name.lower(), "")
        return f"HTTP_HEADER:{name.lower()}:{_truncate(value)}" if value else "ALL"
    if kind == "HTTP_COOKIE":
        value = request.cookies.get(name, "")
        return f"HTTP_COOKIE:{name}:{_truncate(value)}" if value else "ALL"
    if kind == "HTTP_PATH":
        return f"HTTP_PATH:{_truncate(request.path)}"
    if kind == "SNI":
        return f"SNI:{_truncate(request.sni)}" if request.scheme == "https" and request.sni else "ALL"
    if kind == "REGION_CODE":
        return f"REGION_CODE:{request.region_code}"
    return "ALL"  # TLS fingerprints / ASN: not available locally, documented fallback is ALL


def rate_key(options: Mapping[str, Any], request: RequestInfo) -> str:
    configs = options.get("enforceOnKeyConfigs") or []
    if configs:
        return "|".join(
            _one_key(str(c.get("enforceOnKeyType", "ALL")), str(c.get("enforceOnKeyName", "")), request)
            for c in configs
        )
    return _one_key(str(options.get("enforceOnKey", "ALL")), str(options.get("enforceOnKeyName", "")), request)


# ---- decisions -------------------------------------------------------------------------------


def deny_status(action: str) -> int | None:
    m = _DENY.match(action.strip())
    if not m:
        return None
    status = int(m.group(1))
    return status if status in facts.ARMOR_DENY_STATUSES else 403


def _outcome_of(action: str) -> str:
    """``deny(N)`` / ``redirect`` / ``allow`` (``deny`` alone is deny(403), as gcloud's ``deny``)."""
    action = action.strip()
    if action == "deny":
        return "deny(403)"
    status = deny_status(action)
    if status is not None:
        return f"deny({status})"
    if action == "redirect":
        return "redirect"
    return "allow"


def _rate_outcome(
    rule: Mapping[str, Any], scope: str, request: RequestInfo, counters: RateCounters, now: float
) -> tuple[str, str, str, str | None]:
    """(outcome, rate_state, key, redirect target) for throttle / rate_based_ban."""
    options = rule.get("rateLimitOptions") or {}
    threshold = options.get("rateLimitThreshold") or {}
    count = int(threshold.get("count", 0) or 0)
    interval = float(threshold.get("intervalSec", 60) or 60)
    key = rate_key(options, request)
    counter_key = (scope, int(rule.get("priority", 0)), key)
    exceed = str(options.get("exceedAction", "deny(429)") or "deny(429)")
    redirect = (options.get("exceedRedirectOptions") or {}).get("target")
    if str(rule.get("action")) == "throttle":
        state = "conform" if counters.throttle(counter_key, count, interval, now) else "exceed"
    else:
        ban = options.get("banThreshold") or None
        state = counters.rate_based_ban(
            counter_key,
            count,
            interval,
            float(options.get("banDurationSec", 60) or 60),
            int(ban["count"]) if ban and ban.get("count") is not None else None,
            float(ban.get("intervalSec", interval)) if ban else None,
            now,
        )
    if state == "conform":
        return "allow", state, key, None
    return _outcome_of(exceed), state, key, redirect


def decide(
    policy: Mapping[str, Any] | None,
    request: RequestInfo,
    *,
    compile_expr: CompileExpr,
    counters: RateCounters,
    now: float,
    scope: str = "",
) -> Decision:
    """Evaluate ``policy`` (a ``compute#securityPolicy`` dict) for one request."""
    if not policy:
        return ALLOW_NO_POLICY
    default = facts.ARMOR_DEFAULT_RULE_PRIORITY
    rules = sorted(policy.get("rules", []) or [], key=lambda r: int(r.get("priority", default)))
    previews: list[PreviewHit] = []
    errors: list[str] = []
    for rule in rules:
        matched, error = rule_matches(rule, request, compile_expr)
        if error:
            errors.append(error)
        if not matched:
            continue
        priority = int(rule.get("priority", facts.ARMOR_DEFAULT_RULE_PRIORITY))
        action = str(rule.get("action", "allow"))
        redirect_to: str | None = None
        key: str | None = None
        state = ""
        if action in ("throttle", "rate_based_ban"):
            outcome, state, key, redirect_to = _rate_outcome(rule, scope, request, counters, now)
        else:
            outcome = _outcome_of(action)
            if outcome == "redirect":
                redirect_to = (rule.get("redirectOptions") or {}).get("target")
        if rule.get("preview"):
            previews.append(PreviewHit(priority, action, outcome))
            continue
        return Decision(
            outcome=outcome,
            priority=priority,
            rule_action=action,
            status=deny_status(outcome),
            redirect_to=redirect_to,
            rate_key=key,
            rate_state=state,
            preview=tuple(previews),
            errors=tuple(errors),
        )
    return Decision(outcome="allow", preview=tuple(previews), errors=tuple(errors))


# ---- what the client sees ----------------------------------------------------------------------

_REASONS = {403: "Forbidden", 404: "Not Found", 429: "Too Many Requests", 502: "Bad Gateway"}


def deny_body(status: int) -> str:
    """Cloud Armor's deny page. The 403 form is captured verbatim in many reports ("<!doctype html><meta
    charset="utf-8"><meta name=viewport content="width=device-width, initial-scale=1"><title>403</title>403
    Forbidden"); DOUBT: the 404/429/502 pages are assumed to follow the same template."""
    return (
        '<!doctype html><meta charset="utf-8"><meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{status}</title>{status} {_REASONS.get(status, 'Forbidden')}"
    )
