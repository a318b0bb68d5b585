"""Shared by the deploy end-to-end tests: the seed's world in a local cloud with the load balancer, a
deploy config pointed at it (short holds, no bake, fast retries), snapshots of every resource a deploy
touches, and the request log's mutating calls."""

from __future__ import annotations

import contextlib
import copy
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

from deployer.cli import main
from deployer.config import DeployConfig, config_from_data
from deployer.gcp import retry
from deployer.gcp.clients import Clients
from deployer.gcp.observe import to_rest_json
from deployer.localcloud.api.control import seed_world
from deployer.localcloud.server import LocalCloud, load_seed_file
from deployer.orchestrator import traffic
from deployer.orchestrator.deploy import DeployOptions
from tests.localcloud.runtime.support import no_process_left_behind

ROOT = Path(__file__).resolve().parents[2]
PROJECT, REGION, SERVICE = "chat-staging", "us-central1", "chat-backend"
SERVICE_NAME = f"projects/{PROJECT}/locations/{REGION}/services/{SERVICE}"
OWNED_PRIORITIES = (50, 1000, 2147483647)
# Generous Cloud Armor limits: many gates from 127.0.0.1 within a minute must not be throttled.
RATE_COUNT = 1_000_000

FAST = retry.RetryPolicy(attempts=5, initial=0.01, maximum=0.05, jitter=0.0, deadline=10)


def world_doc() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "configs" / "local-world.yaml").read_text())
    for policy in doc["securityPolicies"]:
        for rule in policy["rules"]:
            if "rateLimitOptions" in rule:
                rule["rateLimitOptions"]["rateLimitThreshold"]["count"] = RATE_COUNT
    return doc


def config_data(cloud: Any, state: Path, *, image: str = "local/chat-backend:v2") -> dict[str, Any]:
    """configs/local.yaml pointed at ``cloud``, with test-sized gates and rollout."""
    data = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    data["endpoint"] = cloud.endpoint
    data["service"]["image"] = image
    data["service"]["startup_probe"]["failure_threshold"] = 3
    for rule in data["armor"]["rules"]:
        rule["rate_limit"]["count"] = RATE_COUNT
    data["rollout"] = {"steps": [50, 100], "bake_seconds": 0, "tag": "candidate"}
    small = {"connections": 4, "concurrency": 4, "min_samples": 4, "hold": 0.2, "ping": 1, "p95_ms": 2000}
    data["gate"]["candidate"].update(small)
    data["gate"]["public"].update(small, url=cloud.lb_url.replace("http://", "ws://") + "/ws")
    data["state"]["path"] = str(state)
    return data


def make_config(data: dict[str, Any]) -> DeployConfig:
    return config_from_data(copy.deepcopy(data))


def options(**kw: Any) -> DeployOptions:
    return DeployOptions(policy=FAST, read_policy=FAST, **kw)


def control(cloud: Any, path: str, body: Any = None, method: str = "POST") -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{cloud.endpoint}/_localcloud/{path}", data=data, method=method)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"null")


def reseed(cloud: Any, clients: Clients) -> None:
    """A fresh seed world (through the control plane, on the cloud's own loop), ready to serve."""
    control(cloud, "seed", world_doc())
    wait_settled(clients)


@contextlib.contextmanager
def running_cloud(*, stop_grace: float = 1.0) -> Iterator[LocalCloud]:
    """The seed's world in a local cloud with the load balancer and revisions as processes; stopped on
    exit, with no process of it left behind (the body of each e2e module's ``cloud`` fixture)."""
    with no_process_left_behind():
        lc = LocalCloud(
            lb_port=0,
            seed_doc=world_doc(),
            runtime_options={"startup_timeout": 4.0, "stop_grace": stop_grace, "lb_seed": 7},
        )
        lc.start()
        try:
            yield lc
        finally:
            lc.stop()


@pytest.fixture(scope="module", name="cloud")
def cloud_fixture() -> Iterator[LocalCloud]:
    """The ``cloud`` fixture of the deploy e2e modules that import it: ``running_cloud()``, one per module."""
    with running_cloud() as lc:
        yield lc


