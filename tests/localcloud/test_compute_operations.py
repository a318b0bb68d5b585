"""Compute operations (global and regional): shape, duration, wait, injected failures; and the raw
wire: malformed or unknown input is Google's 400, never a 500 (gcp-facts §5.2, clientlibs.md §0, §2)."""

from __future__ import annotations

import time

import pytest
from google.api_core import exceptions
from google.cloud import compute_v1

from deployer.localcloud.world import FaultRule
from tests.localcloud.compute_support import BS_URL, PROJECT, REGION, fast_polling, http, seed

G = f"/compute/v1/projects/{PROJECT}/global"


@pytest.fixture
def world(localcloud):
    seed(localcloud)
    state = localcloud.world.apis["compute"]
    bound = state.wait_bound_s
    yield localcloud.world
    state.wait_bound_s = bound


def patch_description(clients, text: str, name: str = "plain-bs"):
    bs = clients.backend_services()
    current = bs.get(project=PROJECT, backend_service=name)
    change = compute_v1.BackendService(description=text, fingerprint=current.fingerprint)
    return bs.patch(project=PROJECT, backend_service=name, backend_service_resource=change)


# ---- shape -------------------------------------------------------------------------------------
def test_an_operation_has_the_recorded_fields(world, localcloud):
    fingerprint = world.apis["compute"].backend_services[(PROJECT, "plain-bs")]["fingerprint"]
    status, op = http(localcloud, "PATCH", f"{G}/backendServices/plain-bs", {"fingerprint": fingerprint})
    assert status == 200
    # compute-backendservice-crud.http.log (plus endTime/progress 100 since it is done at once).
    assert set(op) >= {
        "kind",
        "id",
        "name",
        "operationType",
        "progress",
        "status",
        "targetId",
        "targetLink",
        "selfLink",
        "insertTime",
        "startTime",
        "endTime",
        "user",
    }
    assert (op["kind"], op["operationType"], op["status"], op["progress"]) == (
        "compute#operation",
        "patch",
        "DONE",
        100,
    )
    assert op["targetLink"] == BS_URL.replace("chat-bs", "plain-bs")
    assert op["selfLink"] == f"https://www.googleapis.com/compute/v1/projects/{PROJECT}/global/operations/{op['name']}"
    assert op["targetId"] == world.apis["compute"].backend_services[(PROJECT, "plain-bs")]["id"]


def test_global_operations_get_wait_and_list_through_the_client(world, clients):
    op = patch_description(clients, "x")
    ops = clients.global_operations()
    got = ops.get(project=PROJECT, operation=op.name)
    assert (got.name, got.status) == (op.name, compute_v1.Operation.Status.DONE)
    assert ops.wait(project=PROJECT, operation=op.name).status == compute_v1.Operation.Status.DONE
    assert op.name in [o.name for o in ops.list(project=PROJECT)]


def test_an_unknown_operation_is_404(world, clients):
    with pytest.raises(exceptions.NotFound) as info:
        clients.global_operations().get(project=PROJECT, operation="operation-1-2-3-4")
    assert f"projects/{PROJECT}/global/operations/operation-1-2-3-4' was not found" in info.value.message


# ---- duration and wait -------------------------------------------------------------------------
def test_an_operation_runs_for_the_configured_duration(world, clients):
    world.faults.operation_seconds["compute.backendServices.patch"] = 0.3
    started = time.monotonic()
    op = patch_description(clients, "slow")
    assert op.status == compute_v1.Operation.Status.RUNNING
    assert op.result(polling=fast_polling()) is None
    assert time.monotonic() - started >= 0.3
    assert clients.global_operations().get(project=PROJECT, operation=op.name).progress == 100


def test_wait_returns_when_the_operation_is_done(world, clients, localcloud):
    world.faults.operation_seconds["compute"] = 0.2
    op = patch_description(clients, "waited")
    started = time.monotonic()
    status, body = http(localcloud, "POST", f"{G}/operations/{op.name}/wait")
    assert (status, body["status"]) == (200, "DONE")
    assert 0.1 <= time.monotonic() - started < 2


def test_wait_is_bounded_and_may_return_a_running_operation(world, clients, localcloud):
    world.faults.operation_seconds["compute"] = 60
    world.apis["compute"].wait_bound_s = 0.05
    op = patch_description(clients, "long")
    started = time.monotonic()
    status, body = http(localcloud, "POST", f"{G}/operations/{op.name}/wait")
    assert (status, body["status"], body["progress"]) == (200, "RUNNING", 0)
    assert "endTime" not in body
    assert time.monotonic() - started < 1


