"""``deployer resume`` retrying a journal that finished ``rollback_incomplete`` must not act over what
happened since: an operator's ``unpin``, a traffic fix made by hand, the first attempt's own good work, a
gate that did not pass. End to end: the seed's world in a local cloud with real revision processes, the
real Google clients over HTTP, the commands through ``deployer.cli.main``.

The emergency rollback's first attempt ends incomplete either because ``--verify`` does not pass (it moves
traffic to a broken revision named with ``--to``) or on calls the local cloud's fault API refuses once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.cloud import compute_v1, run_v2

from deployer.gcp.clients import Clients
from deployer.orchestrator.deploy import deploy
from deployer.orchestrator.journal import load
from deployer.orchestrator.lock import lock_key
from deployer.orchestrator.pins import read_pin
from deployer.orchestrator.resume import _candidate
from tests.orchestrator.deploy_support import (
    PROJECT,
    SERVICE_NAME,
    cloud_fixture,  # noqa: F401  (the module's cloud)
    config_data,
    control,
    logs_back_to_defaults,  # noqa: F401  (autouse fixture)
    make_config,
    options,
    reseeded_clients,
    run,
    snapshot,
    wait_settled,
    write_config,
)
from tests.orchestrator.test_resume_retry_e2e import fault, faults_left, newest, store_and_key

pytestmark = pytest.mark.e2e


@pytest.fixture(name="clients")
def clients_fixture(cloud: Any) -> Iterator[Clients]:
    c = reseeded_clients(cloud)
    yield c
    control(cloud, "faults", method="DELETE")
    control(cloud, "latency", {"run.operations.wait": 0, "compute.securityPolicies.removeRule": 0})


@pytest.fixture(name="data")
def data_fixture(cloud: Any, clients: Clients, tmp_path: Path) -> dict[str, Any]:
    out = config_data(cloud, tmp_path / "state")
    # the deploy changes the backend service too, so that an --infra rollback restores it
    out["load_balancer"]["custom_request_headers"] = ["X-Forwarded-Proto: https", "X-Release: canary"]
    return out


def broken_revision(data: dict[str, Any]) -> str:
    """Deploy the good release, then a broken one (its candidate gate fails: rolled back, its revision
    left): the broken revision's name, for ``rollback --to``."""
    assert deploy(make_config(data), options()).status == "succeeded"
    bad = dict(data, service=dict(data["service"], image="local/chat-backend:broken-upgrade"))
    assert deploy(make_config(bad), options()).status == "rolled_back"
    rev = _candidate(newest(bad))
    assert rev is not None
    return rev


def rollback_that_fails_verify(capsys: Any, data: dict[str, Any], cfg: str) -> Any:
    """An emergency rollback to the broken revision with ``--verify``: traffic moved, pinned, incomplete."""
    to = broken_revision(data)
    code, out, err = run(capsys, "rollback", "-c", cfg, "--reason", "5xx", "--to", to, "--verify")
    assert code == 3, out + err
    first = newest(data)
    assert (first.started.operation, first.status) == ("rollback", "rollback_incomplete")
    return first


def test_resume_after_an_unpin_changes_nothing(cloud, clients, data, tmp_path, capsys):
    cfg = write_config(data, tmp_path / "deploy.json")
    first = rollback_that_fails_verify(capsys, data, cfg)
    store, key = store_and_key(data)
    assert read_pin(store, key) is not None
    code, out, err = run(capsys, "unpin", "-c", cfg, "--reason", "ops: we will deploy a fix")
    assert code == 0, out + err
    assert read_pin(store, key) is None
    moved = snapshot(clients)

    code, out, err = run(capsys, "resume", "-c", cfg)
    assert code == 0, out + err
    (line,) = [x for x in out.splitlines() if x.strip()]
    assert line.startswith(f"nothing to resume: {first.deploy_id} ended rollback_incomplete, but the unpin d-"), out
    assert line.endswith("came after it: resume retries it only while nothing has followed it"), out
    assert read_pin(store, key) is None  # the operator's unpin stands
    assert snapshot(clients) == moved
    after = load(store, key, first.deploy_id)
    assert after.status == "rollback_incomplete" and not after.reopened
    assert store.read(lock_key(key)) is None


def test_resume_leaves_a_traffic_fix_made_by_hand(cloud, clients, data, tmp_path, capsys):
    cfg = write_config(data, tmp_path / "deploy.json")
    first = rollback_that_fails_verify(capsys, data, cfg)
    # ops fix it by hand: all traffic back to the revision that served before the rollback
    decision = next(d for d in first.decisions if d.decision == "rollback")
    served_before = decision.detail["traffic_before"][0]["revision"]
    services = clients.services()
    svc = services.get_service(name=SERVICE_NAME)
    kind = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
    svc.traffic = [run_v2.TrafficTarget(type_=kind, revision=served_before, percent=100)]
    services.update_service(service=svc).result()
    wait_settled(clients)
    fixed = snapshot(clients)

    code, out, err = run(capsys, "resume", "-c", cfg)
    assert code == 3, out + err
    assert "changed by someone else since the first attempt" in out, out
    assert snapshot(clients) == fixed  # not moved back to the broken revision
    state = newest(data)
    assert state.deploy_id == first.deploy_id and state.status == "aborted"
    assert [f.status for f in state.earlier] == ["rollback_incomplete"]
    assert state.finished is not None and state.finished.remaining[0].startswith(f"run.service {SERVICE_NAME}: ")
    assert not any(g.target == "restored" for g in state.gates[1:])  # no second gate on a path it did not set
    store, key = store_and_key(data)
    assert store.read(lock_key(key)) is None


