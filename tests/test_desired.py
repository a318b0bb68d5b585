"""desired_state: the config as REST bodies, parsed strictly by the client libraries' own messages."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from deployer import facts
from deployer.config import load_config, parse_config
from deployer.desired import desired_state
from deployer.model import DesiredState

ROOT = Path(__file__).resolve().parent.parent


def cfg(extra: str = "") -> DesiredState:
    text = textwrap.dedent(
        """\
        project: p
        region: us-central1
        service:
          name: chat
          image: r/chat:v1
        """
    )
    return desired_state(parse_config(text + extra, environ={}))


@pytest.mark.parametrize("name", ["staging.yaml", "local.yaml", "examples/seed-proposal.yaml"])
def test_bodies_parse_as_the_apis_messages(name: str) -> None:
    from google.cloud import compute_v1, run_v2

    desired = desired_state(load_config(ROOT / "configs" / name, environ={}))
    # from_json refuses unknown fields: every key we send is a real field of the message.
    service = run_v2.Service.from_json(json.dumps(desired.service))
    assert service.template.containers[0].image == desired.service["template"]["containers"][0]["image"]
    assert desired.backend_service is not None
    compute_v1.BackendService.from_json(json.dumps(desired.backend_service))
    for rule in desired.armor_rules.values():
        compute_v1.SecurityPolicyRule.from_json(json.dumps(rule))
    json.dumps(desired.to_json())  # plain JSON all the way down


def test_staging_template_follows_the_checklist() -> None:
    d = desired_state(load_config(ROOT / "configs" / "staging.yaml", environ={}))
    assert d.service_name == "projects/netra-staging/locations/us-central1/services/netra-backend-staging"
    assert d.service_id == "netra-backend-staging"
    assert "traffic" not in d.service  # traffic belongs to the rollout
    assert d.service["ingress"] == "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER"
    t = d.service["template"]
    assert t["timeout"] == "3600s"
    assert t["maxInstanceRequestConcurrency"] == 1000
    assert t["sessionAffinity"] is True
    assert t["scaling"] == {"minInstanceCount": 1, "maxInstanceCount": 20}
    assert t["executionEnvironment"] == "EXECUTION_ENVIRONMENT_GEN2"
    c = t["containers"][0]
    assert c["resources"] == {
        "limits": {"cpu": "2", "memory": "4Gi"},
        "cpuIdle": False,  # cpu_throttling: false → CPU always allocated
        "startupCpuBoost": True,
    }
    assert c["ports"] == [{"name": "http1", "containerPort": 8000}]
    assert c["startupProbe"]["httpGet"] == {"path": "/health"}
    env = {e["name"]: e for e in c["env"]}
    assert env["WEBSOCKET_HEARTBEAT_INTERVAL"] == {"name": "WEBSOCKET_HEARTBEAT_INTERVAL", "value": "25"}
    assert env["JWT_SECRET_KEY"] == {
        "name": "JWT_SECRET_KEY",
        "valueSource": {"secretKeyRef": {"secret": "jwt-secret-staging", "version": "latest"}},
    }
    assert not any(k.startswith("run.googleapis.com") for k in d.service.get("annotations", {}))


def test_cpu_idle_is_sent_even_when_the_config_is_silent() -> None:
    # gcp-facts §1.4: once `resources` is sent, a missing cpu_idle means CPU always allocated.
    resources = cfg().service["template"]["containers"][0]["resources"]
    assert resources["cpuIdle"] is True and resources["startupCpuBoost"] is True


@pytest.mark.parametrize(
    ("keys", "cpu_idle"),
    [
        ("  cpu_throttling: true\n", True),
        ("  cpu_throttling: false\n", False),
        ("  billing: request-based\n", True),
        ("  billing: instance-based\n", False),
        ("  billing: instance-based\n  cpu_throttling: false\n", False),
    ],
)
def test_cpu_throttling_and_billing_both_set_cpu_idle(keys: str, cpu_idle: bool) -> None:
    # gcp-facts §1.4: cpu_idle = true ⇔ --cpu-throttling ⇔ request-based billing.
    assert cfg(keys).service["template"]["containers"][0]["resources"]["cpuIdle"] is cpu_idle


def test_unset_values_are_left_to_the_platform() -> None:
    t = cfg().service["template"]
    assert "timeout" not in t and "maxInstanceRequestConcurrency" not in t
    assert "startupProbe" not in t["containers"][0]
    assert t["scaling"] == {"minInstanceCount": 0}


def test_tcp_probe_and_port() -> None:
    c = cfg("  startup_probe: {type: tcp, port: 9000}\n").service["template"]["containers"][0]
    assert c["startupProbe"]["tcpSocket"] == {"port": 9000}


def test_backend_body_omits_what_the_config_does_not_set() -> None:
    d = cfg("load_balancer:\n  backend_service: bs\n  url_map: um\n")
    assert d.backend_service == {
        "name": "bs",
        "protocol": "HTTPS",
        "customRequestHeaders": [],
        "logConfig": {"enable": True, "sampleRate": 1.0},
    }
    assert (d.backend_service_name, d.url_map_name) == ("bs", "um")


def test_backend_body_carries_wrong_values_when_written() -> None:
    # `check` refuses them (LB001, LB006); the desired state is faithful to the config.
    d = cfg(
        "load_balancer:\n  backend_service: bs\n  timeout_sec: 86400\n  session_affinity: GENERATED_COOKIE\n"
        "  affinity_cookie_ttl_sec: 60\n"
    )
    assert d.backend_service is not None
    assert (d.backend_service["timeoutSec"], d.backend_service["sessionAffinity"]) == (86400, "GENERATED_COOKIE")
    assert d.backend_service["affinityCookieTtlSec"] == 60


def test_armor_rules_by_priority_and_the_default_rule() -> None:
    d = cfg(
        textwrap.dedent(
            """\
        armor:
          policy: pol
          default_action: deny(403)
          rules:
            - priority: 10
              action: throttle
              expression: "request.path.matches('^/ws')"
              preview: true
              rate_limit: {count: 60, interval_sec: 60, enforce_on_key: HTTP_HEADER, enforce_on_key_name: x-id}
            - {priority: 20, action: rate_based_ban, src_ip_ranges: ["*"], rate_limit: {count: 5, interval_sec: 60,
               ban_duration_sec: 600, ban_threshold: {count: 50, interval_sec: 600}}}
        """
        )
    )
    assert d.security_policy_name == "pol"
    assert sorted(d.armor_rules) == [10, 20, facts.ARMOR_DEFAULT_RULE_PRIORITY]
    assert d.armor_rules[10] == {
        "priority": 10,
        "description": "",
        "action": "throttle",
        "preview": True,
        "match": {"expr": {"expression": "request.path.matches('^/ws')"}},
        "rateLimitOptions": {
            "rateLimitThreshold": {"count": 60, "intervalSec": 60},
            "conformAction": "allow",
            "exceedAction": "deny(429)",
            "enforceOnKey": "HTTP_HEADER",
            "enforceOnKeyName": "x-id",
        },
    }
    r20 = d.armor_rules[20]
    assert r20["match"] == {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["*"]}}
    assert r20["rateLimitOptions"]["banDurationSec"] == 600
    assert r20["rateLimitOptions"]["banThreshold"] == {"count": 50, "intervalSec": 600}
    default = d.armor_rules[facts.ARMOR_DEFAULT_RULE_PRIORITY]
    assert default["action"] == "deny(403)" and default["match"]["config"]["srcIpRanges"] == ["*"]


def test_no_load_balancer_no_armor() -> None:
    d = cfg()
    assert d.backend_service is None and d.backend_service_name is None and d.armor_rules == {}
