"""The journal: records, the fold, what to undo, and the writer over a real state store.

The fold is pure and property-tested over generated journals; the writer runs on every store of the
contract suite, including a real process killed with SIGKILL in the middle of an effect.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deployer.errors import CloudError, ConflictError, JournalError, StaleStateError
from deployer.orchestrator import journal as jn
from deployer.orchestrator.journal import (
    Decision,
    EffectDone,
    EffectFailed,
    EffectStarted,
    ErrorInfo,
    Finished,
    GateResult,
    Journal,
    PhaseEntered,
    PreImage,
    Record,
    RollbackStep,
    Started,
    fold,
    new_deploy_id,
    restore_targets,
    what_to_undo,
)
from deployer.orchestrator.owner import Owner
from deployer.plan import BACKEND_SERVICE, RUN_SERVICE, Action, Change, Plan
from deployer.redact import SecretMask
from deployer.state import StateStore
from tests.state.stores import StoreSpec, fresh_namespace

T0 = datetime(2026, 11, 26, 14, 52, 1, tzinfo=UTC)
DEPLOY = "d-20261126-145201-a1b2"
OWNER = Owner(user="alice", host="laptop", pid=4242, build_id=None)
SVC = "projects/p/locations/us-central1/services/api"
BS = "projects/p/global/backendServices/api-bs"
RULE = "projects/p/global/securityPolicies/armor/rules/1000"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def begin(store: StateStore, **kw: Any) -> Journal:
    args: dict[str, Any] = {
        "service": "api",
        "deploy_id": DEPLOY,
        "config_digest": "sha256:c0ffee",
        "owner": OWNER,
        "clock": Clock(),
    }
    args.update(kw)
    return Journal.begin(store, **args)


# ---- deploy ids ----------------------------------------------------------------------------------------


def test_deploy_id_from_an_injected_clock_and_token() -> None:
    assert new_deploy_id(T0, "a1b2") == DEPLOY
    cet = timezone(timedelta(hours=1))
    assert new_deploy_id(datetime(2026, 11, 26, 15, 52, 1, tzinfo=cet), "00ff") == "d-20261126-145201-00ff"
    assert jn.DEPLOY_ID_RE.fullmatch(new_deploy_id(T0))
    with pytest.raises(ValueError):
        new_deploy_id(T0, "XYZ1")
    with pytest.raises(ValueError):
        new_deploy_id(datetime(2026, 11, 26))
    assert jn.journal_key("api", DEPLOY) == f"deploys/api/{DEPLOY}.json"


# ---- generated journals (the fold's properties) ----------------------------------------------------------

RESOURCES = [(RUN_SERVICE, SVC), (BACKEND_SERVICE, BS), ("armor.rule", RULE)]


@st.composite
def journals(draw: st.DrawFn) -> list[Record]:
    """A valid record sequence: any interleaving a deploy, its failure and its rollback may write."""
    at = T0
    records: list[Record] = [
        Started(seq=0, at=at, deploy_id=DEPLOY, service="api", config_digest="sha256:x", owner=OWNER)
    ]
    pre: dict[str, tuple[str, str]] = {}  # effect -> resource, not started yet
    unknown: dict[str, tuple[str, str]] = {}  # started, outcome unknown, not being undone
    undoable: dict[str, tuple[str, str]] = {}  # started, not not_applied, not undone
    being_undone: set[str] = set()

    def add(rec_type: type, **fields: Any) -> None:
        nonlocal at
        at += timedelta(milliseconds=draw(st.integers(0, 5000)))
        records.append(rec_type(seq=len(records), at=at, **fields))

    for _ in range(draw(st.integers(0, 30))):
        moves = ["phase", "pre_image", "gate", "decision"]
        if pre:
            moves.append("start")
        if unknown:
            moves += ["done", "failed"]
        if undoable:
            moves.append("rollback_step")
        move = draw(st.sampled_from(moves))
        if move == "phase":
            add(PhaseEntered, name=draw(st.sampled_from(["infra", "candidate", "traffic", "rollback"])))
        elif move == "pre_image":
            kind, rid = draw(st.sampled_from(RESOURCES))
            eid = f"e{len(records)}"
            resource = draw(st.none() | st.fixed_dictionaries({"v": st.integers(0, 9)}))
            add(PreImage, effect=eid, kind=kind, resource_id=rid, resource=resource, precondition=f"p{len(records)}")
            pre[eid] = (kind, rid)
        elif move == "start":
            eid = draw(st.sampled_from(sorted(pre)))
            kind, rid = pre.pop(eid)
            add(EffectStarted, effect=eid, kind=kind, resource_id=rid, action=Action.UPDATE, method="m")
            unknown[eid] = undoable[eid] = (kind, rid)
        elif move == "done":
            eid = draw(st.sampled_from(sorted(unknown)))
            del unknown[eid]
            add(EffectDone, effect=eid, precondition=f"after-{eid}")
        elif move == "failed":
            eid = draw(st.sampled_from(sorted(unknown)))
            outcome = draw(st.sampled_from(["not_applied", "unknown"]))
            add(EffectFailed, effect=eid, error=ErrorInfo(type="X", message="m"), outcome=outcome)
            if outcome == "not_applied":
                del unknown[eid]
                undoable.pop(eid)
        elif move == "rollback_step":
            eid = draw(st.sampled_from(sorted(undoable)))
            kind, rid = undoable[eid]
            same = sorted(e for e, r in undoable.items() if r == (kind, rid))
            covered = tuple(draw(st.lists(st.sampled_from(same), min_size=1, unique=True)))
            stage = draw(st.sampled_from(["started", "done", "failed", "skipped"]))
            add(RollbackStep, effects=covered, kind=kind, resource_id=rid, stage=stage)
            for e in covered:
                unknown.pop(e, None)  # once undoing, its own outcome is never recorded again
                being_undone.add(e)
                if stage in ("done", "skipped"):
                    undoable.pop(e)
        elif move == "gate":
            add(GateResult, target="candidate", verdict=draw(st.sampled_from(["Passed", "Failed"])), evidence={"n": 1})
        else:
            add(Decision, decision=draw(st.sampled_from([jn.ROLLBACK, "proceed"])), reason="because")
    if draw(st.booleans()):
        add(Finished, status=draw(st.sampled_from(list(jn.FINAL_STATUSES))), summary="end")
    # the generator's own bookkeeping must agree with the rule that done/failed cannot follow an undo
    assert not (set(unknown) & being_undone)
    return records


def expected_undo(records: list[Record]) -> list[str]:
    """The property, written independently of the fold: started, not surely harmless, not undone."""
    started: dict[str, int] = {}
    for r in records:
        if isinstance(r, EffectStarted):
            started[r.effect] = r.seq
        elif isinstance(r, EffectFailed) and r.outcome == "not_applied":
            started.pop(r.effect, None)
        elif isinstance(r, RollbackStep) and r.stage in ("done", "skipped"):
            for e in r.effects:
                started.pop(e, None)
    return [e for e, _ in sorted(started.items(), key=lambda kv: kv[1], reverse=True)]


@settings(max_examples=150, deadline=None)
@given(records=journals())
def test_every_prefix_folds_and_what_to_undo_is_exactly_the_unfinished_effects(records: list[Record]) -> None:
    for n in range(1, len(records) + 1):
        prefix = records[:n]
        state = fold(prefix)
        assert state.next_seq == n
        todo = what_to_undo(state)
        assert [e.effect for e in todo] == expected_undo(prefix)
        # restore targets: each effect to undo exactly once, grouped by resource, first pre-image wins
        targets = restore_targets(state)
        covered = [e for t in targets for e in t.effects]
        assert sorted(covered) == sorted(e.effect for e in todo)
        for t in targets:
            first = state.effects[t.effects[0]]
            assert t.pre_image == first.pre_image and t.pre_precondition == first.pre_precondition
            assert all(
                (state.effects[e].kind, state.effects[e].resource_id) == (t.kind, t.resource_id) for e in t.effects
            )
            assert t.outcome_unknown == any(state.effects[e].outcome == "unknown" for e in t.effects)
        assert state.is_finished == isinstance(prefix[-1], Finished)


@settings(max_examples=60, deadline=None)
@given(records=journals())
def test_a_journal_document_round_trips_through_json(records: list[Record]) -> None:
    doc = jn.JournalDocument(deploy_id=DEPLOY, service="api", records=tuple(records))
    back = jn.JournalDocument.model_validate(json.loads(json.dumps(doc.model_dump(mode="json"))))
    assert back == doc
    assert fold(back.records) == fold(records)


# ---- the fold's rules ------------------------------------------------------------------------------------


def started(seq: int = 0) -> Started:
    return Started(seq=seq, at=T0, deploy_id=DEPLOY, service="api", config_digest="d", owner=OWNER)


def pre(seq: int, eid: str = "e1", kind: str = BACKEND_SERVICE, rid: str = BS) -> PreImage:
    return PreImage(
        seq=seq, at=T0, effect=eid, kind=kind, resource_id=rid, resource={"fingerprint": "f0"}, precondition="f0"
    )


def go(seq: int, eid: str = "e1", kind: str = BACKEND_SERVICE, rid: str = BS) -> EffectStarted:
    return EffectStarted(seq=seq, at=T0, effect=eid, kind=kind, resource_id=rid, action=Action.UPDATE, method="patch")


def done(seq: int, eid: str = "e1") -> EffectDone:
    return EffectDone(seq=seq, at=T0, effect=eid, precondition="f1")


def undo(seq: int, eid: str = "e1", stage: str = "done") -> RollbackStep:
    return RollbackStep(seq=seq, at=T0, effects=(eid,), kind=BACKEND_SERVICE, resource_id=BS, stage=stage)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("records", "why"),
    [
        ([], "empty journal"),
        ([pre(0)], "begins with 'started'"),
        ([started(1)], "seq 0"),
        ([started(), started(1)], "one 'started'"),
        ([started(), pre(2)], "expected seq 1"),
        ([started(), go(1)], "unknown effect"),
        ([started(), pre(1), pre(2)], "already has a pre-image"),
        ([started(), pre(1), go(2), go(3)], "already started"),
        ([started(), pre(1), go(2, rid="projects/p/global/backendServices/other")], "not projects/p"),
        ([started(), pre(1), done(2)], "not started"),
        ([started(), pre(1), go(2), done(3), done(4)], "is applied"),
        ([started(), pre(1), undo(2)], "never started"),
        ([started(), pre(1), go(2), undo(3), undo(4)], "already undone"),
        ([started(), pre(1), go(2), undo(3, stage="started"), done(4)], "already being undone"),
        ([started(), Finished(seq=1, at=T0, status="failed", summary="x"), pre(2)], "nothing may follow"),
    ],
)
def test_invalid_journals_are_refused(records: list[Record], why: str) -> None:
    with pytest.raises(JournalError, match=why):
        fold(records)


def test_unknown_outcomes_and_resume_action() -> None:
    base: list[Record] = [started(), PhaseEntered(seq=1, at=T0, name="infra"), pre(2), go(3)]
    state = fold(base)
    assert state.phase == "infra" and state.status == "running"
    assert [e.effect for e in state.unknown_outcomes] == ["e1"]
    assert state.effects["e1"].phase == "infra"
    assert state.resume_action == "undecided"
    state = fold([*base, Decision(seq=4, at=T0, decision=jn.ROLLBACK, reason="gate failed")])
    assert state.resume_action == "rollback"
    # resume resolved the unknown outcome by re-reading: it had landed
    state = fold([*base, done(4)])
    assert state.unknown_outcomes == [] and state.effects["e1"].post_precondition == "f1"
    assert [t.expected_precondition for t in restore_targets(state)] == ["f1"]


def test_restore_targets_collapse_repeated_effects_on_one_resource() -> None:
    # traffic 10 → 50 → 100 on the service, then a backend patch: undo = backend, then service to its FIRST pre-image
    recs: list[Record] = [started()]
    for i, pct in enumerate((10, 50, 100)):
        eid = f"traffic-{pct}"
        recs.append(
            PreImage(
                seq=len(recs),
                at=T0,
                effect=eid,
                kind=RUN_SERVICE,
                resource_id=SVC,
                resource={"pct": i},
                precondition=f"e{i}",
            )
        )
        recs.append(go(len(recs), eid, RUN_SERVICE, SVC))
        recs.append(done(len(recs), eid))
    recs += [pre(len(recs), "bs"), go(len(recs) + 1, "bs")]
    state = fold(recs)
    assert [e.effect for e in what_to_undo(state)] == ["bs", "traffic-100", "traffic-50", "traffic-10"]
    targets = restore_targets(state)
    assert [(t.kind, t.effects) for t in targets] == [
        (BACKEND_SERVICE, ("bs",)),
        (RUN_SERVICE, ("traffic-10", "traffic-50", "traffic-100")),
    ]
    assert targets[1].pre_image == {"pct": 0} and targets[1].pre_precondition == "e0"
    assert targets[0].outcome_unknown and not targets[1].outcome_unknown


# ---- the writer, on every state store ----------------------------------------------------------------------


def test_begin_is_create_only(store: StateStore) -> None:
    j = begin(store)
    assert j.state.status == "running"
    with pytest.raises(JournalError) as info:
        begin(store)
    assert info.value.message == f"a journal for {DEPLOY} already exists ({j.where})"
    assert len(jn.load(store, "api", DEPLOY).started.owner.describe()) > 0


def test_effect_writes_pre_image_and_start_before_the_block_runs_and_the_result_after(store: StateStore) -> None:
    j = begin(store)
    j.phase("infra")
    seen_inside: list[str] = []
    with j.effect(
        kind=BACKEND_SERVICE,
        resource_id=BS,
        before={"name": "api-bs", "fingerprint": "f0"},
        precondition="f0",
        action=Action.UPDATE,
        method="compute.backendServices.patch",
        intended={"customRequestHeaders": ["X-Env: prod"]},
        request_id="r-1",
    ) as fx:
        # what a kill right now would leave behind, read from the store by someone else
        seen_inside = [r.type for r in jn.read_records(store, "api", DEPLOY)[0]]
        fx.done({"name": "api-bs", "fingerprint": "f1"}, precondition="f1")
    assert seen_inside == ["started", "phase", "pre_image", "effect_started"]
    state = jn.load(store, "api", DEPLOY)
    e = state.effects["e1"]
    assert (e.outcome, e.pre_precondition, e.post_precondition, e.request_id) == ("applied", "f0", "f1", "r-1")
    assert e.pre_image == {"name": "api-bs", "fingerprint": "f0"} and e.phase == "infra"


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (CloudError("400 bad", method="m", status=400), "not_applied"),
        (ConflictError("409", method="m", status=409, outcome_unknown=True), "unknown"),
        (KeyboardInterrupt(), "unknown"),
        (RuntimeError("bug mid-call"), "unknown"),
    ],
)
def test_a_failing_effect_records_whether_it_may_have_landed(
    store: StateStore, error: BaseException, outcome: str
) -> None:
    j = begin(store)
    with (
        pytest.raises(type(error)),
        j.effect(kind=BACKEND_SERVICE, resource_id=BS, before={}, precondition="f0", action=Action.UPDATE, method="m"),
    ):
        raise error
    e = jn.load(store, "api", DEPLOY).effects["e1"]
    assert e.outcome == outcome
    assert e.error is not None and e.error.type == type(error).__name__
    assert [x.effect for x in what_to_undo(j.state)] == ([] if outcome == "not_applied" else ["e1"])


def test_a_second_writer_loses_and_the_journal_keeps_only_the_winner(store: StateStore) -> None:
    first = begin(store)
    resumer = Journal.open(store, "api", DEPLOY, clock=Clock())
    resumer.decision(jn.ROLLBACK, "resumed a dead deploy")
    with pytest.raises(StaleStateError):
        first.phase("traffic")  # the original process woke up: it must stop
    assert [r.type for r in jn.read_records(store, "api", DEPLOY)[0]] == ["started", "decision"]
    assert first.state.next_seq == 1  # nothing half-appended in memory either


def test_the_writer_refuses_records_the_fold_would_refuse(store: StateStore) -> None:
    j = begin(store)
    with pytest.raises(JournalError, match="no pre-image"):
        j.effect_started("e9", action=Action.UPDATE, method="m")
    with pytest.raises(JournalError, match="unknown effect"):
        j.effect_done("e9")
    assert [r.type for r in jn.read_records(store, "api", DEPLOY)[0]] == ["started"]


def test_rolled_back_is_refused_while_something_remains(store: StateStore) -> None:
    j = begin(store)
    with j.effect(
        kind=BACKEND_SERVICE, resource_id=BS, before={"v": 1}, precondition="f0", action=Action.UPDATE, method="m"
    ):
        pass
    j.decision(jn.ROLLBACK, "gate Failed on candidate")
    with pytest.raises(JournalError, match=r"still to undo: compute\.backendService"):
        j.finish("rolled_back", "restored")
    (target,) = restore_targets(j.state)
    j.rollback_step(target, "started")
    j.rollback_step(target, "done", precondition="f2")
    j.finish("rolled_back", "restored everything")
    state = jn.load(store, "api", DEPLOY)
    assert state.status == "rolled_back" and what_to_undo(state) == [] and state.resume_action == "none"


def test_secrets_are_masked_in_every_record_but_the_plan_digest_is_of_the_real_plan(store: StateStore) -> None:
    svc = {"template": {"containers": [{"env": [{"name": "DB_PASSWORD", "value": "hunter2"}]}]}, "etag": "e1"}
    new = {"template": {"containers": [{"env": [{"name": "DB_PASSWORD", "value": "hunter3"}]}]}}
    plan = Plan(
        service="api",
        created_at=T0,
        config_digest="d",
        changes=(Change(kind=RUN_SERVICE, id=SVC, action=Action.UPDATE, before=svc, after=new, precondition="e1"),),
    )
    j = begin(store, plan=plan, mask=SecretMask())
    with j.effect(
        kind=RUN_SERVICE,
        resource_id=SVC,
        before=svc,
        precondition="e1",
        action=Action.UPDATE,
        method="run.UpdateService",
        intended=new,
    ) as fx:
        fx.done(new, precondition="e2")
    raw = store.read(jn.journal_key("api", DEPLOY))
    assert raw is not None and b"hunter" not in raw[0]
    state = jn.load(store, "api", DEPLOY)
    assert state.started.plan_digest == plan.digest()
    assert state.started.plan is not None and state.started.plan["masked"] is True
    assert state.effects["e1"].masked_paths == ("template.containers[0].env[0].value",)


def test_parallel_appends_from_threads_are_all_kept_in_order(store: StateStore) -> None:
    j = begin(store)

    def worker(kind: str, rid: str) -> None:
        for _ in range(5):
            with j.effect(kind=kind, resource_id=rid, before={}, precondition=None, action=Action.UPDATE, method="m"):
                pass

    threads = [threading.Thread(target=worker, args=r) for r in RESOURCES[:2]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    records, _ = jn.read_records(store, "api", DEPLOY)
    assert [r.seq for r in records] == list(range(31))
    assert sum(1 for r in records if isinstance(r, EffectDone)) == 10


def test_history_lists_deploys_newest_first(store: StateStore) -> None:
    for token in ("0001", "0002"):
        begin(store, deploy_id=new_deploy_id(T0, token))
    begin(store, deploy_id=new_deploy_id(T0 + timedelta(hours=1), "0000"))
    begin(store, service="other", deploy_id=new_deploy_id(T0, "0003"))
    assert jn.list_deploys(store, "api") == [
        "d-20261126-155201-0000",
        "d-20261126-145201-0002",
        "d-20261126-145201-0001",
    ]
    latest = jn.latest(store, "api")
    assert latest is not None and latest.deploy_id == "d-20261126-155201-0000"
    assert jn.latest(store, "nothing-here") is None


def test_a_corrupt_or_missing_journal_is_one_journal_error_naming_where_it_is(store: StateStore) -> None:
    where = store.where(jn.journal_key("api", DEPLOY))  # gs://bucket/prefix/deploys/..., or the absolute file
    with pytest.raises(JournalError) as info:
        Journal.open(store, "api", DEPLOY)
    assert info.value.message == f"no journal for deploy {DEPLOY} of api ({where})"
    store.write(jn.journal_key("api", DEPLOY), b'{"format": 1, "deploy_id": "x"}', if_generation=0)
    with pytest.raises(JournalError) as info:
        jn.load(store, "api", DEPLOY)
    assert info.value.message.startswith(f"journal {where} is corrupt: "), info.value.message


def test_a_journal_knows_where_it_is(store: StateStore) -> None:
    journal = begin(store)
    assert journal.where == store.where(f"deploys/api/{DEPLOY}.json")
    assert journal.where.endswith(f"/deploys/api/{DEPLOY}.json") and journal.where != journal.key


# ---- a real process killed in the middle of an effect ---------------------------------------------------------

_KILLED = textwrap.dedent(
    """
    import os, signal, sys
    from datetime import UTC, datetime
    from deployer.orchestrator.journal import Journal
    from deployer.orchestrator.owner import Owner
    from deployer.plan import Action
    from tests.state.stores import spec_from_arg

    store = spec_from_arg(sys.argv[1]).open(sys.argv[2])
    j = Journal.begin(store, service="api", deploy_id="d-20261126-145201-dead", config_digest="d",
                      owner=Owner.current())
    j.phase("infra")
    with j.effect(kind="compute.backendService", resource_id="bs", before={"fingerprint": "f0"},
                  precondition="f0", action=Action.UPDATE, method="compute.backendServices.patch") as fx:
        fx.done(precondition="f1")
    j.phase("candidate")
    with j.effect(kind="run.service", resource_id="svc", before={"etag": "e0"}, precondition="e0",
                  action=Action.UPDATE, method="run.UpdateService"):
        os.kill(os.getpid(), signal.SIGKILL)  # the request may or may not have reached Google
    """
)


def test_after_sigkill_mid_effect_the_journal_alone_says_what_to_do(store_spec: StoreSpec, tmp_path: Path) -> None:
    namespace = fresh_namespace()
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", _KILLED, store_spec.to_arg(), namespace], cwd=root, timeout=60)
    assert proc.returncode == -9
    state = jn.load(store_spec.open(namespace), "api", "d-20261126-145201-dead")
    assert state.status == "running" and state.phase == "candidate" and state.resume_action == "undecided"
    assert [e.effect for e in state.unknown_outcomes] == ["e2"]
    assert [(t.kind, t.pre_image, t.outcome_unknown) for t in restore_targets(state)] == [
        ("run.service", {"etag": "e0"}, True),
        ("compute.backendService", {"fingerprint": "f0"}, False),
    ]
    assert state.started.owner.pid == state.started.owner.pid and state.started.owner.pid != 0
    # and resume can pick the journal up and continue it
    resumed = Journal.open(store_spec.open(namespace), "api", "d-20261126-145201-dead")
    resumed.decision(jn.ROLLBACK, "resumed after the deployer died")
    assert resumed.state.resume_action == "rollback"
