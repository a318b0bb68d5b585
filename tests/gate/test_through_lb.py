"""The gate's broken-release matrix again, this time through the local load balancer and Cloud Armor.

Each sample-backend failure mode runs as a real revision behind the URL map; the gate reaches it by
Host (a URL-masked serverless NEG, ``<service>.test``), exactly as it reaches a tagged revision in a
deploy. A 403 from the backend and a 403 from Cloud Armor must both fail the gate, and must read
differently in the evidence; so must a 502 that Cloud Armor answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest

from deployer.gate import GateSpec, Outcome, Thresholds, run_gate
from deployer.localcloud.server import LocalCloud
from tests.localcloud.runtime.support import get, no_process_left_behind, until

pytestmark = pytest.mark.e2e

PROJECT = "gate-lb"
REGION = "us-central1"
COMPUTE = f"projects/{PROJECT}/global"

# service id -> (image, env overrides): the failure modes of examples/chat-backend, made quick.
SERVICES: dict[str, tuple[str, dict[str, str]]] = {
    "ok": ("local/chat-backend:v1", {}),
    "refuse": ("local/chat-backend:broken-upgrade", {}),
    "flaky": ("local/chat-backend:flaky-1011", {"CHAT_FAIL_AFTER": "0.3"}),
    "mute": ("local/chat-backend:mute", {}),
    "slow": ("local/chat-backend:slow-handshake", {"CHAT_SLOW_SECONDS": "0.6"}),
}


def _service(service_id: str, image: str, env: dict[str, str]) -> dict[str, Any]:
    return {
        "name": service_id,
        "template": {
            "containers": [{"image": image, "env": [{"name": k, "value": v} for k, v in env.items()]}],
            "timeout": "60s",
        },
    }


def _world() -> dict[str, Any]:
    expr = "has(request.headers['x-gate']) && request.headers['x-gate'] == '%s'"
    return {
        "project": PROJECT,
        "region": REGION,
        "services": [_service(sid, image, env) for sid, (image, env) in SERVICES.items()],
        "networkEndpointGroups": [
            {"name": "ok-neg", "region": REGION, "networkEndpointType": "SERVERLESS", "cloudRun": {"service": "ok"}},
            {
                "name": "masked-neg",
                "region": REGION,
                "networkEndpointType": "SERVERLESS",
                "cloudRun": {"urlMask": "<service>.test"},
            },
        ],
        "securityPolicies": [
            {
                "name": "gate-armor",
                "rules": [
                    {"priority": 100, "action": "deny(403)", "match": {"expr": {"expression": expr % "block"}}},
                    {"priority": 110, "action": "deny(502)", "match": {"expr": {"expression": expr % "bad-gw"}}},
                    {
                        "priority": 2147483647,
                        "action": "allow",
                        "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["*"]}},
                    },
                ],
            }
        ],
        "backendServices": [
            {
                "name": "ok-bs",
                "loadBalancingScheme": "EXTERNAL_MANAGED",
                "protocol": "HTTPS",
                "backends": [{"group": f"projects/{PROJECT}/regions/{REGION}/networkEndpointGroups/ok-neg"}],
                "securityPolicy": "gate-armor",
            },
            {
                "name": "masked-bs",
                "loadBalancingScheme": "EXTERNAL_MANAGED",
                "protocol": "HTTPS",
                "backends": [{"group": f"projects/{PROJECT}/regions/{REGION}/networkEndpointGroups/masked-neg"}],
            },
        ],
        "urlMaps": [
            {
                "name": "gate-lb",
                "defaultService": f"{COMPUTE}/backendServices/ok-bs",
                "hostRules": [{"hosts": ["*.test"], "pathMatcher": "masked"}],
                "pathMatchers": [{"name": "masked", "defaultService": f"{COMPUTE}/backendServices/masked-bs"}],
            }
        ],
    }


def healthy(port: int, host: str) -> bool:
    return get(port, "/health", host=host)[0] == 200


@pytest.fixture(scope="module")
def lb() -> Iterator[int]:
    with no_process_left_behind():
        cloud = LocalCloud(lb_port=0, seed_doc=_world(), runtime_options={"startup_timeout": 6.0})
        cloud.start()
        try:
            port = int(cloud.lb_port or 0)
            for sid in SERVICES:
                until(partial(healthy, port, f"{sid}.test"))
            yield port
        finally:
            cloud.stop()


def spec(port: int, host: str, **kw: Any) -> GateSpec:
    kw.setdefault("connections", 6)
    kw.setdefault("concurrency", 6)
    kw.setdefault("thresholds", Thresholds(min_samples=6, handshake_p95_ms=400.0))
    kw.setdefault("send", '{"type":"ping"}')
    kw.setdefault("expect", '"pong"')
    kw.setdefault("app_timeout_s", 0.5)
    return GateSpec(f"ws://127.0.0.1:{port}/ws", host=host, **kw)


async def test_a_healthy_revision_passes_through_the_lb_and_cloud_armor(lb):
    verdict = await run_gate(spec(lb, f"127.0.0.1:{lb}", hold_s=0.3, pings=2))
    assert verdict.outcome is Outcome.PASSED, verdict.reasons
    assert verdict.counts.ok == 6


@pytest.mark.parametrize(
    ("service", "hold_s", "group"),
    [
        ("refuse", 0.0, "upgrade_refused HTTP 403"),
        ("mute", 0.0, "app_timeout"),
        ("flaky", 1.0, "closed 1011 (abnormal) during hold"),
    ],
)
async def test_each_broken_release_fails_through_the_lb_with_its_reason(lb, service, hold_s, group):
    verdict = await run_gate(spec(lb, f"{service}.test", hold_s=hold_s))
    assert verdict.outcome is Outcome.FAILED, verdict.reasons
    assert [g.group for g in verdict.failures] == [group]


async def test_a_slow_handshake_fails_on_latency_through_the_lb(lb):
    verdict = await run_gate(spec(lb, "slow.test"))
    assert verdict.outcome is Outcome.FAILED
    assert verdict.counts.failed == 0
    assert any(r.startswith("handshake p95") for r in verdict.reasons), verdict.reasons


def _refusal_body(verdict: Any) -> str:
    group = verdict.failures[0]
    samples = verdict.to_json(include_samples=True)["samples"]
    bodies = {s.get("body", "") for s in samples if s.get("status") is not None}
    assert len(bodies) == 1, (group, bodies)
    return str(bodies.pop())


async def test_cloud_armor_and_the_backend_403s_read_differently(lb):
    armor = await run_gate(spec(lb, f"127.0.0.1:{lb}", headers=(("X-Gate", "block"),)))
    backend = await run_gate(spec(lb, "refuse.test"))
    assert [g.group for g in armor.failures] == ["upgrade_refused HTTP 403"]
    assert [g.group for g in backend.failures] == ["upgrade_refused HTTP 403"]
    armor_body, backend_body = _refusal_body(armor), _refusal_body(backend)
    assert armor_body != backend_body
    assert "403" in armor_body and "Forbidden" in armor_body  # Google's edge page, not the app's answer


async def test_a_502_answered_by_cloud_armor_fails_the_gate(lb):
    verdict = await run_gate(spec(lb, f"127.0.0.1:{lb}", headers=(("X-Gate", "bad-gw"),)))
    assert verdict.outcome is Outcome.FAILED
    assert [g.group for g in verdict.failures] == ["upgrade_refused HTTP 502"]
