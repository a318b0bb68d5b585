"""Shared by the runtime's end-to-end tests: a test world, deploys through the real Cloud Run client,
raw HTTP/WebSocket calls through the local load balancer, and process bookkeeping."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psutil

PROJECT = "lb-test"
REGION = "us-central1"
PARENT = f"projects/{PROJECT}/locations/{REGION}"
BASE = "https://www.googleapis.com/compute/v1"


def service_name(service_id: str) -> str:
    return f"{PARENT}/services/{service_id}"


def header_is(value: str) -> str:
    return f"has(request.headers['x-test']) && request.headers['x-test'] == '{value}'"


def _expr_rule(priority: int, action: str, test: str, **extra: Any) -> dict[str, Any]:
    return {"priority": priority, "action": action, "match": {"expr": {"expression": header_is(test)}}, **extra}


def _src_ips(*ranges: str) -> dict[str, Any]:
    return {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": list(ranges)}}


def _rate(count: int, exceed: str, **extra: Any) -> dict[str, Any]:
    return {
        "conformAction": "allow",
        "exceedAction": exceed,
        "enforceOnKey": "HTTP_HEADER",
        "enforceOnKeyName": "x-client",
        "rateLimitThreshold": {"count": count, "intervalSec": 10},
        **extra,
    }


ARMOR_RULES: list[dict[str, Any]] = [
    # listed out of order on purpose: priority, not position, decides (gcp-facts §3.1)
    {"priority": 2147483647, "action": "allow", "match": _src_ips("*")},
    _expr_rule(510, "deny(403)", "order"),
    _expr_rule(500, "allow", "order"),
    {"priority": 50, "action": "deny(403)", "match": _src_ips("127.0.0.3/32")},
    _expr_rule(100, "deny(404)", "deny404"),
    _expr_rule(110, "deny(502)", "deny502"),
    _expr_rule(200, "throttle", "throttle", rateLimitOptions=_rate(3, "deny(429)")),
    _expr_rule(300, "rate_based_ban", "ban", rateLimitOptions=_rate(2, "deny(403)", banDurationSec=60)),
    _expr_rule(400, "deny(403)", "preview", preview=True),
    _expr_rule(800, "throttle", "ws-throttle", rateLimitOptions=_rate(2, "deny(429)")),
]


def world(services: list[dict[str, Any]]) -> dict[str, Any]:
    """The test world: ``chat-bs`` (Cloud Armor + custom headers) is the URL map's default; hosts
    ``*.test`` reach the service named by the host through a URL-masked NEG (no policy);
    ``green.example`` reaches ``chat``'s ``green`` tag through a NEG with a tag."""
    return {
        "seed": 3,
        "project": PROJECT,
        "region": REGION,
        "services": services,
        "networkEndpointGroups": [
            {
                "name": "chat-neg",
                "region": REGION,
                "networkEndpointType": "SERVERLESS",
                "cloudRun": {"service": "chat"},
            },
            {
                "name": "masked-neg",
                "region": REGION,
                "networkEndpointType": "SERVERLESS",
                "cloudRun": {"urlMask": "<service>.test"},
            },
            {
                "name": "green-neg",
                "region": REGION,
                "networkEndpointType": "SERVERLESS",
                "cloudRun": {"service": "chat", "tag": "green"},
            },
        ],
        "securityPolicies": [{"name": "test-armor", "type": "CLOUD_ARMOR", "rules": ARMOR_RULES}],
        "backendServices": [
            {
                "name": "chat-bs",
                "loadBalancingScheme": "EXTERNAL_MANAGED",
                "protocol": "HTTPS",
                "backends": [{"group": f"projects/{PROJECT}/regions/{REGION}/networkEndpointGroups/chat-neg"}],
                "customRequestHeaders": ["X-Custom-Test: hello", "X-Forwarded-Proto: https"],
                "securityPolicy": "test-armor",
            },
            {
                "name": "masked-bs",
                "loadBalancingScheme": "EXTERNAL_MANAGED",
                "protocol": "HTTPS",
                "backends": [{"group": f"projects/{PROJECT}/regions/{REGION}/networkEndpointGroups/masked-neg"}],
            },
            {
                "name": "green-bs",
                "loadBalancingScheme": "EXTERNAL_MANAGED",
                "protocol": "HTTPS",
                "backends": [{"group": f"projects/{PROJECT}/regions/{REGION}/networkEndpointGroups/green-neg"}],
            },
        ],
        "urlMaps": [
            {
                "name": "test-lb",
                "defaultService": f"projects/{PROJECT}/global/backendServices/chat-bs",
                "hostRules": [
                    {"hosts": ["*.test"], "pathMatcher": "masked"},
                    {"hosts": ["green.example"], "pathMatcher": "green"},
                ],
                "pathMatchers": [
                    {"name": "masked", "defaultService": f"projects/{PROJECT}/global/backendServices/masked-bs"},
                    {"name": "green", "defaultService": f"projects/{PROJECT}/global/backendServices/green-bs"},
                ],
            }
        ],
    }


