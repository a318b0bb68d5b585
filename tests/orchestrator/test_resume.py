"""``deployer resume``'s rule, pure: ``decide`` over journals written through the real writer, and
``settle`` (an unknown outcome compared with the resource as it is now). The whole command runs end to
end in the fault matrix (tests/e2e/test_fault_matrix.py: every SIGKILL case is resumed)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from deployer.errors import CloudError
from deployer.orchestrator.journal import Journal, JournalState
from deployer.orchestrator.resume import decide, finalize_effect, service_landed, settle
from deployer.plan import ANNOTATION_DEPLOY_ID, ARMOR_RULE, BACKEND_SERVICE, RUN_SERVICE, Action
from deployer.state.local import LocalStateStore
from tests.orchestrator.resume_support import BS, DEPLOY, NEW, OLD, RULE, SVC, journal


def service(etag: str, traffic: list[dict[str, Any]], revision: str = OLD, **extra: Any) -> dict[str, Any]:
    return {
        "name": SVC,
        "etag": etag,
        "template": {"revision": revision, "containers": [{"image": "img"}]},
        "traffic": traffic,
        "trafficStatuses": [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", **t} for t in traffic],
        "latestReadyRevision": f"{SVC}/revisions/{revision}",
        **extra,
    }


def rev(name: str, percent: int = 0, tag: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", "revision": name}
    if percent:
        out["percent"] = percent
    if tag:
        out["tag"] = tag
    return out


PRE = service('"e0"', [rev(OLD, 100)])
CANDIDATE_TRAFFIC = [rev(OLD, 100), rev(NEW, 0, "candidate")]
STEP_TRAFFIC = [rev(NEW, 50, "candidate"), rev(OLD, 50)]
FINAL_TRAFFIC = [rev(NEW, 100), rev(OLD, 0, "previous")]


def update(
    j: Journal, before: dict[str, Any], traffic: list[dict[str, Any]], *, etag_after: str | None, **ann: str
) -> str:
    """One UpdateService as the deploy journals it; ``etag_after=None``: the process died during the call."""
    eid = j.pre_image(kind=RUN_SERVICE, resource_id=SVC, resource=before, precondition=before["etag"])
    intended = {"template.revision": NEW, "traffic": traffic, "annotations": dict(ann)}
    j.effect_started(eid, action=Action.UPDATE, method="run.services.patch", intended=intended)
    if etag_after is not None:
        j.effect_done(eid, result={"etag": etag_after}, precondition=etag_after)
    return eid


def to_candidate(j: Journal, *, died: bool = False) -> None:
    j.phase("apply")
    update(j, PRE, CANDIDATE_TRAFFIC, etag_after=None if died else '"e1"')


def verified_steps(j: Journal, *, died_at_finalize: bool = False) -> str:
    to_candidate(j)
    j.phase("gate_candidate")
    j.gate("candidate", "Passed")
    j.phase("shift", percent=50)
    update(j, service('"e1"', CANDIDATE_TRAFFIC, NEW), STEP_TRAFFIC, etag_after='"e2"')
    j.phase("gate_public", percent=50)
    j.gate("public 50%", "Passed")
    j.phase("shift", percent=100)
    return update(
        j,
        service('"e2"', STEP_TRAFFIC, NEW),
        FINAL_TRAFFIC,
        etag_after=None if died_at_finalize else '"e3"',
        **{ANNOTATION_DEPLOY_ID: DEPLOY},
    )


# ---- decide ----------------------------------------------------------------------------------------------


def test_a_finished_journal_needs_nothing(tmp_path: Path) -> None:
    j = journal(tmp_path)
    j.finish("succeeded", "done")
    assert decide(j.state).action == "nothing"


def test_a_deploy_that_died_before_acting_changed_nothing(tmp_path: Path) -> None:
    j = journal(tmp_path)
    j.phase("apply")
    j.pre_image(kind=RUN_SERVICE, resource_id=SVC, resource=PRE, precondition='"e0"')  # read, never sent
    plan = decide(j.state)
    assert (plan.action, plan.why) == ("void", "it died before changing anything")


def test_an_unverified_candidate_is_undone(tmp_path: Path) -> None:
    j = journal(tmp_path)
    to_candidate(j, died=True)
    plan = decide(j.state)
    assert (plan.action, plan.why) == ("undo", "it had not verified its candidate")


def test_a_traffic_step_not_verified_is_undone(tmp_path: Path) -> None:
    j = journal(tmp_path)
    to_candidate(j)
    j.gate("candidate", "Passed")
    j.phase("shift", percent=50)
    update(j, service('"e1"', CANDIDATE_TRAFFIC, NEW), STEP_TRAFFIC, etag_after=None)
    plan = decide(j.state)
    assert (plan.action, plan.why) == ("undo", "it had not verified every traffic step")


def test_a_deploy_whose_finalize_had_started_after_every_gate_passed_is_finished(tmp_path: Path) -> None:
    j = journal(tmp_path)
    eid = verified_steps(j, died_at_finalize=True)
    plan = decide(j.state)
    assert plan.action == "forward"
    fin = finalize_effect(j.state)
    assert fin is not None and fin.effect == eid and fin.outcome_unknown


def test_a_refused_finalize_is_undone(tmp_path: Path) -> None:
    j = journal(tmp_path)
    eid = verified_steps(j, died_at_finalize=True)
    j.effect_failed(eid, CloudError("no", status=400), outcome="not_applied")
    assert decide(j.state).why == "its finalize update was refused"


def test_a_failed_gate_is_undone_even_after_the_finalize(tmp_path: Path) -> None:
    j = journal(tmp_path)
    verified_steps(j)
    j.phase("gate_public", percent=100)
    j.gate("public 100%", "Failed")
    plan = decide(j.state)
    assert plan.action == "undo" and "public 100% did not pass (Failed)" in plan.why


def test_a_decision_to_roll_back_is_never_reversed(tmp_path: Path) -> None:
    j = journal(tmp_path)
    verified_steps(j, died_at_finalize=False)
    j.decision("rollback", "SIGTERM received")
    plan = decide(j.state)
    assert (plan.action, plan.why) == ("undo", "it had decided to roll back (SIGTERM received)")


def test_an_emergency_rollback_is_carried_forward(tmp_path: Path) -> None:
    j = journal(tmp_path, operation="rollback")
    assert decide(j.state).action == "void"  # died before choosing a target: nothing changed
    j.decision("rollback", "5xx", to_revision=OLD, source="journal")
    assert decide(j.state).action == "rollback"


def test_unpin_and_unlock_journals_are_completed(tmp_path: Path) -> None:
    assert decide(journal(tmp_path, operation="unpin").state).action == "admin"


# ---- settle ----------------------------------------------------------------------------------------------


def _effect(state: JournalState, kind: str) -> Any:
    return next(e for e in state.effects.values() if e.kind == kind)


def test_settling_a_service_update(tmp_path: Path) -> None:
    j = journal(tmp_path)
    to_candidate(j, died=True)
    e = _effect(j.state, RUN_SERVICE)
    assert settle(e, PRE) == "not_applied"  # the etag it read: the update never landed
    landed = service('"e1"', CANDIDATE_TRAFFIC, NEW)
    assert settle(e, landed) == "applied" and service_landed(e, landed)
    someone = service('"e9"', [rev(OLD, 100), rev(OLD, 0, "hotfix")])
    assert settle(e, someone) is None  # neither: the undo compares again before writing
    assert settle(e, None) is None


def test_settling_a_backend_service_and_a_rule(tmp_path: Path) -> None:
    j = journal(tmp_path)
    pre_bs = {"name": "api-bs", "fingerprint": "f0", "customRequestHeaders": ["A: 1"]}
    eid = j.pre_image(kind=BACKEND_SERVICE, resource_id=BS, resource=pre_bs, precondition="f0")
    j.effect_started(
        eid, action=Action.UPDATE, method="compute.backendServices.patch", intended={"customRequestHeaders": ["A: 2"]}
    )
    rule = {"priority": 50, "action": "throttle", "description": "upgrades"}
    rid = j.pre_image(kind=ARMOR_RULE, resource_id=RULE, resource=None, precondition=None)
    j.effect_started(rid, action=Action.CREATE, method="compute.securityPolicies.addRule", intended=rule)
    bs, armor = _effect(j.state, BACKEND_SERVICE), _effect(j.state, ARMOR_RULE)

    assert settle(bs, {**pre_bs, "fingerprint": "f1"}) == "not_applied"  # as before (a fingerprint is not content)
    assert settle(bs, {**pre_bs, "fingerprint": "f1", "customRequestHeaders": ["A: 2"]}) == "applied"
    assert settle(bs, {**pre_bs, "fingerprint": "f2", "customRequestHeaders": ["B: 3"]}) is None
    assert settle(armor, None) == "not_applied"
    assert settle(armor, {**copy.deepcopy(rule), "kind": "compute#securityPolicyRule"}) == "applied"
    assert settle(armor, {**rule, "description": "someone else's"}) is None


@pytest.mark.parametrize("died", [True, False])
def test_the_finalize_is_the_update_that_writes_this_deploys_id(tmp_path: Path, died: bool) -> None:
    j = journal(tmp_path)
    to_candidate(j)
    assert finalize_effect(j.state) is None  # the candidate and the steps carry the last deploy's annotations
    eid = verified_steps(journal(tmp_path / "again"), died_at_finalize=died)
    state = Journal.open(LocalStateStore(tmp_path / "again" / "state"), "p/us-central1/api", DEPLOY).state
    fin = finalize_effect(state)
    assert fin is not None and fin.effect == eid
    assert fin.outcome == ("unknown" if died else "applied")
    assert (fin.intended or {})["annotations"] == {ANNOTATION_DEPLOY_ID: DEPLOY}
