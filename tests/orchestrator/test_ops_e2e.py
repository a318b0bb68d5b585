"""``deployer status`` / ``history`` / ``why`` and the scheduled-redeploy rules (``deploy --if-changed``,
freeze windows) end to end: the seed's world in a local cloud with real revision processes, the real
Google clients over HTTP, real WebSocket gates, the commands run through ``deployer.cli.main``.

Freeze windows are judged on an injected clock (``run_deploy(clock=...)``, the function behind
``deployer deploy``), except for the one check that goes through ``main`` on the real clock.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta

import pytest

from deployer.errors import FreezeError
from deployer.orchestrator.command import run_deploy
from deployer.orchestrator.deploy import deploy, state_key
from deployer.orchestrator.journal import list_deploys, load
from deployer.state.local import LocalStateStore
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
    write_config,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def clients(cloud):
    return reseeded_clients(cloud)


@pytest.fixture
def data(cloud, clients, tmp_path):
    return config_data(cloud, tmp_path / "state")


# ---- status, history, why ------------------------------------------------------------------------


def test_status_history_and_why_after_a_good_and_a_rolled_back_deploy(cloud, clients, data, tmp_path, capsys):
    good = deploy(make_config(data), options())
    assert good.status == "succeeded", good.why
    broken = copy.deepcopy(data)
    broken["service"]["image"] = "local/chat-backend:broken-upgrade"
    broken["load_balancer"]["custom_request_headers"] = ["X-Forwarded-Proto: https", "X-Release: canary"]
    bad = deploy(make_config(broken), options())
    assert bad.status == "rolled_back", bad.why
    assert good.deploy_id is not None and bad.deploy_id is not None  # both started, so both have an id
    cfg = write_config(data, tmp_path / "deploy.yaml")

    # status: reads only
    mark = len(cloud.world.requests)
    code, out, _ = run(capsys, "status", "-c", cfg, "--json")
    assert code == 0
    assert mutating_calls(cloud, mark) == []
    doc = json.loads(out)
    assert doc["traffic"] == [
        {"revision": good.revision, "percent": 100, "tags": [], "latest": False},
        {"revision": good.previous, "percent": 0, "tags": ["previous"], "latest": False},
    ]
    assert (doc["last_deploy"]["deploy_id"], doc["last_deploy"]["status"]) == (bad.deploy_id, "rolled_back")
    assert doc["last_deploy"]["why"].startswith("gate_candidate failed")
    assert (doc["last_succeeded"]["deploy_id"], doc["last_succeeded"]["revision"]) == (good.deploy_id, good.revision)
    assert doc["lock"]["held"] is False and doc["pin"] is None
    assert doc["drift"]["in_sync"] is True and doc["drift"]["checked"] >= 4
    assert doc["annotations"]["deployer.dev/last-good-revision"] == good.revision

    # status against the broken config: the drift a deploy would apply
    bad_cfg = write_config(broken, tmp_path / "broken.yaml")
    code, out, _ = run(capsys, "status", "-c", bad_cfg, "--json")
    drift = json.loads(out)["drift"]
    assert code == 0 and drift["in_sync"] is False
    changed = {(c["kind"], c["action"]): c["fields"] for c in drift["changes"]}
    assert set(changed) == {("run.service", "update"), ("compute.backendService", "update")}
    assert any("local/chat-backend:broken-upgrade" in f for f in changed[("run.service", "update")])
    assert changed[("compute.backendService", "update")] == ['+ customRequestHeaders[1]: "X-Release: canary"']

    code, out, _ = run(capsys, "status", "-c", cfg)
    assert code == 0
    assert f"{good.revision}" in out and "100%" in out and "lock  free" in out
    assert f"{bad.deploy_id} rolled back" in out and f"last succeeded: {good.deploy_id} succeeded" in out
    assert "drift none" in out

    # history: newest first, outcome, who, revision
    code, out, _ = run(capsys, "history", "-c", cfg, "--json")
    deploys = json.loads(out)["deploys"]
    assert code == 0
    assert [(d["deploy_id"], d["status"], d["revision"]) for d in deploys] == [
        (bad.deploy_id, "rolled_back", bad.revision),
        (good.deploy_id, "succeeded", good.revision),
    ]
    assert all(d["duration_s"] > 0 and d["owner"]["user"] for d in deploys)
    assert deploys[1]["previous_revision"] == good.previous
    code, out, _ = run(capsys, "history", "-c", cfg, "--limit", "1")
    assert code == 0 and bad.deploy_id in out and good.deploy_id not in out

    # why: the phases, the failed gate's evidence, the decision, what was put back
    code, out, _ = run(capsys, "why", str(bad.deploy_id), "-c", cfg)
    assert code == 0
    for needle in (
        "decision  rolled back: gate_candidate failed",
        "✗ gate_candidate",
        "gate candidate: Failed",
        "failed: upgrade_refused HTTP 403 ×4",
        "↺ rollback",
        "put back compute.backendService chat-backend-bs: done",
        "put back run.service chat-backend: done",
        "gate restored: Passed",
    ):
        assert needle in out, needle
    code, out, _ = run(capsys, "why", "last", "-c", cfg, "--json")
    assert code == 0 and json.loads(out)["deploy_id"] == bad.deploy_id
    code, out, _ = run(capsys, "why", str(good.deploy_id), "-c", cfg, "--json")
    explained = json.loads(out)
    assert [p["phase"] + (f" {p['percent']}%" if p["percent"] else "") for p in explained["phases"]] == [
        "apply",
        "gate_candidate",
        "shift 50%",
        "gate_public 50%",
        "shift 100%",
        "gate_public 100%",
    ]
    assert [g["verdict"] for p in explained["phases"] for g in p["gates"]] == ["Passed"] * 3
    assert all(p["duration_s"] is not None for p in explained["phases"])

    # an unknown deploy id: one line, exit 2
    code, out, err = run(capsys, "why", "d-20990101-000000-0000", "-c", cfg)
    assert code == 2 and out == ""
    assert (
        err.splitlines()[0]
        == f"error: no deploy d-20990101-000000-0000 of {state_key(make_config(data))} in the journal"
    )
    assert err.splitlines()[1].startswith("hint: `deployer history -c CONFIG` lists them")


# ---- deploy --if-changed --------------------------------------------------------------------------


def test_if_changed_with_nothing_to_change_writes_nothing_not_even_state(cloud, clients, data, tmp_path, capsys):
    # Team state in the local cloud's Cloud Storage, so a state write would be in the request log too.
    data["state"] = {"backend": "gcs", "bucket": "deployer-state", "prefix": f"t-{tmp_path.name}"}
    mark = len(cloud.world.requests)
    first = deploy(make_config(data), options())
    assert first.status == "succeeded", first.why
    storage_writes = [c for c in mutating_calls(cloud, mark) if c.startswith("storage.")]
    assert storage_writes, "the deploy's journal and lock writes are visible in the request log"
    cfg = write_config(data, tmp_path / "deploy.yaml")

    mark = len(cloud.world.requests)
    code, out, err = run(capsys, "deploy", "-c", cfg, "--if-changed", "--yes")
    assert code == 0, err
    assert "no changes  chat-staging/us-central1/chat-backend" in out
    assert "the live resources match the config" in out
    assert mutating_calls(cloud, mark) == []  # no API write, no journal, no lock
    read = {rec.method for rec in list(cloud.world.requests)[mark:]}
    assert {"run.services.get", "compute.backendServices.get", "storage.objects.list"} <= read

    # with a change, --if-changed deploys it
    data["service"]["env"]["WEBSOCKET_HEARTBEAT_INTERVAL"] = 30
    cfg = write_config(data, tmp_path / "deploy.yaml")
    code, out, err = run(capsys, "deploy", "-c", cfg, "--if-changed", "--yes", "--json")
    assert code == 0, err
    assert json.loads(out)["status"] == "succeeded"


# ---- freeze windows ------------------------------------------------------------------------------

FROZEN_AT = datetime(2030, 12, 24, 15, 0, tzinfo=UTC)
YEAR_END = {"reason": "year-end", "start": "2030-12-20T00:00:00Z", "end": "2031-01-04T00:00:00Z"}


def test_a_freeze_window_refuses_and_an_override_with_a_reason_deploys_journaled(cloud, clients, data, tmp_path):
    data["freeze"] = [YEAR_END]
    cfg = write_config(data, tmp_path / "deploy.yaml")
    store = LocalStateStore(data["state"]["path"])
    key = state_key(make_config(data))

    mark = len(cloud.world.requests)
    with pytest.raises(FreezeError) as info:
        run_deploy(cfg, yes=True, clock=lambda: FROZEN_AT)
    assert info.value.exit_code == 1
    assert 'freeze[0] "year-end"' in info.value.message and "until 2031-01-04 00:00 UTC" in info.value.message
    assert len(cloud.world.requests) == mark  # refused before reading anything
    # --if-changed looks first: with changes to make, it is refused too, having only read
    with pytest.raises(FreezeError):
        run_deploy(cfg, yes=True, if_changed=True, clock=lambda: FROZEN_AT)
    assert mutating_calls(cloud, mark) == [] and list_deploys(store, key) == []

    code = run_deploy(cfg, yes=True, override_freeze=True, reason="hotfix for INC-42", clock=lambda: FROZEN_AT)
    assert code == 0
    [deploy_id] = list_deploys(store, key)
    journal = load(store, key, deploy_id)
    assert journal.status == "succeeded" and journal.started.reason == "hotfix for INC-42"
    override = journal.decisions[0]
    assert (override.decision, override.reason) == ("override_freeze", "hotfix for INC-42")
    assert override.detail["windows"][0]["key"] == "freeze[0]"
    assert override.detail["by"] == journal.started.owner.describe()
    assert journal.rolling_back is False

    # frozen, --if-changed, nothing to change: exit 0 and no write
    mark = len(cloud.world.requests)
    assert run_deploy(cfg, yes=True, if_changed=True, clock=lambda: FROZEN_AT) == 0
    assert mutating_calls(cloud, mark) == [] and list_deploys(store, key) == [deploy_id]


def test_the_cli_refuses_inside_a_window_on_the_real_clock_in_one_line(cloud, clients, data, tmp_path, capsys):
    now = datetime.now(UTC)
    data["freeze"] = [
        {
            "reason": "launch",
            "start": (now - timedelta(hours=1)).isoformat(),
            "end": (now + timedelta(hours=1)).isoformat(),
        }
    ]
    cfg = write_config(data, tmp_path / "deploy.yaml")
    mark = len(cloud.world.requests)
    code, out, err = run(capsys, "deploy", "-c", cfg, "--yes")
    assert code == 1 and out == ""
    assert err.startswith('error: chat-backend: deploys are frozen by freeze[0] "launch"')
    assert "hint: wait until then, or pass --override-freeze --reason TEXT" in err
    code, _, err = run(capsys, "deploy", "-c", cfg, "--yes", "--override-freeze")
    assert code == 2 and "--override-freeze needs --reason TEXT" in err
    assert len(cloud.world.requests) == mark


# ---- after an emergency rollback ------------------------------------------------------------------


def test_a_rollback_ignores_freezes_and_status_shows_its_pin(cloud, clients, data, tmp_path, capsys):
    good = deploy(make_config(data), options())
    assert good.status == "succeeded", good.why
    now = datetime.now(UTC)
    start, end = (now - timedelta(hours=1)).isoformat(), (now + timedelta(hours=1)).isoformat()
    data["freeze"] = [{"reason": "launch", "start": start, "end": end}]
    cfg = write_config(data, tmp_path / "deploy.yaml")

    code, out, err = run(capsys, "rollback", "-c", cfg, "--reason", "5xx on /ws", "--json")
    assert code == 0, err  # an emergency does not wait for the freeze to end
    rolled = json.loads(out)
    assert rolled["status"] == "succeeded"

    code, out, err = run(capsys, "status", "-c", cfg, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["pin"]["revision"] == good.previous and doc["pin"]["reason"] == "5xx on /ws"
    assert doc["pin"]["active"] is True and doc["pin"]["rollback_id"] == doc["last_deploy"]["deploy_id"]
    assert [(t["revision"], t["percent"]) for t in doc["traffic"] if t["percent"]] == [(good.previous, 100)]
    assert (doc["last_deploy"]["operation"], doc["last_deploy"]["status"]) == ("rollback", "succeeded")
    assert doc["last_succeeded"]["deploy_id"] == good.deploy_id  # the last successful *deploy*
    # the config still asks for v2: status says a deploy would change the serving template back
    [change] = doc["drift"]["changes"]
    assert change["kind"] == "run.service"
    assert '~ template.containers[0].image: "local/chat-backend:v1" → "local/chat-backend:v2"' in change["fields"]

    code, out, _ = run(capsys, "status", "-c", cfg)
    assert f"pin   traffic pinned to {good.previous}" in out and ": 5xx on /ws" in out

    code, out, _ = run(capsys, "history", "-c", cfg, "--json")
    deploys = json.loads(out)["deploys"]
    assert [(d["operation"], d["status"]) for d in deploys] == [("rollback", "succeeded"), ("deploy", "succeeded")]
    assert deploys[0]["revision"] == good.previous and deploys[0]["reason"] == "5xx on /ws"

    code, out, _ = run(capsys, "why", "last", "-c", cfg)
    assert code == 0 and out.startswith(f"rollback {deploys[0]['deploy_id']}")
    assert f"rollback done: traffic moved to {good.previous}" in out and "decision pin: 5xx on /ws" in out


def test_a_rollback_to_a_revision_that_does_not_exist_is_one_error_line(cloud, clients, data, tmp_path, capsys):
    cfg = write_config(data, tmp_path / "deploy.yaml")
    before = clients.services().get_service(name=SERVICE_NAME).traffic_statuses
    code, out, err = run(capsys, "rollback", "-c", cfg, "--reason", "typo", "--to", "chat-backend-nosuch")
    assert (code, out) == (1, "")
    errors = [line for line in err.splitlines() if not line.startswith("{")]
    assert errors == [
        "error: rollback of chat-backend failed, nothing was changed: revision chat-backend-nosuch of chat-backend "
        "does not exist",
        "hint: `gcloud run revisions list --service ...` lists them",
    ]
    assert clients.services().get_service(name=SERVICE_NAME).traffic_statuses == before

    code, out, _ = run(capsys, "rollback", "-c", cfg, "--reason", "typo", "--to", "chat-backend-nosuch", "--json")
    doc = json.loads(out)
    assert (code, doc["status"]) == (1, "failed")
    assert doc["traffic_after"] == doc["traffic_before"] != []  # nothing moved, and the JSON says where it is
