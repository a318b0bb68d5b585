"""The local cloud's shared machinery: control plane, faults, latency, request log, error shapes."""

from __future__ import annotations

import json
import urllib.request

import pytest

from deployer.localcloud.world import FaultRule, World


def call(cloud, method: str, path: str, body: object | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        cloud.endpoint + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_health_answers_200(localcloud):
    status, body = call(localcloud, "GET", "/_localcloud/health")
    assert status == 200
    assert body["status"] == "ok"


def test_unknown_path_is_a_google_shaped_404_not_a_traceback(localcloud):
    status, body = call(localcloud, "GET", "/nothing/here")
    assert status == 404
    assert body["error"]["code"] == 404
    assert "not found" in body["error"]["message"]


def test_request_log_records_method_and_status(localcloud):
    call(localcloud, "GET", "/_localcloud/health")
    status, body = call(localcloud, "GET", "/_localcloud/requests")
    assert status == 200
    entries = [r for r in body["requests"] if r["method"] == "control.health"]
    assert entries and entries[-1]["status"] == 200


def test_fault_rules_are_validated(localcloud):
    status, _ = call(localcloud, "POST", "/_localcloud/faults", {"method": "x"})
    assert status == 400
    status, _body = call(localcloud, "POST", "/_localcloud/faults", {"method": "x", "status": 503, "kind": "?"})
    assert status == 400


def test_fault_take_consumes_count_and_matches_prefixes():
    world = World()
    world.faults.add(FaultRule(method="compute.backendServices.*", status=503, count=2))
    assert world.faults.take("run.services.get") is None
    for method in ("compute.backendServices.patch", "compute.backendServices.get"):
        rule = world.faults.take(method)
        assert rule is not None and rule.status == 503, method
    assert world.faults.take("compute.backendServices.get") is None


def test_seeded_worlds_mint_identical_ids():
    a, b = World(seed=3), World(seed=3)
    assert [a.fingerprint(), a.uuid(), a.numeric_id()] == [b.fingerprint(), b.uuid(), b.numeric_id()]
    a.reset(seed=4)
    assert a.fingerprint() != b.fingerprint()


def test_reset_clears_faults_and_log(localcloud):
    call(localcloud, "POST", "/_localcloud/faults", {"method": "run.services.get", "status": 503})
    call(localcloud, "POST", "/_localcloud/reset", {})
    _status, body = call(localcloud, "GET", "/_localcloud/faults")
    assert body["faults"] == []


@pytest.mark.parametrize("doc", ["[1, 2", "- just\n- a list\n"])
def test_seed_rejects_bad_documents_with_400(localcloud, doc):
    req = urllib.request.Request(localcloud.endpoint + "/_localcloud/seed", data=doc.encode(), method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.code == 400
    assert "error" in json.loads(info.value.read())


def test_reset_restores_the_initial_project_and_region():
    world = World(project="p0", region="r0")
    world.project, world.region = "seeded", "elsewhere"
    world.reset()
    assert (world.project, world.region) == ("p0", "r0")
