"""Each pipeline's steps, run as Cloud Build would run them, against the local cloud.

The seed's world runs in a local cloud with revisions as processes behind the load balancer. Each
pipeline gets test substitutions (a copy of configs/local.yaml pointed at that cloud, with team state
in its ``deployer-state`` bucket and ``image: ${IMAGE}``; ``_IMAGE=local/chat-backend:v2``;
``BUILD_ID``), and its steps run wave by wave (``waitFor``) as real processes of ``.venv/bin/deployer``
(or ``bash``) in a scratch directory standing in for ``/workspace``.

A pipeline is collected only as far as the deployer commands and options it uses exist in the CLI
(``deployer --help``): steps run in order up to the first one whose command is not there yet, and a
pipeline with no runnable deployer step is not collected at all. So ``rollback.yaml`` and
``redeploy-scheduled.yaml`` start running here the day ``deployer rollback`` and ``deploy --if-changed``
land; what they must then achieve is already written below.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

from deployer.config import config_from_data
from deployer.gcp.clients import Clients
from deployer.orchestrator.deploy import state_key
from deployer.orchestrator.journal import list_deploys, load
from deployer.state import open_store
from tests.cloudbuild.pipelines import (
    DEPLOYER_BIN,
    PIPELINES,
    invocation,
    missing,
    resolve,
    run_order,
    step_argv,
    step_env,
    subprocess_env,
)
from tests.cloudbuild.pipelines import load as load_pipeline
from tests.orchestrator.deploy_support import (
    PROJECT,
    config_data,
    mutating_calls,
    reseeded_clients,
    running_cloud,
    served_version,
)

IMAGE = "local/chat-backend:v2"
BUILD_ID = "b-pipeline-test-0001"
STATE_BUCKET = "deployer-state"  # seeded by configs/local-world.yaml


def runnable_steps(name: str) -> list[list[dict[str, Any]]]:
    """The waves of ``name`` that can run with today's CLI (the fleet: its canary wave; the other
    regions run the same command on configs the local world has no region for)."""
    build = load_pipeline(name)
    waves = run_order(build)[:1] if name == "fleet.yaml" else run_order(build)
    out: list[list[dict[str, Any]]] = []
    for wave in waves:
        if any((inv := invocation(s)) is not None and missing(inv) for s in wave):
            break
        out.append(wave)
    return out


COLLECTED = [n for n in PIPELINES if any(invocation(s) for wave in runnable_steps(n) for s in wave)]


@pytest.fixture(scope="module")
def cloud() -> Any:
    try:
        with running_cloud() as lc:
            yield lc
    finally:
        structlog.reset_defaults()


@pytest.fixture
def clients(cloud: Any) -> Clients:
    return reseeded_clients(cloud)


@pytest.fixture
def workspace(cloud: Any, clients: Clients, tmp_path: Path) -> dict[str, Any]:
    """A scratch /workspace with the test config, and the substitutions a trigger would pass."""
    ws = tmp_path / "workspace"
    ws.mkdir()
    data = config_data(cloud, ws / "unused-local-state")
    data["service"]["image"] = "${IMAGE}"
    data["state"] = {"backend": "gcs", "bucket": STATE_BUCKET, "prefix": "deployer/pipeline-test"}
    config = ws / "deploy-config.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    fleet_dir = ws / "fleet"
    fleet_dir.mkdir()
    for step in load_pipeline("fleet.yaml")["steps"]:  # every fleet config name points at the local config
        target = fleet_dir / Path(str(step["args"][2]).replace("$_CONFIG_DIR/", "")).name
        target.write_text(config.read_text())
    return {
        "dir": ws,
        "data": data,
        "overrides": {
            "_CONFIG": str(config),
            "_CONFIG_DIR": str(fleet_dir),
            "_IMAGE": IMAGE,
            "_REASON": "pipeline test: roll back the canary",
        },
    }


def run_pipeline(name: str, workspace: dict[str, Any], waves: list[list[dict[str, Any]]]) -> list[tuple[str, int]]:
    """Run ``waves`` of pipeline ``name`` (each wave's steps at once); (step id, exit code) in order."""
    build = load_pipeline(name)
    values = resolve(build, workspace["overrides"], {"PROJECT_ID": PROJECT, "BUILD_ID": BUILD_ID})
    results: list[tuple[str, int]] = []
    for wave in waves:
        procs = []
        for step in wave:
            argv = step_argv(step, values)
            if argv[0] == "deployer":
                argv[0] = str(DEPLOYER_BIN)
            procs.append(
                (
                    step["id"],
                    subprocess.Popen(
                        argv,
                        cwd=workspace["dir"],
                        env=subprocess_env(step_env(build, step, values)),
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                    ),
                )
            )
        for step_id, proc in procs:
            out, err = proc.communicate(timeout=240)
            results.append((step_id, proc.returncode))
            assert proc.returncode == 0, f"{name} step {step_id} exited {proc.returncode}\n{out}\n{err[-3000:]}"
    return results


def live_image(clients: Clients) -> str:
    svc = clients.services().get_service(name=f"projects/{PROJECT}/locations/us-central1/services/chat-backend")
    return str(svc.template.containers[0].image)


def journals(workspace: dict[str, Any], clients: Clients) -> list[Any]:
    config = config_from_data(dict(workspace["data"], service=dict(workspace["data"]["service"], image=IMAGE)))
    store = open_store(config.state, clients)
    key = state_key(config)
    return [load(store, key, deploy_id) for deploy_id in list_deploys(store, key)]


pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("name", COLLECTED)
def test_pipeline_runs_against_the_local_cloud(
    name: str, cloud: Any, clients: Clients, workspace: dict[str, Any]
) -> None:
    waves = runnable_steps(name)
    ran_ids = [s["id"] for wave in waves for s in wave]
    assert served_version(cloud) == "v1" and live_image(clients) == "local/chat-backend:v1"

    if name == "rollback.yaml":  # something to roll back first: deploy v2 outside the pipeline
        setup = subprocess.run(
            [str(DEPLOYER_BIN), "deploy", "-c", workspace["overrides"]["_CONFIG"], "--yes"],
            cwd=workspace["dir"],
            env=subprocess_env({"IMAGE": IMAGE}),
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert setup.returncode == 0, setup.stderr[-3000:]
        assert served_version(cloud) == "v2"

    results = run_pipeline(name, workspace, waves)
    assert [step_id for step_id, _ in results] == ran_ids

    if name == "deploy.yaml":
        assert ran_ids[:3] == ["workspace", "check", "plan"]
        assert (workspace["dir"] / ".deployer" / "plan.json").is_file()
        if "deploy" in ran_ids:
            assert live_image(clients) == IMAGE and served_version(cloud) == "v2"
            done = journals(workspace, clients)
            # team state in the bucket, and the lock/journal name the build that ran it
            assert len(done) == 1 and done[0].status == "succeeded"
            assert done[0].started.owner.build_id == BUILD_ID
    elif name == "fleet.yaml":
        assert live_image(clients) == IMAGE and served_version(cloud) == "v2"
        assert journals(workspace, clients)[0].started.owner.build_id == BUILD_ID
    elif name == "redeploy-scheduled.yaml":
        assert live_image(clients) == IMAGE and served_version(cloud) == "v2"
        assert [j.status for j in journals(workspace, clients)] == ["succeeded"]
        assert journals(workspace, clients)[0].started.owner.build_id == BUILD_ID
        # the next scheduled run finds nothing to change: no mutating call at all — no Cloud Run or
        # Compute write, and not even a lock or journal write to the state bucket (it only reads)
        since = len(cloud.world.requests)
        run_pipeline(name, workspace, waves)
        assert mutating_calls(cloud, since) == []
        read = {rec.method for rec in list(cloud.world.requests)[since:]}
        assert {"run.services.get", "storage.objects.list"} <= read
        assert len(journals(workspace, clients)) == 1
    elif name == "rollback.yaml":
        assert served_version(cloud) == "v1" and live_image(clients) == "local/chat-backend:v1"
    else:  # pragma: no cover - a new pipeline needs its own expectations here
        raise AssertionError(f"no expectations written for {name}")