class FakeClock:
    """The Cloud Armor clock the tests move by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# ---- Cloud Run through the real client ---------------------------------------------------------


def fast_polling() -> Any:
    from google.api_core.future import polling

    return polling.DEFAULT_POLLING.with_delay(initial=0.05, maximum=0.25, multiplier=1.5).with_timeout(90)


@dataclass
class Deploy:
    image: str = "local/chat-backend:v1"
    env: dict[str, str] | None = None
    timeout_s: int | None = None
    session_affinity: bool = False
    min_instances: int = 0
    probe: dict[str, Any] | None = None
    secret_env: dict[str, str] | None = None  # NAME -> secret (version latest)


def template(service_id: str, suffix: str, d: Deploy) -> Any:
    from google.cloud import run_v2

    env = [run_v2.EnvVar(name=k, value=v) for k, v in (d.env or {}).items()]
    for k, s in (d.secret_env or {}).items():
        ref = run_v2.SecretKeySelector(secret=s, version="latest")
        env.append(run_v2.EnvVar(name=k, value_source=run_v2.EnvVarSource(secret_key_ref=ref)))
    container = run_v2.Container(image=d.image, env=env)
    if d.probe:
        container.startup_probe = run_v2.Probe(**d.probe)
    t = run_v2.RevisionTemplate(
        revision=f"{service_id}-{suffix}",
        containers=[container],
        session_affinity=d.session_affinity,
        scaling=run_v2.RevisionScaling(min_instance_count=d.min_instances),
    )
    if d.timeout_s:
        t.timeout = {"seconds": d.timeout_s}
    return t


def create(services: Any, service_id: str, d: Deploy, suffix: str = "a") -> Any:
    from google.cloud import run_v2

    svc = run_v2.Service(template=template(service_id, suffix, d))
    return services.create_service(parent=PARENT, service=svc, service_id=service_id).result(polling=fast_polling())


def update(
    services: Any, service_id: str, d: Deploy | None, suffix: str, traffic: list[tuple[str | None, int, str]] | None
) -> Any:
    """New template (when ``d``) named ``{service}-{suffix}`` and/or a new traffic list of
    (revision suffix or None for the new one, percent, tag). Returns the operation's result."""
    from google.cloud import run_v2

    svc = services.get_service(name=service_name(service_id))
    if d is not None:
        svc.template = template(service_id, suffix, d)
    if traffic is not None:
        rev_type = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
        svc.traffic = [
            run_v2.TrafficTarget(type_=rev_type, revision=f"{service_id}-{s or suffix}", percent=p, tag=tag)
            for s, p, tag in traffic
        ]
    return services.update_service(service=svc).result(polling=fast_polling())


# ---- raw HTTP / WebSocket through the load balancer ------------------------------------------------


def get(
    port: int, path: str = "/", host: str | None = None, headers: dict[str, str] | None = None, source: str = ""
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0) if source else None)
    try:
        conn.request("GET", path, headers={"Host": host or f"127.0.0.1:{port}", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def get_json(port: int, path: str = "/", **kw: Any) -> tuple[int, Any]:
    status, _h, body = get(port, path, **kw)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode(errors="replace")


async def ws_connect(port: int, host: str | None = None, path: str = "/ws", **kw: Any) -> Any:
    import websockets

    return await websockets.connect(
        f"ws://{host or f'127.0.0.1:{port}'}{path}", host="127.0.0.1", port=port, open_timeout=30, proxy=None, **kw
    )


async def ask(ws: Any, message: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
    """Send one JSON message; return the first reply that is not a heartbeat."""
    import asyncio

    await ws.send(json.dumps(message))
    async with asyncio.timeout(timeout):
        while True:
            reply = json.loads(await ws.recv())
            if reply.get("type") != "heartbeat":
                return dict(reply)


def until(condition: Callable[[], Any], deadline_s: float = 30, every: float = 0.05) -> Any:
    """Poll ``condition`` until it is truthy (returns it) or fail at the deadline."""
    end = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < end:
        last = condition()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"condition not met within {deadline_s}s (last: {last!r})")


# ---- processes ---------------------------------------------------------------------------------


def descendants() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.is_running() and p.status() != "zombie"]


@contextmanager
def no_process_left_behind() -> Iterator[None]:
    before = {p.pid for p in descendants()}
    yield
    until(lambda: not [p for p in descendants() if p.pid not in before], deadline_s=20)
