"""Emergency rollback, pins, unlock and resume end to end: the seed's world in a local cloud with the load
balancer, the real deployer (in process, through the CLI, and as a killed process)."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from deployer.cli import main
from deployer.errors import LockHeldError, PinnedError
from deployer.gcp.clients import Clients
from deployer.orchestrator import traffic
from deployer.orchestrator.deploy import deploy, state_key
from deployer.orchestrator.emergency import RollbackOptions, rollback
from deployer.orchestrator.journal import load
from deployer.orchestrator.lock import ServiceLock, lock_key
from deployer.orchestrator.owner import Owner
from deployer.orchestrator.pins import read_pin
from deployer.orchestrator.resume import newest_first
from deployer.state import StateStore, open_store
from tests.e2e.matrix_support import (
    Call,
    cloud_fixture,  # noqa: F401  (the module's cloud)
    finish,
    fresh_world,
    inject,
    matrix_config,
    snapshot,
    spawn,
    write_config,
)
from tests.orchestrator.deploy_support import (
    FAST,
    PROJECT,
    logs_back_to_defaults,  # noqa: F401  (autouse fixture)
    make_config,
    mutating_calls,
    options,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def clients(cloud: Any) -> Clients:
    c = Clients(endpoint=cloud.endpoint, project=PROJECT)
    fresh_world(cloud, c)
    return c


@pytest.fixture
def data(cloud: Any, clients: Clients, tmp_path: Path) -> dict[str, Any]:
    return matrix_config(cloud, "local", tmp_path / "state")


def store_of(data: dict[str, Any], clients: Clients) -> tuple[StateStore, str]:
    config = make_config(data)
    return open_store(config.state, clients), state_key(config)


def serving(clients: Clients) -> dict[str, int]:
    return {s.revision: s.percent for s in snapshot(clients)["traffic"] if s.percent}


def fast_rollback(data: dict[str, Any], **kw: Any) -> Any:
    return rollback(
        make_config(data), RollbackOptions(reason=kw.pop("reason", "5xx"), policy=FAST, read_policy=FAST, **kw)
    )


# ---- preemption -----------------------------------------------------------------------------------------------


def test_a_rollback_preempts_a_deploy_in_flight_which_stops_without_fighting(cloud, clients, data):
    data["rollout"]["bake_seconds"] = 30
    before = snapshot(clients)
    old = before["traffic"][0].revision
    baking = threading.Event()

    async def bake(_seconds: float) -> None:  # the deploy waits here at 50 % until something stops it
        baking.set()
        await asyncio.sleep(30)

    results: dict[str, Any] = {}

    def run_deploy() -> None:
        try:
            results["deploy"] = deploy(make_config(data), options(sleep=bake, heartbeat=timedelta(seconds=0.05)))
        except BaseException as exc:  # reported below
            results["error"] = exc
            baking.set()

    thread = threading.Thread(target=run_deploy)
    thread.start()
    assert baking.wait(30), "the deploy never reached its bake"
    assert "error" not in results, results
    assert serving(clients) == {old: 50, next(r for r in serving(clients) if r != old): 50}
    mark = len(cloud.world.requests)
    rolled = fast_rollback(data, reason="5xx at 50%")
    thread.join(30)
    assert not thread.is_alive()
    deployed = results["deploy"]

    assert (rolled.status, rolled.exit_code, rolled.revision) == ("succeeded", 0, old)
    assert rolled.preempted == deployed.deploy_id
    assert (deployed.status, deployed.exit_code) == ("aborted", 3)
    assert "lost its lock" in str(deployed.why)
    # after the rollback took the lock, the only write is the rollback's own UpdateService: the deploy
    # neither shifted traffic further nor rolled back anything of its own
    assert mutating_calls(cloud, mark) == ["run.services.patch 200"]
    assert serving(clients) == {old: 100}
    store, key = store_of(data, clients)
    deploy_state = load(store, key, str(deployed.deploy_id))
    assert deploy_state.status == "aborted" and deploy_state.decisions == ()
    pin = read_pin(store, key)
    assert pin is not None and pin.revision == old and pin.reason == "5xx at 50%"
    assert pin.rollback_id == rolled.rollback_id
    assert store.read(lock_key(key)) is None
    # without --infra the deploy's infrastructure stays as it made it, and the rollback says so
    assert any("backendService" in line and "without --infra" in line for line in rolled.remaining)


def test_a_pin_refuses_deploys_until_unpinned_and_unpinning_is_journaled(cloud, clients, data):
    assert deploy(make_config(data), options()).status == "succeeded"
    rolled = fast_rollback(data, infra=True)
    assert rolled.status == "succeeded" and rolled.restored
    data["service"]["env"]["WEBSOCKET_HEARTBEAT_INTERVAL"] = 30  # the next release
    mark = len(cloud.world.requests)
    with pytest.raises(PinnedError) as info:
        deploy(make_config(data), options())
    assert info.value.exit_code == 4
    assert f"pinned to {rolled.revision} by " in info.value.message and "--unpin" in str(info.value.hint)
    assert mutating_calls(cloud, mark) == []

    result = deploy(make_config(data), options(unpin=True, unpin_reason="fixed in the next release"))
    assert result.status == "succeeded", result.why
    store, key = store_of(data, clients)
    assert read_pin(store, key) is None
    unpinned = next(s for s in newest_first(store, key) if s.started.operation == "unpin")
    assert unpinned.status == "succeeded" and unpinned.decisions[0].reason == "fixed in the next release"
    assert unpinned.decisions[0].detail["deploy"] == result.deploy_id


# ---- which revision ---------------------------------------------------------------------------------------------


def test_rollback_goes_back_one_deploy_never_further_and_to_any_revision_by_name(cloud, clients, data):
    seed = snapshot(clients)["traffic"][0].revision
    first = deploy(make_config(data), options())
    data["service"]["env"]["WEBSOCKET_HEARTBEAT_INTERVAL"] = 30
    second = deploy(make_config(data), options())
    assert (first.status, second.status) == ("succeeded", "succeeded")
    assert serving(clients) == {second.revision: 100}

    once = fast_rollback(data)
    assert (once.revision, once.source) == (first.revision, "journal")
    assert serving(clients) == {first.revision: 100}
    twice = fast_rollback(data)  # idempotent: where the first rollback went, not one more step back
    assert twice.revision == first.revision and serving(clients) == {first.revision: 100}

    named = fast_rollback(data, to_revision=seed)
    assert (named.status, named.source) == ("succeeded", "--to")
    assert serving(clients) == {seed: 100}
    live = clients.services().get_service(name=make_config(data).service_path)
    assert live.template.containers[0].image == "local/chat-backend:v1"  # the revision's own template back


def test_without_a_journal_the_service_annotations_name_the_previous_revision(cloud, clients, data, tmp_path):
    seed = snapshot(clients)["traffic"][0].revision
    assert deploy(make_config(data), options()).status == "succeeded"
    data["state"]["path"] = str(tmp_path / "another-workspace")  # a CI job with no local state
    rolled = fast_rollback(data)
    assert (rolled.status, rolled.revision, rolled.source) == ("succeeded", seed, "annotations")
    assert serving(clients) == {seed: 100}


# ---- the CLI: usage, unlock --force, resume -----------------------------------------------------------------------


def test_recovery_commands_refuse_without_a_reason_or_force(cloud, clients, data, tmp_path, capsys):
    config = str(write_config(data, tmp_path / "deploy.json"))
    assert main(["rollback", "-c", config]) == 2
    assert "rollback needs --reason" in capsys.readouterr().err
    assert main(["unlock", "-c", config, "--reason", "stuck"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["unpin", "-c", config]) == 2
    assert main(["rollback", "-c", config, "--reason", "x", "--pin-for", "soon"]) == 2
    assert main(["resume", "-c", config]) == 0
    assert "nothing to resume" in capsys.readouterr().out
    assert main(["unpin", "-c", config, "--reason", "x"]) == 0
    assert "not pinned" in capsys.readouterr().out


def test_unlock_force_is_journaled(cloud, clients, data, tmp_path, capsys):
    config = str(write_config(data, tmp_path / "deploy.json"))
    store, key = store_of(data, clients)
    ServiceLock(store, key).acquire("d-20261126-120000-abcd", Owner(user="ci", host="worker-9", pid=3))
    capsys.readouterr()  # the test's own log lines
    assert main(["unlock", "-c", config, "--force", "--reason", "the CI job was cancelled", "--json"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("{"), printed[:300]
    out = json.loads(printed)
    assert out["unlocked"]["deploy_id"] == "d-20261126-120000-abcd"
    assert store.read(lock_key(key)) is None
    unlocked = next(iter(newest_first(store, key)))
    assert (unlocked.started.operation, unlocked.status) == ("unlock", "succeeded")
    decision = unlocked.decisions[0]
    assert decision.decision == "force_unlock" and decision.reason == "the CI job was cancelled"
    assert decision.detail["holder"]["owner"]["host"] == "worker-9"


def test_a_deploy_after_a_killed_one_is_told_to_resume_and_resume_puts_things_back(cloud, clients, data, tmp_path):
    before = snapshot(clients)
    config = write_config(data, tmp_path / "deploy.json")
    proc = spawn(["deploy", "-c", str(config), "--yes"], tmp_path)
    inject(cloud, clients, Call("deploy", "traffic-50-update", "run.services.patch", 1), "kill-after", pid=proc.pid)
    code, err = finish(proc)
    assert code == -9, err[-2000:]

    with pytest.raises(LockHeldError) as info:
        deploy(make_config(data), options())
    assert info.value.exit_code == 4
    assert f"pid {proc.pid}" in info.value.message and "its process is gone" in info.value.message
    assert "deployer resume" in str(info.value.hint)

    assert main(["resume", "-c", str(config), "--json"]) == 0
    store, key = store_of(data, clients)
    killed = next(iter(newest_first(store, key)))
    assert killed.status == "rolled_back"
    assert [d.decision for d in killed.decisions] == ["resume", "rollback"]
    world = snapshot(clients)
    assert all(world[k] == before[k] for k in ("traffic", "backend_service", "rules"))
    assert store.read(lock_key(key)) is None
    assert deploy(make_config(data), options()).status == "succeeded"
    assert traffic.split(snapshot(clients)["traffic"]) != traffic.split(before["traffic"])