@pytest.fixture(scope="module", name="cloud")
def api_cloud_fixture() -> Iterator[LocalCloud]:
    """A ``cloud`` fixture for CLI tests that need the APIs only: the seed's world as written
    (configs/local-world.yaml), no load balancer, no revision processes; one per module."""
    lc = LocalCloud(seed_doc=load_seed_file(ROOT / "configs" / "local-world.yaml"))
    lc.start()
    yield lc
    lc.stop()


@pytest.fixture(name="world")
def api_world_fixture(cloud: LocalCloud) -> LocalCloud:
    """``cloud`` (the API-only one) with the seed's world again, no faults, an empty request log."""
    seed_world(cloud.world, load_seed_file(ROOT / "configs" / "local-world.yaml"))
    return cloud


def write_config(data: dict[str, Any], path: Path) -> str:
    path.write_text(json.dumps(data))  # JSON is YAML
    return str(path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``deployer *argv`` through ``main``: its exit code, stdout and stderr (only this command's)."""
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def logs_back_to_defaults() -> Iterator[None]:
    """Autouse where imported. ``deployer`` run through ``main`` points structlog at the test's captured
    stderr; the local cloud's thread keeps logging after the test, so put structlog back."""
    yield
    structlog.reset_defaults()


def reseeded_clients(cloud: Any) -> Clients:
    """Clients for ``cloud``'s project, with the cloud re-seeded (the body of the ``clients`` fixtures)."""
    c = Clients(endpoint=cloud.endpoint, project=PROJECT)
    reseed(cloud, c)
    return c


def wait_settled(clients: Clients, deadline_s: float = 30) -> dict[str, Any]:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        svc = to_rest_json(clients.services().get_service(name=SERVICE_NAME))
        if not svc.get("reconciling"):
            return svc
        time.sleep(0.05)
    raise AssertionError("the service did not settle")


def snapshot(clients: Clients) -> dict[str, Any]:
    """Every resource a deploy may touch, as the deploy's definition of "equal" compares them: the
    service's effective traffic (revision, percent, tag), the backend service minus its fingerprint,
    and the owned Cloud Armor rules."""
    svc = wait_settled(clients)
    bs = to_rest_json(clients.backend_services().get(project=PROJECT, backend_service="chat-backend-bs"))
    bs.pop("fingerprint")
    policy = to_rest_json(clients.security_policies().get(project=PROJECT, security_policy="chat-armor"))
    rules = {int(r["priority"]): r for r in policy["rules"] if int(r["priority"]) in OWNED_PRIORITIES}
    return {
        "traffic": sorted(traffic.effective(svc)),
        "backend_service": bs,
        "rules": rules,
        "annotations": svc.get("annotations", {}),
        "labels": svc.get("labels", {}),
    }


MUTATING = ("POST", "PATCH", "PUT", "DELETE")


def mutating_calls(cloud: Any, since: int = 0) -> list[str]:
    """API calls that change something (operation waits are reads, whatever their HTTP method)."""
    out = []
    for rec in list(cloud.world.requests)[since:]:
        if not rec.method or rec.method.startswith("control.") or rec.method.endswith((".wait", ".get")):
            continue
        if rec.http_method in MUTATING:
            out.append(f"{rec.method} {rec.status}")
    return out


def served_version(cloud: Any, host: str | None = None) -> str:
    """Which chat-backend version answers a WebSocket through the load balancer (``whoami``)."""
    import asyncio

    import websockets

    async def ask() -> str:
        headers = {"Host": host} if host else None
        url = cloud.lb_url.replace("http://", "ws://") + "/ws"
        async with websockets.connect(url, additional_headers=headers, open_timeout=5) as ws:
            await ws.send(json.dumps({"type": "whoami"}))
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
                if msg.get("type") == "whoami":
                    return str(msg["version"])

    return asyncio.run(ask())


def iter_records(journal_file: Path) -> Iterator[dict[str, Any]]:
    yield from json.loads(journal_file.read_text())["records"]