def test_region_operations_get_and_wait(world, clients, localcloud):
    world.faults.operation_seconds["compute.regionNetworkEndpointGroups.insert"] = 0.1
    negs = clients.region_network_endpoint_groups()
    resource = compute_v1.NetworkEndpointGroup(
        name="late", network_endpoint_type="SERVERLESS", cloud_run=compute_v1.NetworkEndpointGroupCloudRun(service="s")
    )
    op = negs.insert(project=PROJECT, region=REGION, network_endpoint_group_resource=resource)
    region_ops = clients.region_operations()
    assert region_ops.wait(project=PROJECT, region=REGION, operation=op.name).status == compute_v1.Operation.Status.DONE
    assert region_ops.get(project=PROJECT, region=REGION, operation=op.name).progress == 100
    assert op.name in [o.name for o in region_ops.list(project=PROJECT, region=REGION)]


# ---- injected failures -------------------------------------------------------------------------
def test_an_operation_fault_fails_the_operation_with_both_error_fields_and_applies_nothing(world, clients, localcloud):
    world.faults.add(
        FaultRule(method="compute.backendServices.patch", status=409, kind="operation", message="resource not ready")
    )
    before = world.apis["compute"].backend_services[(PROJECT, "plain-bs")]
    op = patch_description(clients, "never")
    with pytest.raises(exceptions.Conflict) as info:
        op.result()
    assert info.value.errors[0].message == "resource not ready"
    assert world.apis["compute"].backend_services[(PROJECT, "plain-bs")] is before
    status, polled = http(localcloud, "GET", f"{G}/operations/{op.name}")
    assert status == 200
    # clientlibs.md §0 item 7: both fields, or .result() would not raise.
    assert (polled["httpErrorStatusCode"], polled["httpErrorMessage"]) == (409, "CONFLICT")
    assert polled["error"]["errors"][0]["message"] == "resource not ready"
    # the fault was used up: the next patch applies
    patch_description(clients, "now").result()
    assert clients.backend_services().get(project=PROJECT, backend_service="plain-bs").description == "now"


def test_an_operation_fault_on_a_running_operation_reports_the_error_only_when_done(world, clients, localcloud):
    world.faults.operation_seconds["compute"] = 0.2
    world.faults.add(FaultRule(method="compute.securityPolicies.addRule", status=412, kind="operation"))
    rule = compute_v1.SecurityPolicyRule(
        priority=10,
        action="allow",
        match=compute_v1.SecurityPolicyRuleMatcher(
            versioned_expr="SRC_IPS_V1", config=compute_v1.SecurityPolicyRuleMatcherConfig(src_ip_ranges=["*"])
        ),
    )
    op = clients.security_policies().add_rule(
        project=PROJECT, security_policy="chat-armor", security_policy_rule_resource=rule
    )
    _status, running = http(localcloud, "GET", f"{G}/operations/{op.name}")
    assert running["status"] == "RUNNING" and "httpErrorStatusCode" not in running
    with pytest.raises(exceptions.PreconditionFailed):
        op.result(polling=fast_polling())


def test_an_http_fault_answers_with_googles_shape(world, clients):
    world.faults.add(FaultRule(method="compute.securityPolicies.removeRule", status=503))
    with pytest.raises(exceptions.ServiceUnavailable):
        clients.security_policies().remove_rule(
            request=compute_v1.RemoveRuleSecurityPolicyRequest(
                project=PROJECT, security_policy="chat-armor", priority=1
            )
        )


def test_a_retried_request_id_after_an_operation_fault_returns_the_failed_operation(world, localcloud):
    world.faults.add(FaultRule(method="compute.backendServices.patch", status=500, kind="operation"))
    fingerprint = world.apis["compute"].backend_services[(PROJECT, "plain-bs")]["fingerprint"]
    path = f"{G}/backendServices/plain-bs?requestId=6f1c2a4e-8f0b-4c1d-9a4e-2b7f3c9d0e11"
    _s, first = http(localcloud, "PATCH", path, {"description": "x", "fingerprint": fingerprint})
    _s, second = http(localcloud, "PATCH", path, {"description": "x", "fingerprint": fingerprint})
    assert second["name"] == first["name"] and second["httpErrorStatusCode"] == 500


# ---- the raw wire: bad input is a 400 in Google's shape, never a 500 ---------------------------
def assert_google_400(status: int, body: dict, fragment: str) -> None:
    assert status == 400, body
    error = body["error"]
    assert error["code"] == 400
    assert fragment in error["message"]
    assert error["errors"][0]["message"] == error["message"]
    assert error["errors"][0]["domain"] == "global"


