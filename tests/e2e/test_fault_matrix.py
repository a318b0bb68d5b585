"""The fault matrix (issue 7): every mutating call of a canary deploy and of an emergency rollback ×
{503 twice then success, 429, 400, 403, 409 (a foreign write just before the call), operation failure,
SIGKILL of the deployer just before and just after the call} × both state stores (a local directory,
and Cloud Storage through the local cloud's storage API).

After the run — and ``deployer resume`` where the process was killed — the world is either the new
release fully verified (every gate Passed) or byte-identical to the pre-images (effective traffic, the
backend service minus its fingerprint, the owned Cloud Armor rules), no lock is left, and the journal
says which. Every case also proves its fault fired (consumed by the local cloud; a killed process ends
by SIGKILL). The killed deployer is a real ``python -m deployer`` process; the kill is the local
cloud's test-harness fault (``kind: kill``), not a hook in deployer's code.

For a deploy: "new" = the candidate serves 100 % with the old revision tagged ``previous``, the
journal ``succeeded``; "pre" = the journal ``rolled_back`` or ``failed``. For a rollback (run after a
good deploy, with ``--infra``): "pre" (the deploy's pre-images) = the rollback ``succeeded`` and pinned;
"new" (left as the deploy made it) = the rollback ``failed`` with nothing changed.

Cloud Armor rule calls carry no precondition (gcp-facts §5.1: no requestId for addRule, no
fingerprint), so a foreign write there causes no conflict: the deployer's write lands over it.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import time
from pathlib import Path
from typing import Any

import pytest
import structlog

from deployer.cli import main
from deployer.gcp.clients import Clients
from deployer.orchestrator import traffic
from deployer.orchestrator.deploy import deploy, revision_name, state_key
from deployer.orchestrator.emergency import RollbackOptions, rollback
from deployer.orchestrator.journal import Journal
from deployer.orchestrator.pins import read_pin
from deployer.orchestrator.resume import newest_operation
from deployer.state import open_store
from tests.e2e.matrix_support import (
    CALLS,
    FAULTS,
    STORES,
    Call,
    faults_left,
    finish,
    fresh_world,
    inject,
    lock_left,
    matrix_config,
    snapshot,
    spawn,
    write_config,
)
from tests.orchestrator.deploy_support import FAST, PROJECT, make_config, options, running_cloud

pytestmark = pytest.mark.e2e

OUTCOMES: collections.Counter[str] = collections.Counter()
CASES: list[str] = []


@pytest.fixture(scope="module")
def cloud(request: pytest.FixtureRequest) -> Any:
    started = time.monotonic()
    with running_cloud(stop_grace=0.5) as lc:
        yield lc
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if reporter is not None and CASES:
        total = len(CALLS) * len(FAULTS) * len(STORES)
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            reporter.write_line("")
            reporter.write_line(
                f"fault matrix: {len(CASES)} of {total} cases run ({len(CALLS)} mutating calls × {len(FAULTS)} "
                f"faults × {len(STORES)} state stores) in {time.monotonic() - started:.0f} s"
            )
            for outcome, n in sorted(OUTCOMES.items()):
                reporter.write_line(f"  {outcome}: {n}")


@pytest.fixture(autouse=True)
def _quiet_logs() -> Any:
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="module")
def clients(cloud: Any) -> Clients:
    return Clients(endpoint=cloud.endpoint, project=PROJECT)


def _journal_status(data: dict[str, Any], clients: Clients) -> tuple[Any, Any]:
    config = make_config(data)
    store = open_store(config.state, clients)
    return store, newest_operation(store, state_key(config))


def _is_new_release(world: dict[str, Any], expected: dict[str, Any], new_revision: str, old_revision: str) -> bool:
    want = sorted([traffic.Served(new_revision, 100, ""), traffic.Served(old_revision, 0, "previous")])

    def made(bs: dict[str, Any]) -> dict[str, Any]:  # the reference was deployed into an earlier seeding
        return {k: v for k, v in bs.items() if k != "creationTimestamp"}

    return (
        world["traffic"] == want
        and made(world["backend_service"]) == made(expected["backend_service"])
        and world["rules"] == expected["rules"]
    )


def _same(world: dict[str, Any], other: dict[str, Any]) -> bool:
    return all(world[k] == other[k] for k in ("traffic", "backend_service", "rules"))


CASE_IDS = [f"{store}-{call.id}-{fault}" for store in STORES for call in CALLS for fault in FAULTS]
CASE_PARAMS = [(store, call, fault) for store in STORES for call in CALLS for fault in FAULTS]


@pytest.mark.parametrize(("store_kind", "call", "fault"), CASE_PARAMS, ids=CASE_IDS)
def test_fault_matrix(cloud: Any, clients: Clients, tmp_path: Path, store_kind: str, call: Call, fault: str) -> None:
    fresh_world(cloud, clients)
    data = matrix_config(cloud, store_kind, tmp_path / "state")
    config_file = write_config(data, tmp_path / "deploy.json")
    key = state_key(make_config(data))
    pre = snapshot(clients)
    old_revision = pre["traffic"][0].revision
    killed = fault.startswith("kill-")

    if call.phase == "rollback":  # the world to roll back: a good canary deploy of the new release
        setup = deploy(make_config(data), options())
        assert setup.status == "succeeded", setup.why
        new_world = snapshot(clients)
        inject_and_run = _run_rollback
    else:
        new_world = None
        inject_and_run = _run_deploy
    detail = inject_and_run(cloud, clients, call, fault, data, config_file, tmp_path)

    # the fault fired: consumed by the local cloud (a kill: the process died of SIGKILL)
    assert faults_left(cloud) == [], f"the fault never fired: {faults_left(cloud)}"
    if killed:
        assert detail["returncode"] == -9, detail
        code = main(["resume", "-c", str(config_file), "--json"])  # `deployer resume`, as an operator runs it
        assert code == 0, f"deployer resume exited {code}"

    world = snapshot(clients)
    store, state = _journal_status(data, clients)
    assert state is not None and state.is_finished, "the journal must say how it ended"
    assert not lock_left(store, key), "a lock was left behind"
    if call.phase == "deploy":
        new_revision = revision_name("chat-backend", state.deploy_id)
        if state.status == "succeeded":
            expected = _expected_new(cloud, clients, data)
            assert _is_new_release(world, expected, new_revision, old_revision), _diff(
                world, {**expected, "traffic": [new_revision, old_revision]}
            )
            assert [g.verdict for g in state.gates if g.target.startswith(("candidate", "public"))] and all(
                g.verdict == "Passed" for g in state.gates
            ), "the new release must be fully verified"
            outcome = "new release, verified"
        else:
            assert state.status in ("rolled_back", "failed"), (state.status, state.finished)
            if fault == "409-foreign-write" and not _same(world, pre):
                # a resource the deploy never changed keeps the foreign write (it is not the deploy's to undo)
                theirs = _with_foreign_write(pre, call)
                assert _same(world, theirs), _diff(world, theirs)
                assert not [e for e in state.effects.values() if e.kind == _kind(call) and e.outcome == "applied"]
                outcome = "pre-images (+ the foreign write the deploy never touched)"
            else:
                assert _same(world, pre), _diff(world, pre)
                outcome = "pre-images"
    else:
        assert new_world is not None
        pin = read_pin(store, key)
        if state.status == "succeeded":
            assert state.started.operation == "rollback"
            assert _same(world, pre), _diff(world, pre)
            assert pin is not None and pin.revision == old_revision
            outcome = "pre-images (rolled back, pinned)"
        else:
            assert state.status == "failed", (state.status, state.finished)
            assert _same(world, new_world), _diff(world, new_world)
            assert pin is None
            outcome = "new release (rollback undone, nothing changed)"
    CASES.append(f"{store_kind}-{call.id}-{fault}")
    OUTCOMES[f"{call.phase} → {outcome}{' (after resume)' if killed else ''}"] += 1


_EXPECTED_NEW: dict[str, Any] = {}


def _expected_new(cloud: Any, clients: Clients, data: dict[str, Any]) -> dict[str, Any]:
    """The backend service and rules a clean deploy of this config leaves (deterministic), once."""
    if not _EXPECTED_NEW:
        raise AssertionError("the reference world is computed by _reference_deploy")
    return _EXPECTED_NEW


@pytest.fixture(scope="module", autouse=True)
def _reference_deploy(cloud: Any, clients: Clients, tmp_path_factory: pytest.TempPathFactory) -> None:
    """One clean deploy: what "the new release" looks like for the backend service and the rules."""
    fresh_world(cloud, clients)
    data = matrix_config(cloud, "local", tmp_path_factory.mktemp("reference"))
    result = deploy(make_config(data), options())
    assert result.status == "succeeded", result.why
    _EXPECTED_NEW.update(snapshot(clients))


def _run_deploy(
    cloud: Any, clients: Clients, call: Call, fault: str, data: dict[str, Any], config_file: Path, cwd: Path
) -> dict[str, Any]:
    if fault.startswith("kill-"):
        proc = spawn(["deploy", "-c", str(config_file), "--yes"], cwd)
        inject(cloud, clients, call, fault, pid=proc.pid)
        code, err = finish(proc)
        return {"returncode": code, "stderr": err[-3000:]}
    inject(cloud, clients, call, fault)
    result = deploy(make_config(data), options())
    return {"status": result.status, "why": result.why}


def _run_rollback(
    cloud: Any, clients: Clients, call: Call, fault: str, data: dict[str, Any], config_file: Path, cwd: Path
) -> dict[str, Any]:
    if fault.startswith("kill-"):
        proc = spawn(["rollback", "-c", str(config_file), "--reason", "fault matrix", "--infra"], cwd)
        inject(cloud, clients, call, fault, pid=proc.pid)
        code, err = finish(proc)
        return {"returncode": code, "stderr": err[-3000:]}
    inject(cloud, clients, call, fault)
    result = rollback(
        make_config(data), RollbackOptions(reason="fault matrix", infra=True, policy=FAST, read_policy=FAST)
    )
    return {"status": result.status, "why": result.why}


def _kind(call: Call) -> str:
    if call.method.startswith("run."):
        return "run.service"
    return "compute.backendService" if "backendServices" in call.method else "armor.rule"


def _with_foreign_write(world: dict[str, Any], call: Call) -> dict[str, Any]:
    """``world`` with what ``matrix_support.foreign_write`` changes (labels are not compared)."""
    out = copy.deepcopy(world)
    if _kind(call) == "compute.backendService":
        out["backend_service"]["description"] = "edited by someone else"
    elif _kind(call) == "armor.rule":
        out["rules"][1000]["description"] = "edited by someone else"
    return out


def _diff(world: dict[str, Any], other: dict[str, Any]) -> str:
    return "; ".join(
        f"{k}: {world[k]} != {other[k]}" for k in ("traffic", "backend_service", "rules") if world[k] != other[k]
    )


__all__ = ["Journal"]
