"""plan.make_plan: desired × observed → changes with preconditions. Pure: no cloud, no clock."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from deployer.config import config_from_data
from deployer.desired import desired_state
from deployer.model import Observed
from deployer.plan import (
    ANNOTATION_LAST_GOOD,
    ARMOR_RULE,
    BACKEND_SERVICE,
    RUN_SERVICE,
    Action,
    current_preconditions,
    make_plan,
)

NOW = datetime(2026, 11, 26, 15, 0, tzinfo=UTC)
SVC = "projects/p/locations/us-central1/services/chat"
POLICY = "projects/p/global/securityPolicies/armor"
NEG = "https://www.googleapis.com/compute/v1/projects/p/regions/us-central1/networkEndpointGroups/chat-neg"

CONFIG: dict[str, Any] = {
    "project": "p",
    "region": "us-central1",
    "service": {
        "name": "chat",
        "image": "img:v2",
        "timeout": 3600,
        "concurrency": 250,
        "min_instances": 0,
        "session_affinity": False,
        "labels": {"app": "chat"},
        "env": {"MODE": "ws", "DB_PASSWORD": "hunter2"},
    },
    "load_balancer": {"backend_service": "chat-bs", "custom_request_headers": ["X-Forwarded-Proto: https"]},
    "armor": {
        "policy": "armor",
        "default_action": "allow",
        "rules": [
            {"priority": 1000, "action": "deny(403)", "src_ip_ranges": ["10.0.0.0/8"], "description": "block"},
            {"priority": 50, "action": "allow", "expression": "request.path.matches('^/ws')"},
        ],
    },
}


def desired(**changes: Any):
    data = copy.deepcopy(CONFIG)
    for key, value in changes.items():
        data["service"][key] = value
    return desired_state(config_from_data(data))


def revision(image: str = "img:v2", **extra: Any) -> dict[str, Any]:
    """A serving revision as the API renders it: server defaults added, proto3 zeros left out."""
    return {
        "name": f"{SVC}/revisions/chat-00001-abc",
        "generation": "1",
        "scaling": {"maxInstanceCount": 100},
        "timeout": "3600s",
        "maxInstanceRequestConcurrency": 250,
        "serviceAccount": "123-compute@developer.gserviceaccount.com",
        "containers": [
            {
                "image": image,
                "env": [{"name": "MODE", "value": "ws"}, {"name": "DB_PASSWORD", "value": "hunter2"}],
                "resources": {"limits": {"cpu": "1", "memory": "512Mi"}, "cpuIdle": True, "startupCpuBoost": True},
                "ports": [{"name": "http1", "containerPort": 8080}],
                "startupProbe": {
                    "timeoutSeconds": 240,
                    "periodSeconds": 240,
                    "failureThreshold": 1,
                    "tcpSocket": {"port": 8080},
                },
            }
        ],
        "conditions": [{"type": "Ready", "state": "CONDITION_SUCCEEDED"}],
        **extra,
    }


def observed(template_image: str = "img:v2", serving_image: str = "img:v2", **service_extra: Any) -> Observed:
    serving = revision(serving_image)
    template = {k: v for k, v in revision(template_image).items() if k not in ("name", "generation", "conditions")}
    svc = {
        "name": SVC,
        "etag": "etag-1",
        "ingress": "INGRESS_TRAFFIC_ALL",
        "labels": {"app": "chat", "cloud.googleapis.com/location": "us-central1"},
        "template": template,
        "traffic": [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 100}],
        **service_extra,
    }
    bs = {
        "name": "chat-bs",
        "fingerprint": "fp-bs",
        "protocol": "HTTPS",
        "customRequestHeaders": ["X-Forwarded-Proto: https"],
        "logConfig": {"enable": True, "sampleRate": 1.0},
        "sessionAffinity": "GENERATED_COOKIE",
        "backends": [{"group": NEG}],
    }
    policy = {
        "name": "armor",
        "fingerprint": "fp-sp",
        "rules": [
            {
                "kind": "compute#securityPolicyRule",
                "priority": 1000,
                "action": "deny(403)",
                "preview": False,
                "description": "block",
                "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["10.0.0.0/8"]}},
            },
            {
                "kind": "compute#securityPolicyRule",
                "priority": 2000,
                "action": "deny(404)",
                "preview": False,
                "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["1.2.3.4/32"]}},
            },
            {
                "kind": "compute#securityPolicyRule",
                "priority": 2147483647,
                "action": "allow",
                "preview": False,
                "description": "default rule",
                "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["*"]}},
            },
        ],
    }
    negs = ({"name": "chat-neg", "networkEndpointType": "SERVERLESS"},)
    return Observed(service=svc, serving_revision=serving, backend_service=bs, security_policy=policy, negs=negs)


def plan_for(d, o, **kw: Any):
    return make_plan(d, o, created_at=NOW, config_digest="sha256:x", **kw)


def by_kind(plan, kind):
    return [c for c in plan.changes if c.kind == kind]


def test_nothing_to_do_when_what_serves_is_what_the_config_says():
    d = desired(ingress="all")
    plan = plan_for(d, observed())
    run = by_kind(plan, RUN_SERVICE)[0]
    assert run.action is Action.NOOP, run.diff()
    # proto3 zeros the API leaves out (min_instances 0, session_affinity false) are not differences
    live = observed().service
    assert run.after is not None and live is not None
    assert run.after["template"]["sessionAffinity"] is False and "sessionAffinity" not in live["template"]
    assert by_kind(plan, BACKEND_SERVICE)[0].action is Action.NOOP
    assert [c.action for c in by_kind(plan, ARMOR_RULE)] == [Action.CREATE, Action.NOOP, Action.NOOP]
    assert plan.counts()[Action.CREATE] == 1


def test_the_template_is_compared_with_what_serves_not_with_service_template():
    # After a rollback the spec's template can already say v2 while v1 serves: still a change to plan.
    d = desired(ingress="all")
    plan = plan_for(d, observed(template_image="img:v2", serving_image="img:v1"))
    run = by_kind(plan, RUN_SERVICE)[0]
    assert run.action is Action.UPDATE
    assert [(x.path_str(), x.before, x.after) for x in run.diff()] == [
        ("template.containers[0].image", "img:v1", "img:v2")
    ]
    assert run.precondition == "etag-1"


def test_labels_compare_as_a_subset_and_deployer_annotations_are_not_configuration():
    d = desired(ingress="all")
    o = observed(annotations={ANNOTATION_LAST_GOOD: "chat-00001-abc"})
    assert by_kind(plan_for(d, o), RUN_SERVICE)[0].action is Action.NOOP
    d2 = desired(ingress="all", labels={"app": "chat", "team": "rt"})
    diff = by_kind(plan_for(d2, o), RUN_SERVICE)[0].diff()
    assert [(x.path_str(), x.kind) for x in diff] == [("labels.team", "added")]


def test_a_dropped_env_var_is_a_change():
    d = desired(ingress="all", env={"MODE": "ws"})
    diff = by_kind(plan_for(d, observed()), RUN_SERVICE)[0].diff()
    assert [(x.path_str(), x.kind) for x in diff] == [("template.containers[0].env[1]", "removed")]


def test_secret_values_are_masked_in_the_readable_plan():
    from deployer.redact import SecretMask

    d = desired(ingress="all", env={"MODE": "ws", "DB_PASSWORD": "s3cret-new"})
    plan = plan_for(d, observed())
    text = plan.summary(SecretMask())
    assert "s3cret-new" not in text and "hunter2" not in text
    assert "template.containers[0].env[1].value: <redacted#1> → <redacted#2>" in text


def test_backend_service_only_owned_fields_and_never_timeout_sec_for_serverless():
    data = copy.deepcopy(CONFIG)
    data["load_balancer"].update(timeout_sec=86400, log_sample_rate=0.5)
    d = desired_state(config_from_data(data))
    change = by_kind(plan_for(d, observed()), BACKEND_SERVICE)[0]
    assert change.action is Action.UPDATE and change.precondition == "fp-bs"
    assert "timeoutSec" not in change.after and "sessionAffinity" not in change.after
    assert [(x.path_str(), x.before, x.after) for x in change.diff()] == [("logConfig.sampleRate", 1.0, 0.5)]
    assert change.id == "projects/p/global/backendServices/chat-bs"


def test_armor_rules_by_priority_create_update_delete_and_never_the_default_rule():
    data = copy.deepcopy(CONFIG)
    data["armor"]["rules"][0]["action"] = "deny(404)"
    d = desired_state(config_from_data(data))
    plan = plan_for(d, observed(), owned_armor_priorities=[1000, 2000, 2147483647, 3000])
    rules = {c.id.rsplit("/", 1)[-1]: c for c in by_kind(plan, ARMOR_RULE)}
    assert rules["50"].action is Action.CREATE and rules["50"].before is None
    assert rules["1000"].action is Action.UPDATE
    assert [(x.path_str(), x.before, x.after) for x in rules["1000"].diff()] == [("action", "deny(403)", "deny(404)")]
    assert rules["2000"].action is Action.DELETE and rules["2000"].after is None  # owned before, dropped now
    assert rules["2147483647"].action is Action.NOOP
    assert "3000" not in rules  # owned before but already gone
    assert all(c.precondition == "fp-sp" for c in rules.values())
    assert rules["2000"].id == f"{POLICY}/rules/2000"


def test_a_rule_field_the_config_drops_is_a_change():
    o = observed()
    assert o.security_policy is not None
    o.security_policy["rules"][0]["headerAction"] = {"requestHeadersToAdds": [{"headerName": "x", "headerValue": "y"}]}
    rule = next(c for c in by_kind(plan_for(desired(ingress="all"), o), ARMOR_RULE) if c.id.endswith("/1000"))
    assert rule.action is Action.UPDATE
    assert [(x.path_str(), x.kind) for x in rule.diff()] == [("headerAction", "removed")]


def test_missing_resources_are_creates_and_preconditions_follow_what_is_live():
    d = desired(ingress="all")
    plan = plan_for(d, Observed())
    assert by_kind(plan, RUN_SERVICE)[0].action is Action.CREATE
    assert by_kind(plan, BACKEND_SERVICE)[0].action is Action.CREATE
    live = plan_for(d, observed())
    now = current_preconditions(live, observed())
    assert live.moved(now) == []
    moved = observed()
    assert moved.service is not None
    moved.service["etag"] = "etag-2"
    assert [m.key for m in live.moved(current_preconditions(live, moved))] == [f"run.service:{SVC}"]
