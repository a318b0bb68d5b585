"""Load balancer rules: the backend service in front of a serverless NEG (gcp-facts §2, §5.1).

deployer deploys Cloud Run behind a serverless NEG, so offline the backend is taken to be one; with
``--live`` the NEGs behind the backend service are read, and rules that only hold for serverless
NEGs stand down when the backend has none.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from deployer import facts
from deployer.config import DeployConfig
from deployer.model import Observed
from deployer.preflight.base import Finding, Rule, Severity, backend_resource, register

ERROR, WARNING, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO

DOC_SERVERLESS_NEG = "https://cloud.google.com/load-balancing/docs/negs/serverless-neg-concepts"
DOC_CUSTOM_HEADERS = "https://cloud.google.com/load-balancing/docs/https/custom-headers-global"
DOC_QUOTAS = "https://cloud.google.com/load-balancing/docs/quotas"
DOC_WEBSOCKET_LB = "https://cloud.google.com/load-balancing/docs/https#websocket_proxy_support"
DOC_BACKEND_API = "https://cloud.google.com/compute/docs/reference/rest/v1/backendServices"
DOC_ARMOR_ATTACH = "https://cloud.google.com/armor/docs/configure-security-policies"

# RFC 7230 field-name = token (gcp-facts §2.5: "The header name must be a valid HTTP header-field name").
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def serverless_backend(config: DeployConfig, live: Observed | None) -> bool:
    """Whether the backend service is (taken to be) a serverless NEG backend."""
    if live is None or live.backend_service is None or not live.negs:
        return True  # offline, or nothing to tell: deployer's backends are serverless NEGs
    return bool(live.serverless_negs)


def header_name(header: str) -> str | None:
    """``"X-Forwarded-Proto: https"`` → ``"X-Forwarded-Proto"`` (None without a colon)."""
    if ":" not in header:
        return None
    return header.split(":", 1)[0].strip()


def _header_field(i: int) -> str:
    return f"load_balancer.custom_request_headers[{i}]"


# ---- LB001: timeoutSec with a serverless NEG ----------------------------------------------------
# gcp-facts §2.1: "Attempting to modify the backend service's resource.timeoutSec property results in the
# following error: Timeout sec is not supported for a backend service with Serverless network endpoint
# groups." and "For backend services with serverless NEG backends, the default timeout is 60 minutes.
# This timeout is not configurable." (real API: HTTP 400 "invalid"). Also refutes "max 30 s" (§6 f).
LB001 = Rule("LB001", ERROR, "timeout_sec on a serverless-NEG backend service (Google answers 400)", DOC_SERVERLESS_NEG)


@register(LB001)
def timeout_sec(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    lb = config.load_balancer
    if lb is None or lb.timeout_sec is None or not serverless_backend(config, live):
        return
    yield LB001.at(
        backend_resource(config),
        "load_balancer.timeout_sec",
        f'timeout_sec {lb.timeout_sec} on a backend service with a serverless NEG: Google answers HTTP 400 "Timeout '
        f'sec is not supported for a backend service with Serverless network endpoint groups." The load balancer '
        f'side is fixed: "the default timeout is 60 minutes. This timeout is not configurable." (not 30 s); a '
        f"WebSocket's lifetime is set by the Cloud Run request timeout.",
        "remove timeout_sec; set service.timeout (at most 3600) instead",
    )


# ---- LB002: hop-by-hop custom headers ------------------------------------------------------------
# gcp-facts §2.5: "The following hop-by-hop headers must not be used: Keep-Alive, Transfer-Encoding, TE,
# Connection, Trailer, and Upgrade." (global page: also Proxy-Authorization, Proxy-Authenticate);
# §2.3: "The load balancer doesn't require any configuration to proxy WebSocket connections."
LB002 = Rule("LB002", ERROR, "Hop-by-hop header as a custom request header", DOC_CUSTOM_HEADERS)


@register(LB002)
def hop_by_hop(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    lb = config.load_balancer
    if lb is None:
        return
    for i, header in enumerate(lb.custom_request_headers):
        name = header_name(header)
        if name is None or name.lower() not in facts.HOP_BY_HOP_HEADERS:
            continue
        websocket = name.lower() in ("connection", "upgrade")
        why = (
            ' and "The load balancer doesn\'t require any configuration to proxy WebSocket connections": it '
            "recognises the client's own Upgrade request"
            if websocket
            else ""
        )
        yield LB002.at(
            backend_resource(config),
            _header_field(i),
            f'custom header "{header}": "The following hop-by-hop headers must not be used: Keep-Alive, '
            f'Transfer-Encoding, TE, Connection, Trailer, and Upgrade" — they are not propagated by the target '
            f"proxies{why}.",
            f'remove "{header}" from custom_request_headers',
        )


# ---- LB003: reserved header names and prefixes ---------------------------------------------------
# gcp-facts §2.5: "The header name must not be X-User-IP or CDN-Loop." (global page adds "authority");
# "The header name must not begin with X-Google, X-Goog-, X-GFE or X-Amz-."
LB003 = Rule("LB003", ERROR, "Custom header with a reserved name or prefix", DOC_CUSTOM_HEADERS)


@register(LB003)
def reserved_header(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    lb = config.load_balancer
    if lb is None:
        return
    for i, header in enumerate(lb.custom_request_headers):
        name = header_name(header)
        if name is None:
            continue
        low = name.lower()
        prefix = next((p for p in facts.RESERVED_HEADER_PREFIXES if low.startswith(p)), None)
        if prefix is not None:
            rule = '"The header name must not begin with X-Google, X-Goog-, X-GFE or X-Amz-."'
        elif low in facts.FORBIDDEN_HEADER_NAMES:
            rule = '"The header name must not be X-User-IP or CDN-Loop." (nor authority)'
        else:
            continue
        yield LB003.at(
            backend_resource(config),
            _header_field(i),
            f'custom header "{header}": {rule}',
            f"rename it (e.g. X-App-{name.split('-')[-1] or 'Header'}) or remove it",
        )


# ---- LB004: header count and size ---------------------------------------------------------------
# gcp-facts §2.5: "Maximum number of configured custom request headers for each backend service: 16" and
# "Total size of all custom request headers per backend service (name and value combined, before variable
# expansion): 8 KB."
LB004 = Rule("LB004", ERROR, "More than 16 custom headers, or over 8 KB", DOC_QUOTAS)


@register(LB004)
def header_limits(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    lb = config.load_balancer
    if lb is None:
        return
    headers = lb.custom_request_headers
    if len(headers) > facts.CUSTOM_HEADERS_MAX:
        yield LB004.at(
            backend_resource(config),
            "load_balancer.custom_request_headers",
            f'{len(headers)} custom request headers: "Maximum number of configured custom request headers for each '
            f'backend service: 16 (This limit cannot be increased.)"',
            "keep at most 16",
        )
    size = sum(len(h.encode()) for h in headers)
    if size > facts.CUSTOM_HEADERS_MAX_BYTES:
        yield LB004.at(
            backend_resource(config),
            "load_balancer.custom_request_headers",
            f'custom request headers total {size} bytes: "Total size of all custom request headers per backend '
            f'service (name and value combined, before variable expansion): 8 KB."',
            "shorten or drop headers to stay within 8192 bytes",
        )


# ---- LB005: header syntax and duplicates ---------------------------------------------------------
# gcp-facts §2.5: "You specify each header as a header-name:header-value string. The header must contain a
# colon"; "a valid HTTP header-field name definition (per RFC 7230)"; "A header name must not appear more
# than once in the list of added headers."
LB005 = Rule("LB005", ERROR, "Malformed or duplicate custom header", DOC_CUSTOM_HEADERS)


@register(LB005)
def header_syntax(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    lb = config.load_balancer
    if lb is None:
        return
    seen: dict[str, int] = {}
    for i, header in enumerate(lb.custom_request_headers):
        name = header_name(header)
        if name is None:
            yield LB005.at(
                backend_resource(config),
                _header_field(i),
                f'custom header "{header}" has no colon: "You specify each header as a header-name:header-value '
                f'string. The header must contain a colon separating the header name and header value."',
                f'"{header.strip() or "X-Name"}: value"',
            )
            continue
        if not _TOKEN.match(name):
            yield LB005.at(
                backend_resource(config),
                _header_field(i),
                f'custom header name "{name}": "The header name must be a valid HTTP header-field name definition '
                f'(per RFC 7230)."',
                "use letters, digits and hyphens in the name",
            )
            continue
        if name.lower() in seen:
            yield LB005.at(
                backend_resource(config),
                _header_field(i),
                f'custom header "{name}" is listed twice (first at index {seen[name.lower()]}): "A header name must '
                f'not appear more than once in the list of added headers."',
                "keep one of them",
            )
        seen.setdefault(name.lower(), i)


# ---- LB006: backend-service session affinity with a serverless NEG --------------------------------
# gcp-facts §2.4: "Specifying a session affinity on a backend service with a serverless NEG backend won't
# work. As a workaround for Cloud Run, use its specific session affinity feature." (§6 e: there is no
# Google text saying cookie affinity breaks an upgrade; it does nothing.)
LB006 = Rule(
    "LB006", WARNING, "Backend-service session affinity has no effect with a serverless NEG", DOC_SERVERLESS_NEG
)


@register(LB006)
def backend_affinity(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    lb = config.load_balancer
    if lb is None or not serverless_backend(config, live):
        return
    if lb.session_affinity not in (None, "NONE"):
        yield LB006.at(
            backend_resource(config),
            "load_balancer.session_affinity",
            f'session_affinity {lb.session_affinity} on a backend service with a serverless NEG: "Specifying a '
            f"session affinity on a backend service with a serverless NEG backend won't work. As a workaround for "
            f'Cloud Run, use its specific session affinity feature." (It does not break WebSocket upgrades; it does '
            f"nothing.)",
            "remove load_balancer.session_affinity; set service.session_affinity: true",
        )
    if lb.affinity_cookie_ttl_sec is not None:
        yield LB006.at(
            backend_resource(config),
            "load_balancer.affinity_cookie_ttl_sec",
            "affinity_cookie_ttl_sec only applies to GENERATED_COOKIE or HTTP_COOKIE affinity, which does not work "
            "with a serverless NEG backend.",
            "remove load_balancer.affinity_cookie_ttl_sec",
        )


# ---- LB007: backend protocol for WebSockets -------------------------------------------------------
# gcp-facts §2.3: "native support for the WebSocket protocol when you use HTTP or HTTPS as the protocol to
# the backend"; Cloud Run: "Don't enable HTTP/2 end-to-end" (§1.1). The exact HTTP2 semantics for a
# serverless NEG were not verified (doubt in §2.3), hence a warning.
LB007 = Rule("LB007", WARNING, "Backend protocol other than HTTP/HTTPS for a WebSocket service", DOC_WEBSOCKET_LB)


@register(LB007)
def backend_protocol(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    lb = config.load_balancer
    if lb is None or lb.protocol in ("HTTP", "HTTPS"):
        return
    yield LB007.at(
        backend_resource(config),
        "load_balancer.protocol",
        f"backend protocol {lb.protocol}: Google's load balancers have \"native support for the WebSocket protocol "
        f'when you use HTTP or HTTPS as the protocol to the backend", and Cloud Run says "Don\'t enable HTTP/2 '
        f'end-to-end."',
        "protocol: HTTPS",
    )


# ---- LB008: log sample rate ----------------------------------------------------------------------
# gcp-facts §5.1 BackendServiceLogConfig.sampleRate: "The value of the field must be in [0, 1]."
LB008 = Rule("LB008", ERROR, "Log sample rate outside [0, 1]", DOC_BACKEND_API)


@register(LB008)
def sample_rate(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    lb = config.load_balancer
    if lb is None or facts.LB_LOG_SAMPLE_RATE_MIN <= lb.log_sample_rate <= facts.LB_LOG_SAMPLE_RATE_MAX:
        return
    yield LB008.at(
        backend_resource(config),
        "load_balancer.log_sample_rate",
        f'log_sample_rate {lb.log_sample_rate}: "The value of the field must be in [0, 1]."',
        "log_sample_rate: 1.0",
    )


# ---- LB009: Cloud Armor without load balancer logging --------------------------------------------
# gcp-facts §5.1: "To log Cloud Armor requests, you must enable HTTP(S) logging for each backend service
# protected by a security policy."
LB009 = Rule("LB009", WARNING, "Cloud Armor decisions unlogged (backend logging off)", DOC_BACKEND_API)


@register(LB009)
def armor_logging(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    lb = config.load_balancer
    if lb is None or config.armor is None or (lb.log_enable and lb.log_sample_rate > 0):
        return
    yield LB009.at(
        backend_resource(config),
        "load_balancer.log_enable" if not lb.log_enable else "load_balancer.log_sample_rate",
        '"To log Cloud Armor requests, you must enable HTTP(S) logging for each backend service protected by a '
        'security policy." Without it, a blocked WebSocket handshake leaves no trace.',
        "log_enable: true, log_sample_rate: 1.0",
    )


# ---- LB010: the live backend service's security policy --------------------------------------------
# gcp-facts §3.6: the policy is attached with backendServices.setSecurityPolicy; BackendService.
# securityPolicy is "[Output Only] The resource URL for the security policy associated with this backend
# service."
LB010 = Rule(
    "LB010", WARNING, "Live backend service has no or another security policy", DOC_ARMOR_ATTACH, needs_live=True
)


@register(LB010)
def attached_policy(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    if live is None or live.backend_service is None or config.armor is None:
        return
    attached = str(live.backend_service.get("securityPolicy") or "")
    name = attached.rstrip("/").rsplit("/", 1)[-1] if attached else ""
    if name == config.armor.policy:
        return
    now = f"policy {name!r} is attached" if name else "no security policy is attached"
    yield LB010.at(
        backend_resource(config),
        "armor.policy",
        f"on the live backend service {now}, not {config.armor.policy!r}: until it is attached "
        f"(backendServices.setSecurityPolicy) the rules this config owns protect nothing.",
        f"deploy attaches {config.armor.policy!r}; or set armor.policy: {name}" if name else "deploy attaches it",
    )


# ---- LB011: the live NEG routes to another Cloud Run service --------------------------------------
# gcp-facts §2.4/§3.5 NetworkEndpointGroupCloudRun: the serverless NEG names the Cloud Run service (or a
# urlMask); a NEG for another service means users never reach the revision this config deploys.
LB011 = Rule(
    "LB011", ERROR, "Live serverless NEG routes to a different Cloud Run service", DOC_SERVERLESS_NEG, needs_live=True
)


@register(LB011)
def neg_service(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    if live is None or config.load_balancer is None:
        return
    for neg in live.serverless_negs:
        cloud_run = neg.get("cloudRun") or {}
        target = cloud_run.get("service")
        if not target or target == config.service.name:
            continue
        yield LB011.at(
            backend_resource(config),
            "service.name",
            f"the backend service's serverless NEG {neg.get('name')!r} routes to Cloud Run service {target!r}, not "
            f"{config.service.name!r}: a deploy would change a service no user reaches through this load balancer.",
            f"service.name: {target}, or point load_balancer.backend_service at the NEG for {config.service.name}",
        )
