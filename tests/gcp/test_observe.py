"""observe() and `check --live` against the local cloud seeded with configs/local-world.yaml (real clients, HTTP)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deployer.cli import main
from deployer.config import load_config
from deployer.gcp.clients import Clients
from deployer.gcp.observe import observe, serving_revision_name
from deployer.localcloud.api.control import seed_world
from deployer.localcloud.server import load_seed_file
from deployer.preflight import run_rules
from tests.conftest import ROOT

WORLD = ROOT / "configs" / "local-world.yaml"
LOCAL = ROOT / "configs" / "local.yaml"


@pytest.fixture
def world(localcloud: Any) -> Iterator[Any]:
    w = localcloud.world
    before = (w.project, w.region)
    seed_world(w, load_seed_file(WORLD))
    yield localcloud
    w.project, w.region = before  # seed_world sets them; the shared cloud's reset() does not restore them


def local_config(tmp_path: Path, cloud: Any, *, replace: dict[str, str] | None = None) -> Path:
    """configs/local.yaml pointed at this test's local cloud (and with some lines changed)."""
    text = LOCAL.read_text().replace("http://127.0.0.1:8480", cloud.endpoint)
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "local.yaml"
    path.write_text(text)
    return path


def test_observe_reads_every_resource_as_rest_json(world: Any, tmp_path: Path) -> None:
    config = load_config(local_config(tmp_path, world))
    live = observe(config, Clients(endpoint=world.endpoint, project=config.project))

    assert live.service is not None
    assert live.service["name"] == "projects/chat-staging/locations/us-central1/services/chat-backend"
    assert live.service["template"]["timeout"] == "3600s"  # REST shape: Duration as a string
    assert live.service["ingress"] == "INGRESS_TRAFFIC_ALL"  # enums by name
    assert live.serving_revision is not None
    assert live.serving_revision["name"].startswith(live.service["name"] + "/revisions/chat-backend-")
    assert live.revision_env_names() == {
        "WEBSOCKET_CONNECTION_TIMEOUT",
        "WEBSOCKET_HEARTBEAT_INTERVAL",
        "WEBSOCKET_HEARTBEAT_TIMEOUT",
        "WEBSOCKET_CLEANUP_INTERVAL",
        "WEBSOCKET_STALE_TIMEOUT",
    }
    assert live.backend_service is not None and live.backend_service["name"] == "chat-backend-bs"
    assert live.backend_service["fingerprint"]
    assert live.backend_service["securityPolicy"].endswith("/securityPolicies/chat-armor")
    assert live.security_policy is not None and set(live.armor_rules()) == {1000, 2147483647}
    assert live.url_map is not None and live.url_map["name"] == "chat-lb"
    (neg,) = live.negs
    assert neg["networkEndpointType"] == "SERVERLESS" and neg["cloudRun"]["service"] == "chat-backend"
    assert live.serverless_negs == (neg,)
    json.dumps(live.to_json())


def test_observe_absent_resources_are_none(world: Any, tmp_path: Path) -> None:
    path = local_config(tmp_path, world, replace={"project: chat-staging": "project: nobody-here"})
    config = load_config(path)
    live = observe(config, Clients(endpoint=world.endpoint, project=config.project))
    assert live.service is None and live.serving_revision is None
    assert live.backend_service is None and live.security_policy is None and live.url_map is None
    assert live.negs == ()


def test_check_live_on_the_local_world_passes(world: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", "-c", str(local_config(tmp_path, world)), "--live", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report["findings"]
    assert report["live"] is True and report["ok"] is True


def test_check_live_warns_about_dropped_env_unless_allowed(
    world: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(local_config(tmp_path, world, replace={"    WEBSOCKET_STALE_TIMEOUT: 900\n": ""}))
    assert main(["check", "-c", path, "--live", "--json"]) == 0  # a warning, not an error
    (f,) = [f for f in json.loads(capsys.readouterr().out)["findings"] if f["code"] == "CR010"]
    assert f["severity"] == "warning" and "WEBSOCKET_STALE_TIMEOUT" in f["message"]

    assert main(["check", "-c", path, "--live", "--json", "--allow-env-removal"]) == 0
    (f,) = [f for f in json.loads(capsys.readouterr().out)["findings"] if f["code"] == "CR010"]
    assert f["severity"] == "info" and f["message"].startswith("(acknowledged)")

    # offline the rule cannot know: nothing is said
    assert main(["check", "-c", path, "--json"]) == 0
    assert not [f for f in json.loads(capsys.readouterr().out)["findings"] if f["code"] == "CR010"]


def test_check_live_sees_another_policy_and_another_service(world: Any, tmp_path: Path) -> None:
    path = local_config(tmp_path, world, replace={"policy: chat-armor": "policy: new-armor"})
    cfg = load_config(path)
    codes = {f.code: f for f in run_rules(cfg, observe(cfg, Clients(endpoint=world.endpoint)))}
    assert "LB010" in codes and "'chat-armor' is attached" in codes["LB010"].message

    path = local_config(tmp_path, world, replace={"name: chat-backend\n": "name: chat-backend-v2\n"})
    cfg = load_config(path)
    found = [f for f in run_rules(cfg, observe(cfg, Clients(endpoint=world.endpoint))) if f.code == "LB011"]
    assert found and "'chat-backend'" in found[0].message and found[0].severity.value == "error"


def test_check_live_cloud_error_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from deployer.gcp import retry

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "down.yaml"
    path.write_text(LOCAL.read_text().replace("http://127.0.0.1:8480", f"http://127.0.0.1:{port}"))
    monkeypatch.setattr(retry, "READ_POLICY", retry.READ_POLICY.with_(attempts=1))  # no backoff waits
    code = main(["check", "-c", str(path), "--live"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.startswith(f"error: cannot reach the local cloud at http://127.0.0.1:{port} (connection refused)")
    assert "for run.services.get" in err.splitlines()[0]


S = "projects/p/locations/us-central1/services/s"


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        ({"trafficStatuses": [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 100}],
          "latestReadyRevision": f"{S}/revisions/s-00002-abc"}, f"{S}/revisions/s-00002-abc"),
        ({"trafficStatuses": [{"revision": "s-00001-aaa", "percent": 90}, {"revision": "s-00002-bbb", "percent": 10}]},
         f"{S}/revisions/s-00001-aaa"),
        ({"trafficStatuses": [{"revision": "s-00002-bbb", "percent": 0, "tag": "candidate"}],
          "latestReadyRevision": f"{S}/revisions/s-00001-aaa"}, f"{S}/revisions/s-00001-aaa"),
        ({}, None),
    ],
)  # fmt: skip
def test_serving_revision_is_the_largest_share(service: dict[str, Any], expected: str | None) -> None:
    assert serving_revision_name(service, S) == expected
