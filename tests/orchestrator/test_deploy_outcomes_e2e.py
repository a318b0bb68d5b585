"""How a deploy ends or refuses, end to end (the seed's world in a local cloud with real revision processes,
the real Google clients over HTTP, the commands through ``deployer.cli.main``): the closing line of an
infrastructure-only deploy, a deploy refused over a journal that ended ``rollback_incomplete``, and a deploy
whose journal cannot be written mid-way (a Cloud Storage state bucket refusing the write)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.orchestrator.deploy_support import (
    cloud_fixture,  # noqa: F401  (the module's cloud)
    config_data,
    control,
    logs_back_to_defaults,  # noqa: F401  (autouse fixture)
    reseeded_clients,
    run,
    write_config,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def clients(cloud):
    c = reseeded_clients(cloud)
    yield c
    control(cloud, "faults", method="DELETE")


@pytest.fixture
def data(cloud, clients, tmp_path):
    return config_data(cloud, tmp_path / "state")


def fault(cloud: Any, method: str, status: int, *, skip: int = 0, count: int = 1) -> None:
    control(cloud, "faults", {"method": method, "status": status, "skip": skip, "count": count})


# ---- an infrastructure-only deploy -------------------------------------------------------------------------


def test_an_infra_only_deploy_says_traffic_stayed_on_the_serving_revision(cloud, clients, data, tmp_path, capsys):
    cfg = write_config(data, tmp_path / "deploy.json")
    code, out, err = run(capsys, "deploy", "-c", cfg, "--yes", "--json")
    assert code == 0, out + err
    serving = json.loads(out)["revision"]
    data["load_balancer"]["custom_request_headers"] = ["X-Forwarded-Proto: https", "X-Release: infra-only"]
    cfg = write_config(data, tmp_path / "deploy.json")
    code, out, err = run(capsys, "deploy", "-c", cfg, "--yes", "--json")
    assert code == 0, out + err
    result = json.loads(out)
    assert result["revision"] is None
    assert [t["revision"] for t in result["traffic_after"] if t["percent"]] == [serving]
    code, out, _ = run(capsys, "history", "-c", cfg, "--json")
    assert code == 0
    newest = json.loads(out)["deploys"][0]
    assert newest["summary"] == f"applied infrastructure; traffic unchanged on {serving}", newest
    code, out, _ = run(capsys, "why", "last", "-c", cfg)
    assert code == 0 and f"applied infrastructure; traffic unchanged on {serving}" in out
    assert "deployed " not in out.replace(f"deployed {serving}", "")  # no claim to have deployed a new revision
