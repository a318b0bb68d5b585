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
    mutating_calls,
    reseeded_clients,
    run,
    snapshot,
    write_config,
)
from tests.test_cli_errors import hint_of, one_error

pytestmark = pytest.mark.e2e

SKIP_WRITES = 8  # state-store writes that go through before the refused one (see the test using it)


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


# ---- a deploy over a journal that ended rollback_incomplete ---------------------------------------------------


def test_a_deploy_over_an_incomplete_rollback_is_refused_until_resume(cloud, clients, data, tmp_path, capsys):
    data["service"]["image"] = "local/chat-backend:broken-upgrade"  # the candidate gate fails: roll back
    cfg = write_config(data, tmp_path / "deploy.json")
    before = snapshot(clients)
    fault(cloud, "run.services.patch", 400, skip=1)  # the deploy's candidate goes through, its restore does not
    code, out, _ = run(capsys, "deploy", "-c", cfg, "--yes")
    assert code == 3 and out.startswith("ROLLBACK INCOMPLETE"), out
    left = snapshot(clients)
    assert left["traffic"] != before["traffic"]  # the failed candidate is still tagged
    mark = len(cloud.world.requests)

    for flags in (["--yes"], ["--if-changed", "--yes"], ["--yes", "--json"]):
        code, out, err = run(capsys, "deploy", "-c", cfg, *flags)
        assert code == 4, (flags, out, err)
        assert out == ""
        error, hint = one_error(err), hint_of(err)
        assert "ended rollback_incomplete: run.service chat-backend may still be changed" in error, err
        assert hint == f"hint: run `deployer resume -c {cfg}` to retry its rollback first", err
    assert mutating_calls(cloud, mark) == [] and snapshot(clients) == left

    code, out, err = run(capsys, "resume", "-c", cfg)
    assert code == 0, out + err
    assert snapshot(clients) == before
    code, out, err = run(capsys, "deploy", "-c", cfg, "--if-changed", "--yes")
    assert code == 1 and out.lower().startswith("rolled back"), out + err  # not held now: it runs, is rolled back


def test_an_emergency_rollback_still_moves_traffic_over_an_incomplete_rollback(cloud, clients, data, tmp_path, capsys):
    first = run(capsys, "deploy", "-c", write_config(data, tmp_path / "deploy.json"), "--yes", "--json")
    assert first[0] == 0, first
    good = json.loads(first[1])["revision"]
    data["service"]["image"] = "local/chat-backend:broken-upgrade"
    cfg = write_config(data, tmp_path / "deploy.json")
    fault(cloud, "run.services.patch", 400, skip=1)
    code, out, _ = run(capsys, "deploy", "-c", cfg, "--yes")
    assert code == 3, out
    code, out, err = run(capsys, "rollback", "-c", cfg, "--reason", "on-call: the candidate is still tagged")
    assert code == 0, out + err
    assert [s.revision for s in snapshot(clients)["traffic"] if s.percent] == [good]


# ---- a deploy whose journal cannot be written -------------------------------------------------------------


def gcs_state(data: dict[str, Any], tmp_path: Any) -> None:
    data["state"] = {"backend": "gcs", "bucket": "deployer-state", "prefix": f"t-{tmp_path.name}"}


def storage_inserts(cloud: Any, since: int) -> int:
    return sum(1 for rec in list(cloud.world.requests)[since:] if rec.method == "storage.objects.insert")


def test_a_journal_write_refused_mid_deploy_stops_with_exit_3_and_resume_puts_it_back(
    cloud, clients, data, tmp_path, capsys
):
    gcs_state(data, tmp_path)
    cfg = write_config(data, tmp_path / "deploy.json")
    before = snapshot(clients)
    # the lock, the journal's start, its apply phase and the effects' pre-images and starts go through; a
    # later journal write is refused once (Cloud Storage's 403), after the candidate has been created
    fault(cloud, "storage.objects.insert", 403, skip=SKIP_WRITES)
    code, out, err = run(capsys, "deploy", "-c", cfg, "--yes")
    assert code == 3, out + err
    assert out == ""
    error = one_error(err)
    # the journal named where it is: gs://bucket/prefix/deploys/...
    at = f"gs://deployer-state/t-{tmp_path.name}/deploys/"
    assert f"stopped, its journal could not be written (cannot write state {at}" in error, err
    assert "storage.objects.insert: HTTP 403" in error
    assert "it did not roll back, so these may remain changed: " in error and "run.service chat-backend" in error
    assert hint_of(err) == (
        f"hint: run `deployer resume -c {cfg}` once the state store takes writes: it finishes or rolls the deploy "
        "back from its journal"
    )
    left = snapshot(clients)
    assert left != before  # it stopped with something changed (the candidate tagged at 0 % at least)
    mark = len(cloud.world.requests)

    code, out, _ = run(capsys, "status", "-c", cfg)
    assert "interrupted" in out and "deployer resume -c" in out, out
    code, out, err = run(capsys, "deploy", "-c", cfg, "--yes")  # the next deploy waits for it
    assert code == 4 and "never finished" in one_error(err), err
    assert [c for c in mutating_calls(cloud, mark) if not c.startswith("storage.")] == []  # its lock only

    code, out, err = run(capsys, "resume", "-c", cfg)
    assert code == 0, out + err
    assert snapshot(clients) == before


def test_a_journal_write_refused_before_anything_changed_is_exit_1(cloud, clients, data, tmp_path, capsys):
    gcs_state(data, tmp_path)
    cfg = write_config(data, tmp_path / "deploy.json")
    before = snapshot(clients)
    mark = len(cloud.world.requests)
    fault(cloud, "storage.objects.insert", 403, skip=2)  # the lock and the journal's start; then its first phase
    code, out, err = run(capsys, "deploy", "-c", cfg, "--yes")
    assert code == 1, out + err
    assert "stopped before changing anything" in one_error(err) and "HTTP 403" in one_error(err)
    assert [c for c in mutating_calls(cloud, mark) if not c.startswith("storage.")] == []
    assert snapshot(clients) == before
    # the refusal was once: the journal was closed failed, so nothing waits for a resume
    code, out, _ = run(capsys, "history", "-c", cfg, "--json")
    assert json.loads(out)["deploys"][0]["status"] == "failed"
