"""``deployer resume`` retrying an incomplete rollback, pure: the fold reopening a journal finished
``rollback_incomplete`` with a ``resume`` decision (and refusing everything else after ``finished``),
``decide`` over such journals written through the real writer, what the retry undoes, and how ``history``,
``why`` and the deploy's result read it. The command itself runs end to end in
``test_resume_retry_e2e.py``."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from deployer.errors import CloudError, JournalError
from deployer.orchestrator.emergency import changed_since_first_attempt
from deployer.orchestrator.history import summarize
from deployer.orchestrator.journal import (
    RESUME,
    Decision,
    EffectState,
    Finished,
    Journal,
    JournalState,
    Record,
    before_reopening,
    fold,
    read_records,
    restore_targets,
    this_attempt,
    what_to_undo,
)
from deployer.orchestrator.report import DeployResult, render_result
from deployer.orchestrator.resume import _owned_before, decide, verify_asked
from deployer.orchestrator.rollback import backend_intended_after
from deployer.orchestrator.why import explain
from deployer.plan import ARMOR_RULE, BACKEND_SERVICE, RUN_SERVICE, Action
from deployer.state.local import LocalStateStore
from tests.orchestrator.resume_support import BS, DEPLOY, KEY, NEW, OLD, OWNER, RULE, SVC, T0, Clock, journal


def reopened_from_store(tmp_path: Path) -> JournalState:
    records, _ = read_records(LocalStateStore(tmp_path / "state"), KEY, DEPLOY)
    return fold(records)


def effect(j: Journal, kind: str, rid: str, before: dict[str, Any] | None, intended: dict[str, Any] | None) -> str:
    eid = j.pre_image(kind=kind, resource_id=rid, resource=before, precondition=(before or {}).get("fingerprint"))
    j.effect_started(eid, action=Action.UPDATE, method=f"{kind}.write", intended=intended)
    j.effect_done(eid, result=intended, precondition="after")
    return eid


def deploy_whose_rollback_left_two(tmp_path: Path) -> tuple[Journal, dict[str, str]]:
    """A deploy that touched a backend service, a rule and the service; its gate failed; its rollback put the
    service back but failed on the rule and the backend service."""
    j = journal(tmp_path)
    j.phase("apply")
    ids = {
        "bs": effect(j, BACKEND_SERVICE, BS, {"name": "api-bs", "fingerprint": "f0"}, {"customRequestHeaders": ["A"]}),
        "rule": effect(j, ARMOR_RULE, RULE, None, {"priority": 50, "action": "deny(403)"}),
        "svc": effect(j, RUN_SERVICE, SVC, {"etag": '"e0"'}, {"template.revision": NEW}),
    }
    j.phase("gate_candidate")
    j.gate("candidate", "Failed")
    j.phase("rollback")
    j.decision("rollback", "gate_candidate failed: Failed")
    by_id = {t.effects[0]: t for t in restore_targets(j.state)}
    j.rollback_step(by_id[ids["svc"]], "started")
    j.rollback_step(by_id[ids["svc"]], "done")
    for name in ("rule", "bs"):
        j.rollback_step(by_id[ids[name]], "started")
        j.rollback_step(by_id[ids[name]], "failed", error=CloudError("HTTP 400", status=400))
    j.finish(
        "rollback_incomplete",
        "rollback incomplete",
        remaining=[f"armor.rule {RULE}: HTTP 400", f"compute.backendService {BS}: HTTP 400"],
        why="gate_candidate failed: Failed; the rollback left: armor.rule 50",
    )
    return j, ids


# ---- the fold ------------------------------------------------------------------------------------------------


def test_a_resume_decision_reopens_a_journal_finished_rollback_incomplete(tmp_path: Path) -> None:
    j, ids = deploy_whose_rollback_left_two(tmp_path)
    first = j.state.finished
    assert j.state.status == "rollback_incomplete" and not j.state.reopened

    j.decision(RESUME, "its rollback was incomplete", retry_of="rollback_incomplete")
    state = j.state
    assert (state.status, state.is_finished, state.reopened) == ("running", False, True)
    assert state.earlier == (first,)
    assert [d.decision for d in state.decisions] == ["rollback", RESUME]
    assert state.rolling_back  # the decision to roll back stands
    # what the retry undoes: exactly what the first attempt could not put back (the service is done)
    assert sorted(t.effects for t in restore_targets(state)) == sorted([(ids["rule"],), (ids["bs"],)])

    by_id = {t.effects[0]: t for t in restore_targets(state)}
    for name in ("rule", "bs"):
        j.rollback_step(by_id[ids[name]], "started")
        j.rollback_step(by_id[ids[name]], "done")
    assert what_to_undo(j.state) == []
    j.finish("rolled_back", "rolled back by resume")
    # the stored journal says the same, both endings in order
    stored = reopened_from_store(tmp_path)
    assert stored.status == "rolled_back" and stored.finished is not None
    assert [f.status for f in stored.earlier] == ["rollback_incomplete"]
    assert stored == j.state


def test_a_retry_that_dies_leaves_a_running_journal_resume_picks_up_again(tmp_path: Path) -> None:
    j, _ = deploy_whose_rollback_left_two(tmp_path)
    j.decision(RESUME, "its rollback was incomplete")
    j.phase("resume")
    state = reopened_from_store(tmp_path)  # the process died here
    assert state.status == "running" and state.resume_action == "rollback"
    plan = decide(state)
    assert (plan.action, plan.why) == ("undo", "it had decided to roll back (gate_candidate failed: Failed)")


def test_it_may_fail_again_and_be_reopened_again(tmp_path: Path) -> None:
    j, _ = deploy_whose_rollback_left_two(tmp_path)
    j.decision(RESUME, "retry 1")
    j.finish("rollback_incomplete", "resume could not put everything back", remaining=[f"armor.rule {RULE}: x"])
    j.decision(RESUME, "retry 2")
    assert [f.status for f in j.state.earlier] == ["rollback_incomplete", "rollback_incomplete"]
    assert j.state.status == "running"
    assert reopened_from_store(tmp_path) == j.state


def _finished(status: str, seq: int = 1) -> Finished:
    return Finished(seq=seq, at=T0, status=status, summary="x")  # type: ignore[arg-type]


@pytest.mark.parametrize("status", ["succeeded", "rolled_back", "failed", "aborted"])
def test_only_rollback_incomplete_can_be_reopened(tmp_path: Path, status: str) -> None:
    j = journal(tmp_path)
    records: list[Record] = [j.records[0], _finished(status), Decision(seq=2, at=T0, decision=RESUME, reason="x")]
    with pytest.raises(JournalError, match=f"finished {status} cannot be reopened"):
        fold(records)


@pytest.mark.parametrize("decision", ["rollback", "abort", "force_unlock"])
def test_after_finished_only_a_resume_decision_may_follow(tmp_path: Path, decision: str) -> None:
    j = journal(tmp_path)
    records: list[Record] = [
        j.records[0],
        _finished("rollback_incomplete"),
        Decision(seq=2, at=T0, decision=decision, reason="x"),
    ]
    with pytest.raises(JournalError, match="nothing may follow 'finished'"):
        fold(records)


def test_the_writer_refuses_to_reopen_what_may_not_be(tmp_path: Path) -> None:
    j = journal(tmp_path)
    j.finish("aborted", "changed by someone else")
    with pytest.raises(JournalError, match="cannot be reopened"):
        j.decision(RESUME, "try again")
    assert reopened_from_store(tmp_path).status == "aborted"  # nothing was written


# ---- decide ----------------------------------------------------------------------------------------------------


def test_decide_undoes_what_an_incomplete_deploy_rollback_left(tmp_path: Path) -> None:
    j, _ = deploy_whose_rollback_left_two(tmp_path)
    plan = decide(j.state)
    assert plan.action == "undo"
    assert plan.why == (
        "its rollback was incomplete (left: armor.rule 50, compute.backendService api-bs); "
        "resume puts back what remains"
    )


def test_decide_carries_an_incomplete_emergency_rollback_forward(tmp_path: Path) -> None:
    j = journal(tmp_path, operation="rollback")
    j.decision("rollback", "5xx", to_revision=OLD, source="journal", infra=True)
    effect(j, BACKEND_SERVICE, BS, {"name": "api-bs", "fingerprint": "f0"}, {"customRequestHeaders": []})
    j.decision("rollback", "undo this rollback's own changes: the traffic update was refused")
    j.rollback_step(restore_targets(j.state)[0], "failed", error=CloudError("HTTP 403", status=403))
    j.finish("rollback_incomplete", "failed, and could not put back", remaining=[f"compute.backendService {BS}: 403"])
    plan = decide(j.state)
    assert (plan.action, plan.why) == (
        "rollback",
        "the rollback was incomplete (left: compute.backendService api-bs); resume carries it forward to its target",
    )


def test_decide_retries_a_rollback_whose_verify_did_not_pass(tmp_path: Path) -> None:
    j = journal(tmp_path, operation="rollback")
    j.decision("rollback", "5xx", to_revision=OLD, source="journal", verify=True)
    j.gate("restored", "Failed")
    j.finish("rollback_incomplete", f"traffic moved to {OLD} (verify did not pass)")
    plan = decide(j.state)
    assert plan.action == "rollback" and "verify did not pass" in plan.why


@pytest.mark.parametrize("status", ["succeeded", "rolled_back", "failed", "aborted"])
def test_every_other_finished_journal_needs_nothing(tmp_path: Path, status: str) -> None:
    j = journal(tmp_path)
    j.finish(status, "x")  # type: ignore[arg-type]
    assert decide(j.state).action == "nothing"


# ---- what reads the journal ------------------------------------------------------------------------------------


def test_history_and_why_show_both_endings(tmp_path: Path) -> None:
    j, _ = deploy_whose_rollback_left_two(tmp_path)
    j.decision(RESUME, "its rollback was incomplete (left: armor.rule 50); resume puts back what remains")
    j.phase("resume")
    by_id = restore_targets(j.state)
    for t in by_id:
        j.rollback_step(t, "started")
        j.rollback_step(t, "done", detail="back as before")
    j.finish("rolled_back", "rolled back by resume", why="its rollback was incomplete (left: armor.rule 50)")

    line = summarize(j.state)
    assert line.status == "rolled_back" and line.why == "its rollback was incomplete (left: armor.rule 50)"
    assert line.decisions == (
        "rollback: gate_candidate failed: Failed",
        "resume: its rollback was incomplete (left: armor.rule 50); resume puts back what remains",
    )
    expl = explain(list(j.records))
    assert [p.name for p in expl.phases][-2:] == ["rollback", "resume"]
    rollback_phase, resume_phase = expl.phases[-2], expl.phases[-1]
    assert {r.stage for r in rollback_phase.rollback} == {"done", "failed"}  # the first attempt, as it went
    assert [(r.resource, r.stage) for r in resume_phase.rollback] == [
        ("armor.rule armor/50", "done"),
        ("compute.backendService api-bs", "done"),
    ]
    # the resume decision is the record that reopens the journal: it comes before the "resume" phase
    assert [d.decision for d in rollback_phase.decisions] == ["rollback", RESUME]
    assert {r.stage for r in expl.rolled_back} == {"done"}  # the last word per resource


def test_the_deploy_result_names_resume_first() -> None:
    result = DeployResult(
        service="p/r/chat",
        status="rollback_incomplete",
        exit_code=3,
        remaining=["armor.rule projects/p/global/securityPolicies/armor/rules/50: HTTP 400"],
        hints=["gcloud compute security-policies rules delete 50 --security-policy armor --project p"],
        resume="deployer resume -c deploy.yaml",
    )
    out = io.StringIO()
    render_result(result, Console(file=out, width=200))
    lines = out.getvalue().splitlines()
    at = lines.index("  what to run:")
    assert lines[at + 1].strip().startswith("deployer resume -c deploy.yaml")
    assert lines[at + 2].strip() == f"or by hand: {result.hints[0]}"
    assert result.to_json()["what_to_run"] == ["deployer resume -c deploy.yaml", *result.hints]


def test_the_backend_service_a_write_meant_to_leave() -> None:
    pre = {"name": "api-bs", "fingerprint": "f0", "customRequestHeaders": ["A"], "logConfig": {"enable": False}}

    def write(method: str, intended: dict[str, Any], before: dict[str, Any] | None = pre) -> EffectState:
        return EffectState("e1", BACKEND_SERVICE, BS, before, "f0", method=method, intended=intended)

    patch = write("compute.backendServices.patch", {"customRequestHeaders": ["B"]})
    assert backend_intended_after(patch) == {**pre, "customRequestHeaders": ["B"]}  # a merge patch over what it read
    assert backend_intended_after(write("compute.backendServices.update", {"name": "api-bs"})) == {"name": "api-bs"}
    assert backend_intended_after(write("compute.backendServices.patch", {}, None)) is None  # cannot tell


# ---- what came after, and what a retry may touch ---------------------------------------------------------------


def test_decide_reopens_nothing_that_another_journal_followed(tmp_path: Path) -> None:
    j, _ = deploy_whose_rollback_left_two(tmp_path)
    later = journal(tmp_path / "later", operation="unpin").state
    plan = decide(j.state, later)
    assert plan.action == "nothing"
    assert plan.why == (
        f"{DEPLOY} ended rollback_incomplete, but the unpin {DEPLOY} came after it: resume retries it only while "
        "nothing has followed it"
    )
    assert decide(j.state, None).action == "undo"
    running = journal(tmp_path / "running")  # an unfinished journal is never blocked by what came after
    assert decide(running.state, later).action == "void"


def test_the_fold_knows_where_the_retry_began(tmp_path: Path) -> None:
    j, ids = deploy_whose_rollback_left_two(tmp_path)
    assert j.state.reopened_seq is None and this_attempt(j.state) is j.state
    j.decision(RESUME, "retry")
    cut = j.state.reopened_seq
    assert cut == j.state.decisions[-1].seq
    new = effect(j, RUN_SERVICE, SVC, {"etag": '"e5"'}, {"template.revision": OLD})
    assert list(this_attempt(j.state).effects) == [new]
    assert [e.effect for e in before_reopening(j.state)] == [ids["bs"], ids["rule"], ids["svc"]]
    target = restore_targets(this_attempt(j.state))[0]
    j.rollback_step(target, "started")
    j.rollback_step(target, "done", precondition='"e7"')
    assert j.state.effects[new].undo_precondition == '"e7"'
    assert reopened_from_store(tmp_path) == j.state


def _emergency_left(tmp_path: Path, *, applied: bool) -> Journal:
    """An emergency rollback whose traffic update landed (or was refused), then ended incomplete; reopened."""
    j = journal(tmp_path, operation="rollback")
    before = [{"revision": NEW, "percent": 100, "tag": ""}]
    j.decision("rollback", "5xx", to_revision=OLD, source="journal", verify=True, traffic_before=before)
    eid = j.pre_image(kind=RUN_SERVICE, resource_id=SVC, resource={"etag": '"e1"'}, precondition='"e1"')
    intended = {"traffic": [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", "revision": OLD, "percent": 100}]}
    j.effect_started(eid, action=Action.UPDATE, method="run.services.patch", intended=intended)
    if applied:
        j.effect_done(eid, result={}, precondition='"e2"')
    else:
        j.effect_failed(eid, CloudError("HTTP 400", status=400), outcome="not_applied")
    j.finish("rollback_incomplete", "verify did not pass")
    j.decision(RESUME, "retry")
    return j


def _service(etag: str, revision: str) -> dict[str, Any]:
    return {
        "etag": etag,
        "traffic": [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", "revision": revision, "percent": 100}],
        "trafficStatuses": [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", "revision": revision, "percent": 100}],
    }


def test_a_retry_acts_only_on_the_service_as_the_first_attempt_left_it(tmp_path: Path) -> None:
    moved = _emergency_left(tmp_path / "a", applied=True).state
    assert changed_since_first_attempt(moved, _service('"e2"', OLD)) is None  # the etag it left
    assert changed_since_first_attempt(moved, _service('"e9"', OLD)) is None  # reads as it intended
    why = changed_since_first_attempt(moved, _service('"e9"', NEW))  # fixed by hand since
    assert why == 'changed by someone else since the first attempt (etag "e2" → "e9"); deployer did not overwrite it'
    refused = _emergency_left(tmp_path / "b", applied=False).state
    assert changed_since_first_attempt(refused, _service('"e1"', NEW)) is None  # as it read it
    assert changed_since_first_attempt(refused, _service('"e3"', NEW)) is not None


def test_a_retry_whose_first_attempt_never_wrote_the_service_compares_its_traffic(tmp_path: Path) -> None:
    j = journal(tmp_path, operation="rollback")
    before = [{"revision": NEW, "percent": 100, "tag": ""}]
    j.decision("rollback", "5xx", to_revision=OLD, source="journal", infra=True, traffic_before=before)
    j.finish("rollback_incomplete", "infra failed")
    j.decision(RESUME, "retry")
    assert changed_since_first_attempt(j.state, _service('"e1"', NEW)) is None
    assert changed_since_first_attempt(j.state, _service('"e1"', OLD)) is not None


def test_an_undo_by_resume_keeps_verifying_once_asked(tmp_path: Path) -> None:
    j, _ = deploy_whose_rollback_left_two(tmp_path)
    assert not verify_asked(j.state, False) and verify_asked(j.state, True)
    j.decision(RESUME, "retry", verify=True)
    assert verify_asked(j.state, False)
    k = journal(tmp_path / "gate")
    k.gate("restored", "Failed")
    assert verify_asked(k.state, False)


def test_what_an_undone_deploy_leaves_owned_follows_the_journals_order(tmp_path: Path) -> None:
    """Two journals in the same second: the one started first is the earlier, whatever their random suffixes
    say (``newest_first``), so the undone deploy leaves what that one owned."""
    store = LocalStateStore(tmp_path / "state")
    clock = Clock()
    earlier = "d-20261126-145201-ffff"  # started first, but its suffix sorts after the deploy's
    undone = "d-20261126-145201-0000"
    for deploy_id, owned in ((earlier, [50, 1000]), (undone, [50, 1000, 70])):
        j = Journal.begin(store, service=KEY, deploy_id=deploy_id, config_digest="x", owner=OWNER, clock=clock)
        if deploy_id == earlier:
            j.finish("succeeded", "deployed", owned_armor_priorities=owned)
    assert _owned_before(store, KEY, undone) == [50, 1000]
