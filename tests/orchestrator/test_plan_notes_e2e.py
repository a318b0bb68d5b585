"""``plan`` and ``status`` end to end on what a deploy would refuse or not see: traffic moved by hand after a
deploy (plan says the deploy's refusal up front, exit 1, no plan file), and a template changed by hand while
traffic stays pinned (status and plan name it beside "drift none"). The seed's world in a local cloud with
real revision processes, the real Google clients over HTTP, the commands through ``deployer.cli.main``."""

from __future__ import annotations

import json

import pytest
from google.cloud import run_v2

from deployer.config import load_config
from deployer.errors import DriftError
from deployer.orchestrator.command import live_plan
from deployer.orchestrator.deploy import deploy
from tests.orchestrator.deploy_support import (
    SERVICE_NAME,
    cloud_fixture,  # noqa: F401  (the module's cloud)
    config_data,
    logs_back_to_defaults,  # noqa: F401  (autouse fixture)
    make_config,
    mutating_calls,
    options,
    reseeded_clients,
    run,
    wait_settled,
    write_config,
)

pytestmark = pytest.mark.e2e
REVISION = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION


@pytest.fixture
def clients(cloud):
    return reseeded_clients(cloud)


@pytest.fixture
def data(cloud, clients, tmp_path):
    return config_data(cloud, tmp_path / "state")


def test_plan_says_up_front_that_a_deploy_would_refuse_traffic_moved_by_hand(cloud, clients, data, tmp_path, capsys):
    first = deploy(make_config(data), options())
    assert first.status == "succeeded", first.why
    services = clients.services()
    svc = services.get_service(name=SERVICE_NAME)
    svc.traffic = [run_v2.TrafficTarget(type_=REVISION, revision=str(first.previous), percent=100)]
    services.update_service(service=svc).result()  # an on-call engineer rolls back by hand
    wait_settled(clients)
    data["service"]["env"]["WEBSOCKET_HEARTBEAT_INTERVAL"] = 30  # a real change to deploy
    cfg = write_config(data, tmp_path / "deploy.yaml")
    plan_file = tmp_path / "plan.json"
    with pytest.raises(DriftError) as refused:
        deploy(load_config(cfg), options())  # the deploy's own refusal, from the same file
    mark = len(cloud.world.requests)

    code, out, _ = run(capsys, "plan", "-c", cfg, "--out", str(plan_file))
    assert code == 1 and not plan_file.exists()
    head = out.splitlines()[:2]
    assert head[0] == f"deploy would refuse: {refused.value.message}"
    assert head[1] == f"  hint: {refused.value.hint}"
    assert f"--to {first.previous}" in head[1]
    assert "~ update run.service" in out and f"nothing saved to {plan_file}" in out

    code, out, _ = run(capsys, "plan", "-c", cfg, "--json")
    doc = json.loads(out)
    assert code == 1
    assert doc["deploy_would_refuse"]["message"] == refused.value.message
    assert doc["deploy_would_refuse"]["hint"] == refused.value.hint
    assert doc["deploy_would_refuse"]["live"] == {first.previous: 100}
    assert doc["warnings"] == [] or all("drift" not in w for w in doc["warnings"])

    code, _, _ = run(capsys, "plan", "-c", cfg, "--detailed-exitcode")
    assert code == 1  # Terraform's 1: a plan that cannot be applied
    assert mutating_calls(cloud, mark) == []


def test_a_template_changed_by_hand_while_traffic_is_pinned_is_named_by_status_and_plan(
    cloud, clients, data, tmp_path, capsys
):
    first = deploy(make_config(data), options())  # the config is what serves
    assert first.status == "succeeded", first.why
    services = clients.services()
    svc = services.get_service(name=SERVICE_NAME)
    serving = str(first.revision)
    # by hand: traffic pinned to what serves, and a new env var in the template (a revision at 0 %)
    svc.traffic = [run_v2.TrafficTarget(type_=REVISION, revision=serving, percent=100)]
    svc.template.revision = ""
    svc.template.containers[0].env.append(run_v2.EnvVar(name="FEATURE_FLAG_X", value="by-hand-secret"))
    services.update_service(service=svc).result()
    live = wait_settled(clients)
    created = live["latestCreatedRevision"].rsplit("/", 1)[-1]
    assert created != serving
    cfg = write_config(data, tmp_path / "deploy.yaml")
    assert live_plan(make_config(data)).plan.is_empty  # by design: the config matches what serves
    wanted = (
        f"the service's template (latest created {created}, 0% traffic) differs from what serves ({serving}): "
        "a traffic move to LATEST would ship it"
    )

    code, out, _ = run(capsys, "status", "-c", cfg, "--json")
    drift = json.loads(out)["drift"]
    assert code == 0 and drift["in_sync"] is True
    assert drift["template"]["text"] == wanted
    assert any(f.startswith("template.containers[0].env[") for f in drift["template"]["fields"])
    assert "by-hand-secret" not in out
    code, out, _ = run(capsys, "status", "-c", cfg)
    assert code == 0 and "drift none in what serves" in out and f"note: {wanted}" in out

    code, out, _ = run(capsys, "plan", "-c", cfg, "--json")
    assert code == 0 and json.loads(out)["template"]["text"] == wanted
    code, out, _ = run(capsys, "plan", "-c", cfg)
    assert code == 0 and f"note: {wanted}" in out and "No changes for" in out
    code, out, _ = run(capsys, "deploy", "-c", cfg, "--if-changed", "--yes")
    assert code == 0 and f"warning: template: {wanted}" in " ".join(out.split())  # "no changes", not silently
