"""After a deploy process is killed (SIGKILL mid-rollout, by the local cloud's ``kill`` fault), ``status`` and
``history`` say its process is gone and point at ``deployer resume`` — not "running ... so far"."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from deployer.cli import main
from deployer.gcp.clients import Clients
from tests.e2e.matrix_support import (
    Call,
    cloud_fixture,  # noqa: F401  (the module's cloud)
    finish,
    fresh_world,
    inject,
    matrix_config,
    spawn,
    write_config,
)
from tests.orchestrator.deploy_support import (
    PROJECT,
    logs_back_to_defaults,  # noqa: F401  (autouse fixture)
)

pytestmark = pytest.mark.e2e


def test_status_and_history_say_a_killed_deploy_is_gone(
    cloud: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clients = Clients(endpoint=cloud.endpoint, project=PROJECT)
    fresh_world(cloud, clients)
    config = write_config(matrix_config(cloud, "local", tmp_path / "state"), tmp_path / "deploy.json")
    proc = spawn(["deploy", "-c", str(config), "--yes"], tmp_path)
    inject(cloud, clients, Call("deploy", "traffic-50-update", "run.services.patch", 1), "kill-after", pid=proc.pid)
    code, err = finish(proc)
    assert code == -9, err[-2000:]

    capsys.readouterr()
    assert main(["status", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    flat = " ".join(out.split())
    assert "interrupted" in out and "so far" not in out, out
    assert f"its process is gone (pid {proc.pid} on " in flat, out
    assert "`deployer resume -c CONFIG` finishes or rolls it back" in flat
    lock_line = next(line for line in out.splitlines() if line.startswith("lock"))
    assert f"its process (pid {proc.pid}) is gone" in lock_line

    assert main(["history", "-c", str(config), "--json"]) == 0
    newest = json.loads(capsys.readouterr().out)["deploys"][0]
    assert newest["status"] == "running"  # what the journal says; and why that is not so:
    assert str(newest["process_gone"]).startswith(f"its process is gone (pid {proc.pid} on ")

    assert main(["history", "-c", str(config)]) == 0
    assert "interrupted" in capsys.readouterr().out

    assert main(["resume", "-c", str(config), "--json"]) == 0  # what the hint says works
    capsys.readouterr()
    assert main(["status", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "interrupted" not in out and "lock  free" in out
