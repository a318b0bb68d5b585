"""``deployer resume`` after a rollback that could not finish, and Ctrl-C / SIGTERM during ``deployer
rollback``, end to end: the seed's world in a local cloud with real revision processes, the real Google
clients over HTTP, the commands through ``deployer.cli.main`` (and as a real process for the signals).

The first rollback attempt fails on calls the local cloud's fault API refuses once (``FaultRule`` with a
``skip`` past the deploy's own calls); the faults are consumed by then, so ``resume`` meets a healthy
cloud. "Back" is what the deploy promises: the same effective traffic, the backend service minus its
fingerprint and the owned Cloud Armor rules byte-identical to before.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from google.cloud import compute_v1

from deployer.orchestrator.deploy import deploy, state_key
from deployer.orchestrator.journal import Started, journal_key, list_deploys, load, read_records
from deployer.orchestrator.lock import lock_key
from deployer.orchestrator.pins import read_pin
from deployer.state.local import LocalStateStore
from tests.orchestrator.deploy_support import (
    PROJECT,
    cloud_fixture,  # noqa: F401  (the module's cloud)
    config_data,
    control,
    logs_back_to_defaults,  # noqa: F401  (autouse fixture)
    make_config,
    options,
    reseeded_clients,
    run,
    snapshot,
    write_config,
)
from tests.test_cli_errors import _signal_when, hint_of, one_error

pytestmark = pytest.mark.e2e

RULE_50 = "armor.rule projects/chat-staging/global/securityPolicies/chat-armor/rules/50"


@pytest.fixture
def clients(cloud):
    c = reseeded_clients(cloud)
    yield c
    control(cloud, "faults", method="DELETE")
    control(cloud, "latency", {"run.operations.wait": 0, "run.services.get": 0})


@pytest.fixture
def data(cloud, clients, tmp_path):
    out = config_data(cloud, tmp_path / "state")
    # the deploy changes the backend service too, so that its restore is one of the calls that fail
    out["load_balancer"]["custom_request_headers"] = ["X-Forwarded-Proto: https", "X-Release: canary"]
    return out


def fault(cloud, method: str, status: int, skip: int = 0) -> None:
    control(cloud, "faults", {"method": method, "status": status, "skip": skip})


def faults_left(cloud) -> list[Any]:
    return list(cloud.world.faults.rules)


def store_and_key(data: dict[str, Any]) -> tuple[LocalStateStore, str]:
    return LocalStateStore(data["state"]["path"]), state_key(make_config(data))


def newest(data: dict[str, Any]) -> Any:
    store, key = store_and_key(data)
    return load(store, key, list_deploys(store, key)[0])


def owned(world: dict[str, Any]) -> dict[str, Any]:
    return {k: world[k] for k in ("traffic", "backend_service", "rules")}


# ---- a deploy whose rollback could not finish ------------------------------------------------------------------


def test_resume_puts_back_what_an_incomplete_rollback_left(cloud, clients, data, tmp_path, capsys):
    data["service"]["image"] = "local/chat-backend:broken-upgrade"  # the candidate gate fails: roll back
    cfg = write_config(data, tmp_path / "deploy.json")
    before = snapshot(clients)
    # the deploy makes one UpdateService (the candidate) and one backend-service patch; its rollback's own
    # writes are the next ones, and only the rollback removes rule 50 (the deploy adds it)
    fault(cloud, "run.services.patch", 400, skip=1)
    fault(cloud, "compute.backendServices.patch", 403, skip=1)
    fault(cloud, "compute.securityPolicies.removeRule", 400)

    code, out, _ = run(capsys, "deploy", "-c", cfg, "--yes")
    assert code == 3, out
    assert faults_left(cloud) == [], "every fault fired"
    lines = out.splitlines()
    assert lines[0].startswith("ROLLBACK INCOMPLETE"), out
    at = lines.index("  what to run:")
    assert lines[at + 1].strip().startswith(f"deployer resume -c {cfg}"), out  # named first
    assert lines[at + 2].strip() == (
        "or by hand: gcloud compute security-policies rules delete 50 --security-policy chat-armor "
        "--project chat-staging"
    ), out
    half = snapshot(clients)
    assert half["traffic"] != before["traffic"] and half["backend_service"] != before["backend_service"]
    assert 50 in half["rules"] and 50 not in before["rules"]
    first = newest(data)
    assert first.status == "rollback_incomplete" and first.finished is not None
    assert len(first.finished.remaining) == 3

    code, out, err = run(capsys, "resume", "-c", cfg)
    assert code == 0, out + err
    assert "undo → rolled_back" in out and "its rollback was incomplete" in out
    assert snapshot(clients) == before  # traffic (tags too), backend service, rules, annotations, labels
    state = newest(data)
    assert state.deploy_id == first.deploy_id  # the same journal, reopened
    assert state.status == "rolled_back" and [f.status for f in state.earlier] == ["rollback_incomplete"]
    assert [d.decision for d in state.decisions] == ["rollback", "resume"]
    store, key = store_and_key(data)
    assert out.splitlines()[-1] == f"  journal: {store.where(journal_key(key, first.deploy_id))}"  # where it is
    assert store.read(lock_key(key)) is None

    code, out, _ = run(capsys, "history", "-c", cfg, "--json")
    assert code == 0
    (item,) = json.loads(out)["deploys"]
    assert (item["deploy_id"], item["status"]) == (first.deploy_id, "rolled_back")
    assert item["decisions"][0].startswith("rollback: gate_candidate failed")
    assert item["decisions"][1].startswith("resume: its rollback was incomplete (left: ")
    code, out, _ = run(capsys, "why", first.deploy_id, "-c", cfg)
    assert code == 0 and "decision resume: its rollback was incomplete" in out and "resume" in out

    code, out, _ = run(capsys, "resume", "-c", cfg)  # finished for good now
    assert code == 0 and f"nothing to resume: the newest journal ({first.deploy_id}) is rolled_back" in out


def test_resume_leaves_a_resource_someone_else_changed_in_between(cloud, clients, data, tmp_path, capsys):
    data["service"]["image"] = "local/chat-backend:broken-upgrade"
    cfg = write_config(data, tmp_path / "deploy.json")
    before = snapshot(clients)
    fault(cloud, "compute.backendServices.patch", 403, skip=1)
    fault(cloud, "compute.securityPolicies.removeRule", 400)
    result = deploy(make_config(data), options())
    assert (result.status, result.exit_code) == ("rollback_incomplete", 3), result.why
    assert result.resume == f"deployer resume -c {make_config(data).source.file}"
    assert faults_left(cloud) == []
    # someone edits the rule the rollback could not remove
    clients.security_policies().patch_rule(
        request=compute_v1.PatchRuleSecurityPolicyRequest(
            project=PROJECT,
            security_policy="chat-armor",
            priority=50,
            security_policy_rule_resource=compute_v1.SecurityPolicyRule(description="kept on purpose by ops"),
        )
    ).result()

    code, out, err = run(capsys, "resume", "-c", cfg)
    assert code == 3, out + err
    assert f"remaining: {RULE_50}: rule 50 was changed by someone else" in out
    now = snapshot(clients)
    assert now["rules"][50]["description"] == "kept on purpose by ops"  # left alone
    assert now["backend_service"] == before["backend_service"]  # what nobody else touched is back
    assert now["traffic"] == before["traffic"]
    state = newest(data)
    assert state.status == "aborted" and [f.status for f in state.earlier] == ["rollback_incomplete"]
    assert state.finished is not None and len(state.finished.remaining) == 1
    store, key = store_and_key(data)
    assert store.read(lock_key(key)) is None


# ---- an emergency rollback that could not finish ---------------------------------------------------------------


def test_resume_carries_an_incomplete_emergency_rollback_to_its_target(cloud, clients, data, tmp_path, capsys):
    cfg = write_config(data, tmp_path / "deploy.json")
    before = snapshot(clients)
    assert deploy(make_config(data), options()).status == "succeeded"
    deployed = snapshot(clients)
    # the rollback restores the infrastructure, then its traffic update is refused; putting back its own
    # backend-service restore is refused too: incomplete
    fault(cloud, "run.services.patch", 400)
    fault(cloud, "compute.backendServices.patch", 403, skip=1)
    code, out, err = run(capsys, "rollback", "-c", cfg, "--reason", "5xx since v2", "--infra")
    assert code == 3, out + err
    assert faults_left(cloud) == []
    assert "INCOMPLETE" in out and f"what to run: deployer resume -c {cfg}" in out
    first = newest(data)
    assert (first.started.operation, first.status) == ("rollback", "rollback_incomplete")
    # the by-hand way and the journal line name the journal's file (absolute), not its key in the store
    where = tmp_path / "state" / "deploys" / "chat-staging/us-central1/chat-backend" / f"{first.deploy_id}.json"
    assert where.is_file() and f"  journal: {where}\n" in out, out
    assert f"/backendServices/chat-backend-bs from its pre-image in the journal {where}\n" in out, out
    half = snapshot(clients)
    assert half["traffic"] == deployed["traffic"] and half["backend_service"] == before["backend_service"]

    code, out, err = run(capsys, "resume", "-c", cfg)
    assert code == 0, out + err
    assert owned(snapshot(clients)) == owned(before)  # traffic and infrastructure as before the deploy
    state = newest(data)
    assert state.deploy_id == first.deploy_id and state.status == "succeeded"
    assert [f.status for f in state.earlier] == ["rollback_incomplete"]
    store, key = store_and_key(data)
    pin = read_pin(store, key)
    assert pin is not None and pin.rollback_id == first.deploy_id and pin.reason == "5xx since v2"
    assert store.read(lock_key(key)) is None


# ---- Ctrl-C / SIGTERM during `deployer rollback` -----------------------------------------------------------------


def journal_shows(state: Path, record: str) -> Any:
    """Ready once the rollback's journal (in ``state``) holds a record of type ``record``."""

    store = LocalStateStore(state)
    key = "chat-staging/us-central1/chat-backend"

    def wait(proc: subprocess.Popen[str]) -> str:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"it ended first: {proc.communicate()}"
            for deploy_id in list_deploys(store, key):
                records, _ = read_records(store, key, deploy_id)
                started = records[0]
                ours = isinstance(started, Started) and started.operation == "rollback"
                if ours and any(r.type == record for r in records):
                    return ""
            time.sleep(0.02)
        raise AssertionError(f"no {record} record in a rollback journal under {state}")

    return wait