def test_a_retry_as_left_carries_forward_and_keeps_its_pin(cloud, clients, data, tmp_path, capsys):
    """Nobody touched anything: the retry moves nothing (traffic is where the first attempt put it), writes
    no new pin, and verifies again (the broken revision fails again: still incomplete, not aborted)."""
    cfg = write_config(data, tmp_path / "deploy.json")
    first = rollback_that_fails_verify(capsys, data, cfg)
    store, key = store_and_key(data)
    pin = read_pin(store, key)
    assert pin is not None
    moved = snapshot(clients)

    code, out, err = run(capsys, "resume", "-c", cfg)
    assert code == 3, out + err
    state = newest(data)
    assert state.deploy_id == first.deploy_id and state.status == "rollback_incomplete"
    assert [g.target for g in state.gates] == ["restored", "restored"]
    assert [d.decision for d in state.decisions].count("pin") == 1
    assert read_pin(store, key) == pin
    assert snapshot(clients)["traffic"] == moved["traffic"]


def test_a_failing_retry_keeps_what_the_first_attempt_put_back(cloud, clients, data, tmp_path, capsys):
    cfg = write_config(data, tmp_path / "deploy.json")
    before = snapshot(clients)
    assert deploy(make_config(data), options()).status == "succeeded"
    deployed = snapshot(clients)
    assert deployed["backend_service"] != before["backend_service"] and 50 in deployed["rules"]
    # first attempt: the backend service is restored, rule 50's removal is refused (late, so that the backend
    # write has landed), and putting the backend service back is refused too: incomplete, the backend restored
    control(cloud, "latency", {"compute.securityPolicies.removeRule": 1.0})
    fault(cloud, "compute.securityPolicies.removeRule", 400)
    fault(cloud, "compute.backendServices.patch", 403, skip=1)
    code, out, err = run(capsys, "rollback", "-c", cfg, "--reason", "5xx since v2", "--infra")
    assert code == 3, out + err
    assert faults_left(cloud) == []
    control(cloud, "latency", {"compute.securityPolicies.removeRule": 0})
    first = newest(data)
    assert first.status == "rollback_incomplete"
    half = snapshot(clients)
    assert half["backend_service"] == before["backend_service"] and half["traffic"] == deployed["traffic"]

    # the retry removes rule 50 (its own change), then its traffic update is refused: it puts back only rule 50
    fault(cloud, "run.services.patch", 400)
    code, out, err = run(capsys, "resume", "-c", cfg)
    assert code == 3, out + err
    assert faults_left(cloud) == []
    now = snapshot(clients)
    assert now["backend_service"] == before["backend_service"]  # the first attempt's restore stays
    assert now["rules"] == deployed["rules"] and now["traffic"] == deployed["traffic"]
    state = newest(data)
    assert state.deploy_id == first.deploy_id and state.status == "rollback_incomplete"
    assert [f.status for f in state.earlier] == ["rollback_incomplete"]

    code, out, err = run(capsys, "resume", "-c", cfg)  # a healthy cloud: the third attempt finishes it
    assert code == 0, out + err
    done = snapshot(clients)
    assert {k: done[k] for k in ("traffic", "backend_service", "rules")} == {
        k: before[k] for k in ("traffic", "backend_service", "rules")
    }
    assert newest(data).status == "succeeded"


DENY_ALL = 10  # a priority the deploy does not own


def deny_all(clients: Clients) -> None:
    rule = compute_v1.SecurityPolicyRule(
        priority=DENY_ALL,
        action="deny(403)",
        description="ops: closed while we look",
        match=compute_v1.SecurityPolicyRuleMatcher(
            versioned_expr="SRC_IPS_V1", config=compute_v1.SecurityPolicyRuleMatcherConfig(src_ip_ranges=["*"])
        ),
    )
    clients.security_policies().add_rule(
        request=compute_v1.AddRuleSecurityPolicyRequest(
            project=PROJECT, security_policy="chat-armor", security_policy_rule_resource=rule
        )
    ).result()


def open_again(clients: Clients) -> None:
    clients.security_policies().remove_rule(
        request=compute_v1.RemoveRuleSecurityPolicyRequest(
            project=PROJECT, security_policy="chat-armor", priority=DENY_ALL
        )
    ).result()


def test_a_deploy_retry_keeps_verifying_once_asked(cloud, clients, data, tmp_path, capsys):
    data["service"]["image"] = "local/chat-backend:broken-upgrade"  # the candidate gate fails: roll back
    cfg = write_config(data, tmp_path / "deploy.json")
    before = snapshot(clients)
    fault(cloud, "compute.securityPolicies.removeRule", 400)  # its rollback cannot remove rule 50
    result = deploy(make_config(data), options())
    assert result.status == "rollback_incomplete", result.why
    first = newest(data)

    deny_all(clients)  # the public path answers 403 for now: the gate cannot pass
    code, out, err = run(capsys, "resume", "-c", cfg, "--verify")
    assert code == 3, out + err
    assert newest(data).status == "rollback_incomplete"
    code, out, err = run(capsys, "resume", "-c", cfg)  # no --verify: the gate asked for before still runs
    assert code == 3, out + err
    state = newest(data)
    assert state.status == "rollback_incomplete"
    assert [g.verdict for g in state.gates if g.target == "restored"][-2:] != ["Passed", "Passed"]
    assert len([g for g in state.gates if g.target == "restored"]) == 2

    open_again(clients)
    code, out, err = run(capsys, "resume", "-c", cfg)
    assert code == 0, out + err
    state = newest(data)
    assert state.deploy_id == first.deploy_id and state.status == "rolled_back"
    assert [g.verdict for g in state.gates if g.target == "restored"][-1] == "Passed"
    got = snapshot(clients)
    assert {k: got[k] for k in ("traffic", "backend_service", "rules")} == {
        k: before[k] for k in ("traffic", "backend_service", "rules")
    }
