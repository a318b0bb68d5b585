"""Where the deploy's gates point, and with which options: config ``GateOptions`` → ``GateSpec``. Pure.

- The candidate is reached through its tag. Its URL is read from the service (gcp-facts §4.4: "Read
  the URL from ``traffic_statuses[].uri``; do not build it"), unless the config names one
  (``gate.candidate.url``, e.g. a load-balancer host routed to the tag by a serverless NEG's
  ``cloudRun.tag``, §3.5, when ingress keeps tag URLs off the internet).
- The public path is ``gate.public.url`` (the load balancer's address), or the service's own URI — which
  bypasses the URL map and Cloud Armor, and which restricted ingress keeps off the internet (§3.5);
  ``check`` warns of that with a load balancer configured (CR024).

A host under ``.localhost`` (the local cloud's ``TAG---SERVICE.localhost:PORT``) is connected to on
127.0.0.1 with the name sent as the Host header: RFC 6761 §6.3 says "localhost names" resolve to the
loopback address, and not every resolver does so for subdomains (this machine's does not).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from deployer.config import GateOptions
from deployer.errors import GateError
from deployer.gate import GateSpec, Thresholds
from deployer.gate.spec import LOCALHOST_SUFFIX, loopback_target, parse_header


def ws_url(uri: str, path: str) -> tuple[str, str | None]:
    """A service URI (``https://x`` or ``http://x:P``) + path → (ws:// or wss:// URL, Host header or None)."""
    parts = urlsplit(uri)
    scheme = {"https": "wss", "http": "ws", "wss": "wss", "ws": "ws"}.get(parts.scheme)
    if scheme is None or not parts.hostname:
        raise GateError(f"cannot make a WebSocket URL of {uri!r}")
    target_path = parts.path if parts.path not in ("", "/") else (path if path.startswith("/") else "/" + path)
    return loopback_target(urlunsplit((scheme, parts.netloc, target_path, parts.query, "")))


def tag_uri(service: Mapping[str, Any], tag: str) -> str | None:
    for status in service.get("trafficStatuses") or []:
        if status.get("tag") == tag and status.get("uri"):
            return str(status["uri"])
    return None


def spec(options: GateOptions, url: str, host: str | None = None) -> GateSpec:
    """The gate run ``options`` describe, against ``url`` (Host ``host`` unless the options set one)."""
    thresholds = Thresholds(
        min_samples=options.min_samples,
        **({"handshake_p95_ms": options.p95_ms} if options.p95_ms is not None else {}),
    )
    return GateSpec(
        url=url,
        connections=options.connections,
        concurrency=options.concurrency,
        pings=options.ping,
        send=options.send,
        expect=options.expect,
        hold_s=options.hold,
        headers=tuple(parse_header(f"{k}: {v}") for k, v in options.headers.items()),
        bearer_env=options.bearer_env,
        id_token=options.id_token,
        subprotocols=(options.subprotocol,) if options.subprotocol else (),
        origin=options.origin,
        host=options.host or host,
        thresholds=thresholds,
    )


def candidate_spec(options: GateOptions, service: Mapping[str, Any], tag: str) -> GateSpec:
    if options.url:
        return spec(options, options.url)
    uri = tag_uri(service, tag)
    if uri is None:
        raise GateError(f"the service has no URI for tag {tag!r} (traffic_statuses[].uri); cannot gate the candidate")
    url, host = ws_url(uri, options.path)
    return spec(options, url, host)


def public_spec(options: GateOptions, service: Mapping[str, Any]) -> GateSpec:
    if options.url:
        parts = urlsplit(options.url)
        if parts.hostname and parts.hostname.endswith(LOCALHOST_SUFFIX):
            url, host = ws_url(options.url, parts.path or options.path)
            return spec(options, url, host)
        return spec(options, options.url)
    uri = service.get("uri")
    if not uri:
        raise GateError("no public URL to gate: set gate.public.url (the load balancer's) in the config")
    url, host = ws_url(str(uri), options.path)
    return spec(options, url, host)