SIGNALS = [
    (signal.SIGINT, 130, "error: interrupted by Ctrl-C (SIGINT) before the command finished"),
    (signal.SIGTERM, 143, "error: terminated by SIGTERM before the command finished"),
]


@pytest.mark.parametrize(("sig", "code", "says"), SIGNALS, ids=["SIGINT", "SIGTERM"])
def test_a_signal_after_the_rollback_acted_says_to_resume(cloud, clients, data, tmp_path, capsys, sig, code, says):
    cfg = write_config(data, tmp_path / "deploy.json")
    before = snapshot(clients)
    assert deploy(make_config(data), options()).status == "succeeded"
    control(cloud, "latency", {"run.operations.wait": 8})  # the traffic update is sent; its wait hangs
    got, out, err = _signal_when(
        ["rollback", "-c", cfg, "--reason", "5xx"], sig, journal_shows(tmp_path / "state", "effect_done")
    )
    assert (got, out) == (code, "")
    line = one_error(err)
    assert line.startswith(f"{says}: rollback d-") and "had begun changing chat-backend" in line, err
    assert hint_of(err) == f"hint: run `deployer resume -c {cfg}` to finish it (its journal says how far it got)"
    left = newest(data)
    assert left.status == "running" and left.started.operation == "rollback"  # left for resume
    control(cloud, "latency", {"run.operations.wait": 0})

    code_, out, err = run(capsys, "resume", "-c", cfg)
    assert code_ == 0, out + err
    state = newest(data)
    assert state.deploy_id == left.deploy_id and state.status == "succeeded"
    assert snapshot(clients)["traffic"] == before["traffic"]
    store, key = store_and_key(data)
    assert read_pin(store, key) is not None and store.read(lock_key(key)) is None


def test_a_signal_before_the_rollback_acted_leaves_nothing_to_resume(cloud, clients, data, tmp_path):
    cfg = write_config(data, tmp_path / "deploy.json")
    assert deploy(make_config(data), options()).status == "succeeded"
    deployed = snapshot(clients)
    control(cloud, "latency", {"run.services.get": 3})  # the rollback waits on its GetService
    got, out, err = _signal_when(
        ["rollback", "-c", cfg, "--reason", "5xx"], signal.SIGINT, journal_shows(tmp_path / "state", "started")
    )
    assert (got, out) == (130, "")
    assert one_error(err) == "error: interrupted by Ctrl-C (SIGINT) before the command finished"
    assert hint_of(err) is None
    control(cloud, "latency", {"run.services.get": 0})
    state = newest(data)
    assert (state.started.operation, state.status) == ("rollback", "failed")  # nothing changed, nothing left
    assert snapshot(clients)["traffic"] == deployed["traffic"]
    store, key = store_and_key(data)
    assert store.read(lock_key(key)) is None
