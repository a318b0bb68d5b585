"""``deployer deploy`` end to end: the seed's world in a local cloud with real revision processes behind
the load balancer, the real Google clients over HTTP, real WebSocket gates.

One local cloud serves the module; each test re-seeds it. Failure modes come from the sample chat
backend's image tags (configs/local-images.yaml). "Equal to the pre-image" means what the deploy
promises: the same effective traffic (revision, percent, tag), the backend service byte-identical
apart from its fingerprint, the owned Cloud Armor rules byte-identical.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import structlog
from google.cloud import run_v2

from deployer.cli import main
from deployer.errors import ConflictError, DriftError, LockHeldError, PreflightError
from deployer.orchestrator.deploy import Deployment, deploy, state_key
from deployer.orchestrator.journal import list_deploys, load
from deployer.orchestrator.lock import ServiceLock
from deployer.orchestrator.owner import Owner
from deployer.plan import ANNOTATION_DEPLOY_ID, ANNOTATION_LAST_GOOD, ANNOTATION_PREVIOUS
from deployer.state.local import LocalStateStore
from tests.orchestrator.deploy_support import (
    PROJECT,
    SERVICE_NAME,
    cloud_fixture,  # noqa: F401  (the module's cloud)
    config_data,
    control,
    logs_back_to_defaults,  # noqa: F401  (autouse fixture)
    make_config,
    mutating_calls,
    options,
    reseeded_clients,
    served_version,
    snapshot,
    wait_settled,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def clients(cloud):
    return reseeded_clients(cloud)


@pytest.fixture
def data(cloud, clients, tmp_path):
    return config_data(cloud, tmp_path / "state")


def journal_of(data: dict[str, Any], deploy_id: str):
    store = LocalStateStore(data["state"]["path"])
    return load(store, state_key(make_config(data)), deploy_id)


# ---- the good path -----------------------------------------------------------------------------------


def test_a_good_canary_deploy(cloud, clients, data):
    data["rollout"]["bake_seconds"] = 7
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    before = snapshot(clients)
    old = before["traffic"][0].revision
    assert served_version(cloud) == "v1"
    with structlog.testing.capture_logs() as events:
        result = deploy(make_config(data), options(sleep=fake_sleep))
    assert (result.status, result.exit_code) == ("succeeded", 0), result.why
    assert result.deploy_id is not None
    assert slept == [7.0, 7.0]  # one bake per traffic step, through the injected sleep
    assert [s["step"] for s in result.steps] == [
        "apply",
        "gate_candidate",
        "shift 50%",
        "bake 50%",
        "gate_public 50%",
        "shift 100%",
        "bake 100%",
        "gate_public 100%",
    ]
    assert [g["verdict"] for g in result.gates] == ["Passed", "Passed", "Passed"]
    new = result.revision
    assert new is not None and new.startswith("chat-backend-") and len(new) <= 63

    after = snapshot(clients)
    assert [(s.revision, s.percent, s.tag) for s in after["traffic"]] == sorted([(new, 100, ""), (old, 0, "previous")])
    assert after["annotations"] == {
        ANNOTATION_DEPLOY_ID: result.deploy_id,
        ANNOTATION_LAST_GOOD: new,
        ANNOTATION_PREVIOUS: old,
    }
    assert 50 in after["rules"] and 50 not in before["rules"]
    assert served_version(cloud) == "v2"

    state = journal_of(data, result.deploy_id)
    assert state.status == "succeeded" and state.finished is not None
    assert state.finished.detail["owned_armor_priorities"] == [50, 1000, 2147483647]
    assert [g.verdict for g in state.gates] == ["Passed", "Passed", "Passed"]

    steps = [e for e in events if e["event"] == "deploy.step"]
    assert {**steps[0], "log_level": "info"} == {
        "event": "deploy.step",
        "log_level": "info",
        "deploy_id": result.deploy_id,
        "service": "chat-staging/us-central1/chat-backend",
        "phase": "apply",
        "step": "apply",
        "percent": None,
    }
    assert {e["phase"] for e in steps} == {"apply", "gate_candidate", "shift", "bake", "gate_public"}
    finished = next(e for e in events if e["event"] == "deploy.finished")
    assert (finished["status"], finished["deploy_id"]) == ("succeeded", result.deploy_id)


def test_a_redeploy_with_nothing_changed_makes_zero_mutating_calls(cloud, clients, data, tmp_path, capsys):
    assert deploy(make_config(data), options()).status == "succeeded"
    mark = len(cloud.world.requests)
    again = deploy(make_config(data), options())
    assert (again.status, again.exit_code, again.deploy_id) == ("no_changes", 0, None)
    assert mutating_calls(cloud, mark) == []
    assert len(cloud.world.requests) > mark  # it did read
    config_file = tmp_path / "deploy.yaml"
    config_file.write_text(json.dumps(data))
    assert main(["plan", "-c", str(config_file), "--detailed-exitcode"]) == 0
    assert "No changes for" in capsys.readouterr().out


# ---- failure modes of the sample backend ------------------------------------------------------------

# (image tag, the step that catches it, gate overrides)
MODES = [
    ("broken-upgrade", "gate_candidate", {}),
    ("never-listen", "apply", {}),
    ("crash", "gate_candidate", {"candidate": {"hold": 6.0}}),  # exits 5 s after it starts
    ("slow-handshake", "gate_candidate", {}),  # 6 s to the 101, over p95 2000 ms
    ("flaky-1011", "gate_public", {"public": {"hold": 3.5}}),  # closes sockets with 1011 after 3 s
    ("mute", "gate_candidate", {}),  # never answers the ping the candidate gate sends
]


@pytest.mark.parametrize(("tag", "caught_at", "gate"), MODES, ids=[m[0] for m in MODES])
def test_each_failure_mode_is_rolled_back_to_the_pre_images(cloud, clients, data, tag, caught_at, gate):
    data["service"]["image"] = f"local/chat-backend:{tag}"
    # also change the backend service, so its restore is exercised too
    data["load_balancer"]["custom_request_headers"] = ["X-Forwarded-Proto: https", "X-Release: canary"]
    for target, values in gate.items():
        data["gate"][target].update(values)
    before = snapshot(clients)
    result = deploy(make_config(data), options())
    assert (result.status, result.exit_code) == ("rolled_back", 1), result.why
    failed = [s["step"] for s in result.steps if not s["ok"]]
    assert failed[0].startswith(caught_at), result.steps
    assert result.why and result.why.startswith(caught_at)
    assert snapshot(clients) == before
    assert {r["kind"] for r in result.restored if r["stage"] == "done"} >= {"compute.backendService", "armor.rule"}
    assert result.pins == [before["traffic"][0].revision]  # the seed's LATEST, pinned
    state = journal_of(data, str(result.deploy_id))
    assert state.status == "rolled_back"
    assert state.decisions[0].decision == "rollback"
    assert served_version(cloud) == "v1"


# ---- API failures ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 403])
def test_a_refused_backend_service_patch_leaves_nothing_changed(cloud, clients, data, status):
    data["load_balancer"]["log_sample_rate"] = 0.5
    before = snapshot(clients)
    control(cloud, "faults", {"method": "compute.backendServices.patch", "status": status})
    result = deploy(make_config(data), options())
    assert result.exit_code == 1 and result.status in ("rolled_back", "failed"), result.why
    assert f"HTTP {status}" in str(result.why)
    assert snapshot(clients) == before
    assert not result.remaining


def test_two_503s_are_retried_and_the_deploy_completes(cloud, clients, data):
    data["load_balancer"]["log_sample_rate"] = 0.5
    control(cloud, "faults", {"method": "run.services.patch", "status": 503, "count": 2})
    control(cloud, "faults", {"method": "compute.backendServices.patch", "status": 503, "count": 2})
    mark = len(cloud.world.requests)
    with structlog.testing.capture_logs() as events:
        result = deploy(make_config(data), options())
    assert (result.status, result.exit_code) == ("succeeded", 0), result.why
    calls = mutating_calls(cloud, mark)
    assert calls.count("run.services.patch 503") == 2
    assert calls.count("compute.backendServices.patch 503") == 2
    assert calls.count("compute.backendServices.patch 200") == 1
    retries = [e for e in events if e["event"] == "gcp.retry"]
    assert sorted((e["method"], e["status"], e["attempt"]) for e in retries) == [
        ("compute.backendServices.patch", 503, 1),
        ("compute.backendServices.patch", 503, 2),
        ("run.services.patch", 503, 1),
        ("run.services.patch", 503, 2),
    ]
    bs = clients.backend_services().get(project=PROJECT, backend_service="chat-backend-bs")
    assert bs.log_config.sample_rate == 0.5


def test_a_foreign_change_during_the_deploy_is_never_overwritten(cloud, clients, data):
    data["rollout"]["bake_seconds"] = 1
    before = snapshot(clients)
    services = clients.services()

    async def someone_else_edits(_seconds: float) -> None:
        # someone tags a revision by hand: traffic is what the deploy owns, so it must not be overwritten
        svc = services.get_service(name=SERVICE_NAME)
        old = before["traffic"][0].revision
        svc.traffic.append(
            run_v2.TrafficTarget(
                type_=run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION,
                revision=old,
                tag="hotfix",
            )
        )
        svc.labels["owner"] = "someone-else"
        await asyncio.to_thread(lambda: services.update_service(service=svc).result())

    result = deploy(make_config(data), options(sleep=someone_else_edits))
    assert (result.status, result.exit_code) == ("aborted", 3), result.why
    assert "409" in str(result.why) or "conflict" in str(result.why)
    now = snapshot(clients)
    assert now["labels"]["owner"] == "someone-else"  # not overwritten
    assert "hotfix" in {s.tag for s in now["traffic"]}
    assert now["backend_service"] == before["backend_service"] and now["rules"] == before["rules"]
    assert any("changed by someone else" in line for line in result.remaining)
    assert any(h.startswith("gcloud run services update-traffic chat-backend") for h in result.hints)


def test_a_foreign_label_change_during_the_deploy_is_kept_and_the_deploy_rolls_back(cloud, clients, data):
    """Someone else's write that leaves traffic, template and deployer's annotations alone (a label) moves
    the etag: the next step gets 409 and the deploy rolls back what it owns, keeping their label."""
    data["rollout"]["bake_seconds"] = 1
    before = snapshot(clients)
    services = clients.services()

    async def someone_else_labels(_seconds: float) -> None:
        svc = services.get_service(name=SERVICE_NAME)
        svc.labels["owner"] = "someone-else"
        await asyncio.to_thread(lambda: services.update_service(service=svc).result())

    result = deploy(make_config(data), options(sleep=someone_else_labels))
    assert (result.status, result.exit_code) == ("rolled_back", 1), result.why
    assert "409" in str(result.why) or "conflict" in str(result.why)
    now = snapshot(clients)
    assert now["labels"]["owner"] == "someone-else"  # kept
    assert now["traffic"] == before["traffic"]
    assert now["backend_service"] == before["backend_service"] and now["rules"] == before["rules"]
    service_item = next(r for r in result.restored if r["kind"] == "run.service")
    assert "someone else's change to labels kept" in service_item["detail"]


def test_an_interrupt_rolls_back(cloud, clients, data):
    data["rollout"]["bake_seconds"] = 1
    before = snapshot(clients)
    deployment = Deployment(make_config(data), options())

    async def interrupted(_seconds: float) -> None:
        deployment.abort("SIGINT received")
        await asyncio.sleep(10)  # cancelled by the abort

    deployment.options.sleep = interrupted
    result = asyncio.run(deployment.run())
    assert (result.status, result.exit_code) == ("rolled_back", 1)
    assert "interrupted during bake 50%: SIGINT received" in str(result.why)
    assert [(s["step"], s["ok"]) for s in result.steps][-3:] == [
        ("bake 50%", False),
        ("rollback", True),
        ("verify", True),
    ]
    assert snapshot(clients) == before


def test_a_rollback_that_cannot_finish_exits_3_and_says_what_to_run(cloud, clients, data):
    data["service"]["image"] = "local/chat-backend:broken-upgrade"
    before = snapshot(clients)
    # only the rollback removes rule 50 (the deploy adds it): make that call fail
    control(cloud, "faults", {"method": "compute.securityPolicies.removeRule", "status": 400})
    result = deploy(make_config(data), options())
    assert (result.status, result.exit_code) == ("rollback_incomplete", 3), result.why
    assert result.why is not None and "the rollback left: armor.rule" in result.why
    assert result.remaining == [
        "armor.rule projects/chat-staging/global/securityPolicies/chat-armor/rules/50: "
        + next(r["detail"] for r in result.restored if r["kind"] == "armor.rule")
    ]
    assert result.hints == [
        "gcloud compute security-policies rules delete 50 --security-policy chat-armor --project chat-staging"
    ]
    now = snapshot(clients)
    assert now["traffic"] == before["traffic"]  # the service was still put back
    assert 50 in now["rules"] and 50 not in before["rules"]  # and the rule is what remains
    state = journal_of(data, str(result.deploy_id))
    assert state.status == "rollback_incomplete" and state.finished is not None
    assert state.finished.remaining == tuple(result.remaining)


# ---- refusals ----------------------------------------------------------------------------------------


def test_preflight_errors_stop_before_anything_changes(cloud, clients, data):
    data["load_balancer"]["timeout_sec"] = 86400  # LB001: refused for a serverless NEG (gcp-facts §2.1)
    mark = len(cloud.world.requests)
    with pytest.raises(PreflightError) as info:
        deploy(make_config(data), options())
    assert "LB001 load_balancer.timeout_sec" in info.value.message and "nothing was changed" in info.value.message
    assert mutating_calls(cloud, mark) == []
    assert list_deploys(LocalStateStore(data["state"]["path"]), state_key(make_config(data))) == []


def test_a_split_made_by_hand_after_a_rolled_back_deploy_is_refused_from_the_journal(cloud, clients, data):
    data["service"]["image"] = "local/chat-backend:broken-upgrade"
    failed = deploy(make_config(data), options())
    assert failed.status == "rolled_back"
    old = failed.traffic_after[0]["revision"]
    services = clients.services()
    svc = services.get_service(name=SERVICE_NAME)
    kind = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
    svc.traffic = [
        run_v2.TrafficTarget(type_=kind, revision=old, percent=50),
        run_v2.TrafficTarget(type_=kind, revision=str(failed.revision), percent=50),
    ]
    services.update_service(service=svc).result()
    wait_settled(clients)
    data["service"]["image"] = "local/chat-backend:v2"
    with pytest.raises(DriftError) as info:
        deploy(make_config(data), options())
    assert f"traffic is split {old} 50%, {failed.revision} 50%" in info.value.message
    assert f"the last deploy ({failed.deploy_id}, from the journal) left {old} 100%" in info.value.message


def test_a_stale_saved_plan_is_refused_and_a_fresh_one_applies(cloud, clients, data, tmp_path, capsys):
    config_file = tmp_path / "deploy.yaml"
    config_file.write_text(json.dumps(data))
    plan_file = tmp_path / "plan.json"
    assert main(["plan", "-c", str(config_file), "--out", str(plan_file), "--detailed-exitcode"]) == 2
    assert oct(plan_file.stat().st_mode & 0o777) == "0o600"
    # someone changes the backend service after the plan was made
    bs = clients.backend_services()
    live = bs.get(project=PROJECT, backend_service="chat-backend-bs")
    from google.cloud import compute_v1

    bs.patch(
        project=PROJECT,
        backend_service="chat-backend-bs",
        backend_service_resource=compute_v1.BackendService(description="hand edit", fingerprint=live.fingerprint),
    ).result()
    mark = len(cloud.world.requests)
    capsys.readouterr()
    assert main(["deploy", "-c", str(config_file), "--plan", str(plan_file)]) == 1
    err = capsys.readouterr().err
    assert "is stale, nothing was changed" in err and "compute.backendService:" in err
    assert mutating_calls(cloud, mark) == []
    # a fresh plan applies
    assert main(["plan", "-c", str(config_file), "--out", str(plan_file)]) == 0
    capsys.readouterr()
    assert main(["deploy", "-c", str(config_file), "--plan", str(plan_file), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "succeeded"


def test_pinned_traffic_is_detected_and_refused(cloud, clients, data):
    first = deploy(make_config(data), options())
    assert first.status == "succeeded"
    old = first.previous
    services = clients.services()
    svc = services.get_service(name=SERVICE_NAME)
    # an on-call engineer pins traffic back to the old revision by hand
    svc.traffic = [
        run_v2.TrafficTarget(
            type_=run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION, revision=old, percent=100
        )
    ]
    services.update_service(service=svc).result()
    wait_settled(clients)
    data["service"]["env"]["WEBSOCKET_HEARTBEAT_INTERVAL"] = 30  # a real change to deploy
    mark = len(cloud.world.requests)
    with pytest.raises(DriftError) as info:
        deploy(make_config(data), options())
    assert f"traffic is pinned to {old} 100%" in info.value.message
    assert f"left {first.revision} 100%" in info.value.message
    assert f"`deployer rollback -c {make_config(data).source.file} --to {old} --reason ...`" in str(info.value.hint)
    assert mutating_calls(cloud, mark) == []


def test_a_held_lock_exits_4(cloud, clients, data):
    config = make_config(data)
    store = LocalStateStore(data["state"]["path"])
    ServiceLock(store, state_key(config)).acquire("d-20261126-120000-abcd", Owner(user="ops", host="ci", pid=1))
    with pytest.raises(LockHeldError) as info:
        deploy(config, options())
    assert info.value.exit_code == 4 and "ops@ci pid 1" in info.value.message
    assert list_deploys(store, state_key(config)) == []


def test_secrets_stay_out_of_the_journal_logs_and_plan_output(cloud, clients, data, tmp_path, capsys):
    # The config's own env cannot hold one (preflight HY002 refuses it), but the live service can.
    services = clients.services()
    svc = services.get_service(name=SERVICE_NAME)
    svc.template.containers[0].env.append(run_v2.EnvVar(name="API_TOKEN", value="tok-9f8e7d6c5b4a"))
    services.update_service(service=svc).result()
    before = snapshot(clients)
    data["service"]["image"] = "local/chat-backend:broken-upgrade"
    config_file = tmp_path / "deploy.yaml"
    config_file.write_text(json.dumps(data))
    assert main(["plan", "-c", str(config_file), "--json"]) == 0
    shown = capsys.readouterr().out
    assert "tok-9f8e7d6c5b4a" not in shown and "<redacted#1>" in shown
    with structlog.testing.capture_logs() as events:
        result = deploy(make_config(data), options())
    assert result.status == "rolled_back"
    assert "tok-9f8e7d6c5b4a" not in json.dumps(events, default=str)
    journal_file = Path(data["state"]["path"]) / f"{result.journal}"
    assert result.journal_location == str(journal_file) == result.to_json()["journal_location"]  # the file, in full
    journal_text = journal_file.read_text()
    assert "tok-9f8e7d6c5b4a" not in journal_text and "<redacted#1>" in journal_text
    # the rollback wrote the real value back (from the pre-image it read, not the masked journal)
    assert snapshot(clients) == before
    now = services.get_service(name=SERVICE_NAME)
    assert {e.name: e.value for e in now.template.containers[0].env}["API_TOKEN"] == "tok-9f8e7d6c5b4a"


def test_conflict_error_type_for_a_stale_plan_object(cloud, clients, data):
    from deployer.orchestrator.command import make_live_plan

    config = make_config(data)
    plan, _observed, _warnings = make_live_plan(config)
    svc = clients.services().get_service(name=SERVICE_NAME)
    svc.labels["touched"] = "yes"
    clients.services().update_service(service=svc).result()
    wait_settled(clients)
    with pytest.raises(ConflictError, match="the plan shown is stale"):
        deploy(config, options(plan=plan))


# ---- undo from the journal alone (what resume and an emergency rollback build on) ----------------------


class Crash(BaseException):
    """Stands for the process dying mid-deploy (nothing after it runs, the journal stays unfinished)."""


def test_a_dead_deploy_is_undone_from_its_journal_alone(cloud, clients, data):
    from deployer.gcp.cloudrun import CloudRun
    from deployer.gcp.compute import Compute
    from deployer.orchestrator.journal import Journal
    from deployer.orchestrator.rollback import Restorer

    services = clients.services()
    svc = services.get_service(name=SERVICE_NAME)
    svc.template.containers[0].env.append(run_v2.EnvVar(name="API_TOKEN", value="tok-9f8e7d6c5b4a"))
    services.update_service(service=svc).result()
    data["rollout"]["bake_seconds"] = 1
    data["load_balancer"]["log_sample_rate"] = 0.5
    before = snapshot(clients)

    async def dies(_seconds: float) -> None:
        raise Crash

    config = make_config(data)
    with pytest.raises(Crash):
        deploy(config, options(sleep=dies))
    store = LocalStateStore(data["state"]["path"])
    (deploy_id,) = list_deploys(store, state_key(config))
    assert load(store, state_key(config), deploy_id).status == "running"
    assert snapshot(clients) != before

    journal = Journal.open(store, state_key(config), deploy_id)
    restorer = Restorer(CloudRun(clients), Compute(clients, PROJECT), journal)  # no memory: masked pre-images
    report = restorer.restore_all()
    assert report.ok, report.remaining
    assert sorted(i.kind for i in report.items) == ["armor.rule", "compute.backendService", "run.service"]
    assert snapshot(clients) == before
    env = {e.name: e.value for e in services.get_service(name=SERVICE_NAME).template.containers[0].env}
    assert env["API_TOKEN"] == "tok-9f8e7d6c5b4a"  # filled from the pre-image's own revision
    journal.finish("rolled_back", "undone from the journal")
