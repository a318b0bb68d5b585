"""The Cloud Run API's wire, over raw HTTP: Google's 400 shapes for bad requests (never a 500), enum
encoding, operation shapes, and response shapes beside the real recording."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import SHARED
from tests.localcloud.run_helpers import PARENT, http

SERVICES = f"/v2/{PARENT}/services"
GOOD = {"template": {"containers": [{"image": "gcr.io/p/chat:1"}]}}
RECORDING = SHARED / "reference" / "gcp-http" / "compute-serverless-neg-cloudrun.http.log"


def create(cloud, body=None, sid="chat", query=""):
    return http(cloud, "POST", f"{SERVICES}?serviceId={sid}{query}", body if body is not None else GOOD)


def error_of(body: dict) -> dict:
    err = body["error"]
    assert set(err) <= {"code", "message", "status", "details"}
    return err


def test_malformed_json_is_400_in_googles_shape(localcloud):
    status, body = http(localcloud, "POST", f"{SERVICES}?serviceId=chat", raw=b'{"template": ')
    err = error_of(body)
    assert status == 400 and err["code"] == 400 and err["status"] == "INVALID_ARGUMENT"
    assert err["message"].startswith("Invalid JSON payload received.")


def test_a_json_array_body_is_400(localcloud):
    status, body = http(localcloud, "POST", f"{SERVICES}?serviceId=chat", [1, 2])
    assert status == 400 and error_of(body)["message"].startswith("Invalid JSON payload received.")


@pytest.mark.parametrize(
    ("body", "message", "field"),
    [
        (
            {**GOOD, "foo": 1},
            "Invalid JSON payload received. Unknown name \"foo\" at 'service': Cannot find field.",
            "service",
        ),
        (
            {"template": {"containers": [{"image": "x", "imagePullPolicy": "Always"}]}},
            "Invalid JSON payload received. Unknown name \"imagePullPolicy\" at 'service.template.containers[0]': "
            "Cannot find field.",
            "service.template.containers[0]",
        ),
        (
            {"template": {"maxInstanceRequestConcurrency": "lots", "containers": [{"image": "x"}]}},
            "Invalid value at 'service.template.max_instance_request_concurrency' (TYPE_INT32), \"lots\"",
            "service.template.max_instance_request_concurrency",
        ),
        (
            # Google's own words for this mistake (goblet/goblet#418).
            {**GOOD, "traffic": 0},
            "Invalid value at 'service.traffic' (type.googleapis.com/google.cloud.run.v2.TrafficTarget), 0",
            "service.traffic",
        ),
        (
            {**GOOD, "ingress": "EVERYONE"},
            "Invalid value at 'service.ingress' (type.googleapis.com/google.cloud.run.v2.IngressTraffic), \"EVERYONE\"",
            "service.ingress",
        ),
        (
            {"template": {"timeout": 300, "containers": [{"image": "x"}]}},
            "Invalid value at 'service.template.timeout' (type.googleapis.com/google.protobuf.Duration), 300",
            "service.template.timeout",
        ),
        (
            {**GOOD, "labels": {"a": 1}},
            "Invalid value at 'service.labels[\"a\"]' (TYPE_STRING), 1",
            'service.labels["a"]',
        ),
        (
            {"template": {"sessionAffinity": "yes", "containers": [{"image": "x"}]}},
            "Invalid value at 'service.template.session_affinity' (TYPE_BOOL), \"yes\"",
            "service.template.session_affinity",
        ),
    ],
)
def test_bad_bodies_get_googles_400_with_a_field_violation(localcloud, body, message, field):
    status, answer = create(localcloud, body)
    err = error_of(answer)
    assert status == 400 and err["status"] == "INVALID_ARGUMENT"
    assert err["message"] == message
    (detail,) = err["details"]
    assert detail["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert detail["fieldViolations"] == [{"field": field, "description": message}]


def test_two_unknown_names_are_both_reported(localcloud):
    status, answer = create(localcloud, {**GOOD, "a": 1, "b": 2})
    assert status == 400
    assert error_of(answer)["message"].splitlines() == [
        "Invalid JSON payload received. Unknown name \"a\" at 'service': Cannot find field.",
        "Invalid JSON payload received. Unknown name \"b\" at 'service': Cannot find field.",
    ]


def test_unknown_and_badly_typed_query_parameters_are_400(localcloud):
    status, answer = create(localcloud, query="&colour=blue")
    assert status == 400
    assert error_of(answer)["message"] == (
        'Invalid JSON payload received. Unknown name "colour": Cannot bind query parameter. '
        "Field 'colour' could not be found in request message."
    )
    status, answer = create(localcloud, query="&validateOnly=maybe")
    assert status == 400 and error_of(answer)["message"] == "Invalid value at 'validate_only' (TYPE_BOOL), \"maybe\""
    status, answer = http(localcloud, "GET", f"{SERVICES}?pageSize=ten")
    assert status == 400 and "(TYPE_INT32)" in error_of(answer)["message"]


def test_output_only_fields_sent_back_are_ignored(localcloud):
    """Get -> modify -> update echoes output-only fields (clientlibs.md §2a); they must not matter."""
    status, _ = create(localcloud)
    assert status == 200
    _, svc = http(localcloud, "GET", f"{SERVICES}/chat")
    svc["uri"] = "https://elsewhere"
    svc["generation"] = "99"
    svc["template"]["containers"][0]["image"] = "gcr.io/p/chat:2"
    status, _ = http(localcloud, "PATCH", f"{SERVICES}/chat", svc)
    assert status == 200
    _, after = http(localcloud, "GET", f"{SERVICES}/chat")
    assert after["generation"] == "2" and after["uri"] != "https://elsewhere"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)
FIELDS = st.sampled_from(["template", "traffic", "labels", "ingress", "scaling", "launchStage", "etag", "x"])
TEMPLATE_FIELDS = st.sampled_from(["containers", "timeout", "maxInstanceRequestConcurrency", "revision", "scaling"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    top=st.dictionaries(FIELDS, JSON, max_size=3),
    template=st.dictionaries(TEMPLATE_FIELDS, JSON, max_size=3),
)
def test_no_body_ever_gets_a_500(localcloud, top, template):
    body = {**top, "template": {**template, **({"containers": [{"image": "x"}]} if not template else {})}}
    status, answer = create(localcloud, body, sid="fuzz")
    assert status in (200, 400, 409), answer
    if status != 200:
        assert error_of(answer)["code"] == status
    http(localcloud, "DELETE", f"{SERVICES}/fuzz")


# ---- shapes ------------------------------------------------------------------------------------------


def test_enums_are_names_by_default_and_integers_when_asked(localcloud):
    create(localcloud)
    _, named = http(localcloud, "GET", f"{SERVICES}/chat")
    assert named["ingress"] == "INGRESS_TRAFFIC_ALL"
    assert named["terminalCondition"]["state"] == "CONDITION_SUCCEEDED"
    _, ints = http(localcloud, "GET", f"{SERVICES}/chat?%24alt=json%3Benum-encoding%3Dint")
    assert ints["ingress"] == 1 and ints["terminalCondition"]["state"] == 4


def test_a_mutation_answers_a_running_operation_then_a_poll_finds_it_done(localcloud):
    status, op = create(localcloud)
    assert status == 200
    assert set(op) == {"name", "metadata"}  # as the real recording: no "done" in the first answer
    assert op["metadata"]["@type"] == "type.googleapis.com/google.cloud.run.v2.Service"
    assert op["metadata"]["reconciling"] is True
    assert op["metadata"]["terminalCondition"] == {"state": "CONDITION_PENDING"}
    _, polled = http(localcloud, "GET", f"/v2/{op['name']}")
    assert set(polled) == {"name", "done", "metadata", "response"} and polled["done"] is True
    assert polled["response"]["@type"] == "type.googleapis.com/google.cloud.run.v2.Service"
    assert "uid" in polled["response"] and "uid" not in polled["metadata"]


def test_a_failed_operation_carries_a_grpc_code(localcloud):
    localcloud.world.runtime.failing_images["gcr.io/p/chat:bad"] = ("", "The container failed to start.")
    try:
        _, op = create(localcloud, {"template": {"containers": [{"image": "gcr.io/p/chat:bad"}]}})
        _, polled = http(localcloud, "GET", f"/v2/{op['name']}")
    finally:
        localcloud.world.runtime.failing_images.clear()
    assert polled["done"] is True and "response" not in polled
    assert polled["error"]["code"] == 9
    assert polled["error"]["message"].endswith("is not ready and cannot serve traffic. The container failed to start.")


def test_wait_returns_the_operation(localcloud):
    _, op = create(localcloud)
    status, waited = http(localcloud, "POST", f"/v2/{op['name']}:wait", {"timeout": "2s"})
    assert status == 200 and waited["done"] is True
    status, answer = http(localcloud, "POST", f"/v2/{op['name']}:wait", {"deadline": "2s"})
    assert status == 400 and 'Unknown name "deadline"' in error_of(answer)["message"]


def _recorded_service() -> dict:
    """The real GET service answer in the recording (the third exchange)."""
    chunks = [c.strip() for c in RECORDING.read_text().split("\n---\n")]
    get = next(
        c
        for c in chunks
        if c.startswith("GET https://run.googleapis.com") and "/services/" in c.split("\n")[0] and "\n200 OK" in c
    )
    return json.loads(get[get.index("\n{", get.index("200 OK")) :])


def _shape(value):
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__


def _missing(recorded, local, path=""):
    """Fields (and types) the recording has that the local answer lacks or types differently."""
    out = []
    if isinstance(recorded, dict):
        for key, value in recorded.items():
            if key not in local:
                out.append(f"{path}.{key}: missing")
            else:
                out.extend(_missing(value, local[key], f"{path}.{key}"))
    elif isinstance(recorded, list):
        if recorded and local:
            out.extend(_missing(recorded[0], local[0], path + "[]"))
        elif recorded:
            out.append(f"{path}: empty")
    elif recorded != local:
        out.append(f"{path}: {local} instead of {recorded}")
    return out


@pytest.mark.skipif(not RECORDING.is_file(), reason=f"the real Cloud Run recording is not at {RECORDING}")
def test_a_service_has_every_field_of_the_real_recording_with_the_same_types(localcloud):
    recorded = _recorded_service()
    body = {
        "ingress": "INGRESS_TRAFFIC_ALL",
        "labels": {"cnrm-test": "true", "managed-by-cnrm": "true"},
        "launchStage": "GA",
        "template": {
            "containers": [{"env": [{"name": "FOO", "value": "bar"}], "image": "gcr.io/cloudrun/hello"}],
            "scaling": {"maxInstanceCount": 2},
        },
        "traffic": [{"percent": 100, "type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST"}],
    }
    status, op = create(localcloud, body, sid="runservice-x")
    assert status == 200
    http(localcloud, "GET", f"/v2/{op['name']}")
    _, local = http(localcloud, "GET", f"{SERVICES}/runservice-x")
    assert _missing(_shape(recorded), _shape(local)) == []
    assert set(local) <= set(recorded) | {"description"}
    # Values the recording shows as server defaults.
    container = local["template"]["containers"][0]
    assert container["ports"] == recorded["template"]["containers"][0]["ports"]
    assert container["resources"] == recorded["template"]["containers"][0]["resources"]
    assert container["startupProbe"] == recorded["template"]["containers"][0]["startupProbe"]
    assert local["trafficStatuses"] == recorded["trafficStatuses"]
    assert local["scaling"] == recorded["scaling"]