def test_malformed_json_is_a_400(world, localcloud):
    status, body = http(localcloud, "POST", f"{G}/backendServices", raw=b'{"name": "x",')
    assert_google_400(status, body, "Invalid JSON payload received.")


def test_a_json_array_body_is_a_400(world, localcloud):
    status, body = http(localcloud, "POST", f"{G}/securityPolicies", raw=b"[1, 2]")
    assert_google_400(status, body, "Expected an object at the top level.")


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        (
            "/backendServices",
            {"name": "x", "timeoutSecs": 5},
            "Unknown name \"timeoutSecs\" at 'backend_service_resource'",
        ),
        (
            "/backendServices",
            {"name": "x", "backends": [{"grop": "y"}]},
            "Unknown name \"grop\" at 'backend_service_resource.backends[0]': Cannot find field.",
        ),
        ("/backendServices", {"name": "x", "timeoutSec": "soon"}, "Invalid JSON payload received."),
        ("/backendServices", {"name": "x", "backends": {}}, "Invalid JSON payload received."),
        ("/securityPolicies", {"name": "x", "rules": [{"priority": 1, "actoin": "allow"}]}, 'Unknown name "actoin"'),
        ("/securityPolicies/chat-armor/addRule", {"priority": "high"}, "Invalid JSON payload received."),
        ("/urlMaps", {"name": "m", "defaultServices": "x"}, 'Unknown name "defaultServices"'),
        ("/backendServices/chat-bs/setSecurityPolicy", {"policy": "x"}, 'Unknown name "policy"'),
    ],
)
def test_unknown_fields_and_wrong_types_are_400(world, localcloud, path, body, fragment):
    status, answer = http(localcloud, "POST", G + path, body)
    assert_google_400(status, answer, fragment)


def test_unknown_fields_in_a_patch_are_400(world, localcloud):
    status, body = http(localcloud, "PATCH", f"{G}/backendServices/chat-bs", {"fingerprint": "x", "colour": "red"})
    assert_google_400(status, body, 'Unknown name "colour"')


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/securityPolicies/chat-armor/getRule?priority=high"),
        ("GET", "/backendServices?filter=name%3Dchat-bs"),
        ("GET", "/backendServices?maxResults=0"),
        ("POST", "/securityPolicies/chat-armor/removeRule?priority=1.5"),
    ],
)
def test_bad_query_parameters_are_400(world, localcloud, method, path):
    status, body = http(localcloud, method, G + path)
    assert status == 400 and body["error"]["code"] == 400


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": None},
        {"name": "x", "backends": [{}]},
        {"name": "x", "backends": [{"group": 5}]},
        {"name": "x", "backends": [{"group": "https://example.com/not/compute"}]},
        {"name": "x", "customRequestHeaders": [""]},
        {"name": "x", "timeoutSec": -5},
        {"name": "x", "affinityCookieTtlSec": 99999999},
    ],
)
def test_odd_backend_service_bodies_are_4xx_not_500(world, localcloud, body):
    status, answer = http(localcloud, "POST", f"{G}/backendServices", body)
    assert 400 <= status < 500, answer
    assert answer["error"]["code"] == status


@pytest.mark.parametrize(
    "rule",
    [
        {},
        {"priority": 1},
        {"priority": 1, "action": "allow", "match": {}},
        {"priority": 1, "action": "allow", "match": {"expr": {}}},
        {"priority": 1, "action": "allow", "match": {"versionedExpr": "SRC_IPS_V2"}},
        {"priority": 1, "action": "allow", "match": {"versionedExpr": "SRC_IPS_V1", "config": {}}},
        {"priority": 1, "action": "allow", "match": {"expr": {"expression": ""}}},
        {"priority": 1, "action": "throttle", "match": {"expr": {"expression": "true"}}, "rateLimitOptions": {}},
        {
            "priority": 1,
            "action": "throttle",
            "match": {"expr": {"expression": "true"}},
            "rateLimitOptions": {"conformAction": "allow", "exceedAction": "deny(429)", "rateLimitThreshold": {}},
        },
        {
            "priority": 1,
            "action": "throttle",
            "match": {"expr": {"expression": "true"}},
            "rateLimitOptions": {
                "conformAction": "allow",
                "exceedAction": "deny(429)",
                "rateLimitThreshold": {"count": 1, "intervalSec": 10},
                "enforceOnKeyConfigs": [{}, {}, {}, {}],
            },
        },
    ],
)
def test_odd_rules_are_4xx_not_500(world, localcloud, rule):
    status, answer = http(localcloud, "POST", f"{G}/securityPolicies/chat-armor/addRule", rule)
    assert 400 <= status < 500, answer
    assert answer["error"]["code"] == status
