"""``deployer history`` and ``deployer why`` as pure renderers over hand-built journals (no network)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from deployer.errors import JournalError
from deployer.orchestrator.history import (
    DeploySummary,
    duration_text,
    read_history,
    render_history,
    summarize,
)
from deployer.orchestrator.journal import fold
from deployer.orchestrator.why import explain, render_why
from deployer.plan import Action, Change, Plan
from deployer.redact import SecretMask
from deployer.state.local import LocalStateStore
from tests.orchestrator.history_support import (
    BS,
    CI,
    KEY,
    SERVICE_NAME,
    T0,
    Builder,
    emergency_rollback,
    evidence,
    good_deploy,
    rolled_back_deploy,
    text_of,
)

# ---- summaries -------------------------------------------------------------------------------------


def test_a_good_deploy_summarised() -> None:
    b = good_deploy()
    s = summarize(fold(b.records))
    assert (s.deploy_id, s.operation, s.status) == ("d-20260302-093000-a1b2", "deploy", "succeeded")
    assert s.revision == "chat-backend-03020930-a1b2" == b.revision
    assert s.previous == "chat-backend-00001-abc"  # from the finalize update only
    assert s.duration_s() == 59.0
    assert s.who == "ana@laptop"
    assert s.why is None and s.decisions == ()


def test_a_rolled_back_deploy_summarised_keeps_the_why_and_no_previous() -> None:
    s = summarize(fold(rolled_back_deploy().records))
    assert s.status == "rolled_back"
    assert s.why is not None and s.why.startswith("gate_candidate failed: candidate gate Failed")
    # the candidate update carried the LAST deploy's annotations; they are not this deploy's previous
    assert s.previous is None
    assert s.revision == "chat-backend-03021000-c3d4"
    assert s.who == "cloudbuild@worker-1 (Cloud Build b-7f3e)"
    assert s.extra["pinned_latest_to"] == ["chat-backend-00001-abc"]
    assert s.duration_s() == 40.0
    assert s.decisions == (f"rollback: {s.why}",)


def test_an_emergency_rollback_summarised_names_where_traffic_went_and_why() -> None:
    s = summarize(fold(emergency_rollback().records))
    assert (s.operation, s.status, s.revision) == ("rollback", "succeeded", "chat-backend-00001-abc")
    assert (s.reason, s.why, s.who) == ("5xx on /ws", "the last good revision from the journal", "ana@laptop")
    out = text_of(render_history, [s], service=KEY)
    row = next(line for line in out.splitlines() if line.startswith("d-20260302-103000-e5f6"))
    assert "rollback" in row and "chat-backend-00001-abc" in row and "(reason: 5xx on /ws)" in row
    expl = explain(emergency_rollback().records)
    assert [d.decision for d in expl.decisions] == ["rollback", "pin"]
    assert expl.verdict_line() == (
        "rollback done: traffic moved to chat-backend-00001-abc (the last good revision from the journal)"
    )


def test_an_infra_only_deploy_has_no_revision() -> None:
    b = Builder("d-20260302-110000-beef")
    b.after(1).phase("apply").effect("e1", "compute.backendService", BS, "compute.backendServices.patch")
    b.after(3).phase("gate_public").gate("public", "Passed", evidence("Passed", ok=10))
    b.finish("succeeded", "deployed", revision=b.revision)  # the orchestrator records the name even so
    s = summarize(fold(b.records))
    assert s.revision is None


def test_a_running_deploy_has_no_end_and_its_duration_runs_to_now() -> None:
    b = Builder("d-20260302-120000-0a0a").after(2).phase("apply").service_update("e1")
    b.after(3).phase("gate_candidate")
    s = summarize(fold(b.records))
    assert (s.status, s.finished_at) == ("running", None)
    assert s.duration_s() == 5.0  # to its last record
    assert s.duration_s(T0 + timedelta(seconds=90)) == 90.0


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.42, "0.4 s"), (40.04, "40.0 s"), (192, "3 m 12 s"), (3840, "1 h 04 m"), (None, "?")]
)
def test_durations_read_well(seconds: float | None, text: str) -> None:
    assert duration_text(seconds) == text


# ---- the reader and the table ---------------------------------------------------------------------


def test_history_is_newest_first_limited_and_lists_an_unreadable_journal(tmp_path) -> None:
    store = LocalStateStore(tmp_path)
    good_deploy().write(store)
    rolled_back_deploy().write(store)
    running = Builder("d-20260302-120000-0a0a").after(2).phase("apply")
    running.write(store)
    store.write(f"deploys/{KEY}/d-20260302-130000-dead.json", b'{"format": 1, "records": []}', if_generation=None)
    items = read_history(store, KEY)
    assert [(i.deploy_id, i.status) for i in items] == [
        ("d-20260302-130000-dead", "unreadable"),
        ("d-20260302-120000-0a0a", "running"),
        ("d-20260302-100000-c3d4", "rolled_back"),
        ("d-20260302-093000-a1b2", "succeeded"),
    ]
    assert items[0].error is not None and "corrupt" in items[0].error
    assert [i.deploy_id for i in read_history(store, KEY, limit=2)] == [
        "d-20260302-130000-dead",
        "d-20260302-120000-0a0a",
    ]


def test_the_history_table_shows_outcome_who_when_took_revision_and_why(tmp_path) -> None:
    items = [summarize(fold(rolled_back_deploy().records)), summarize(fold(good_deploy().records))]
    out = text_of(render_history, items, service=KEY, now=T0 + timedelta(hours=1))
    lines = out.splitlines()
    assert "history of chat-staging/us-central1/chat-backend (newest first)" in lines[0]
    header = lines[1].split()
    assert header == ["deploy", "op", "outcome", "started", "(UTC)", "took", "who", "revision", "why"]
    rolled = lines[2]
    assert rolled.startswith("d-20260302-100000-c3d4  deploy  rolled back  2026-03-02 10:00:00")
    assert "40.0 s" in rolled and "cloudbuild@worker-1 (Cloud Build b-7f3e)" in rolled
    assert "chat-backend-03021000-c3d4 (not kept)" in rolled and "gate_candidate failed" in rolled
    good = next(line for line in lines if line.startswith("d-20260302-093000-a1b2"))
    assert "succeeded" in good and "59.0 s" in good and "ana@laptop" in good
    assert "chat-backend-03020930-a1b2" in good and "(not kept)" not in good


def test_an_empty_history_says_so() -> None:
    assert text_of(render_history, [], service=KEY).strip() == f"no deploys of {KEY} in the journal yet"


def test_history_json_is_the_whole_summary() -> None:
    doc = summarize(fold(rolled_back_deploy().records)).to_json()
    assert json.loads(json.dumps(doc)) == doc
    assert doc["status"] == "rolled_back" and doc["duration_s"] == 40.0
    assert doc["owner"] == {"user": "cloudbuild", "host": "worker-1", "pid": 1, "build_id": "b-7f3e"}
    assert doc["started_at"] == "2026-03-02T10:00:00+00:00"
    assert doc["service"] == KEY and doc["revision"] == "chat-backend-03021000-c3d4"
    assert DeploySummary("d-20260302-093000-a1b2").to_json()["who"] == "?"


# ---- why -------------------------------------------------------------------------------------------


def test_why_times_every_phase_from_the_journal() -> None:
    expl = explain(good_deploy().records)
    assert [(p.label, p.seconds) for p in expl.phases] == [
        ("apply", 40.0),
        ("gate_candidate", 5.0),
        ("shift 50%", 1.0),
        ("gate_public 50%", 5.0),
        ("shift 100%", 2.0),
        ("gate_public 100%", 5.0),
    ]
    apply = expl.phases[0]
    assert [(e.method, e.resource, e.outcome) for e in apply.effects] == [
        ("run.services.patch", "run.service chat-backend", "applied"),
        ("compute.securityPolicies.addRule", "armor.rule chat-armor/50", "applied"),
    ]
    assert expl.verdict_line() == "kept: 3/3 gates Passed; deployed chat-backend-03020930-a1b2"
    assert expl.rolled_back == () and expl.unknown_outcomes == ()


def test_why_gives_the_gate_evidence_the_decision_and_what_was_put_back() -> None:
    expl = explain(rolled_back_deploy().records)
    by_label = {p.label: p for p in expl.phases}
    assert list(by_label) == ["apply", "gate_candidate", "rollback", "verify"]
    assert [by_label[k].seconds for k in by_label] == [30.0, 2.0, 3.0, 4.0]
    gate = by_label["gate_candidate"].gates[0]
    assert (gate.target, gate.verdict, gate.passed) == ("candidate", "Failed", False)
    assert gate.counts == {"attempted": 10, "measured": 10, "ok": 0, "failed": 10, "errors": 0}
    assert [(f.group, f.count) for f in gate.failures] == [("upgrade_refused HTTP 403", 10)]
    assert by_label["gate_candidate"].ok is False
    rollback = by_label["rollback"]
    assert [d.decision for d in rollback.decisions] == ["rollback"]
    assert [(r.resource, r.stage, r.pinned_latest_to) for r in rollback.rollback] == [
        ("compute.backendService chat-backend-bs", "done", None),
        ("run.service chat-backend", "done", "chat-backend-00001-abc"),
    ]
    assert expl.rolled_back == rollback.rollback
    verify = by_label["verify"].gates[0]
    assert (verify.verdict, verify.handshake_p50_ms, verify.handshake_p95_ms) == ("Passed", 12.0, 30.0)
    assert expl.verdict_line().startswith("rolled back: gate_candidate failed: candidate gate Failed")


def test_why_renders_a_story_a_release_engineer_can_follow() -> None:
    out = text_of(render_why, explain(rolled_back_deploy().records))
    assert out.splitlines()[0] == f"deploy d-20260302-100000-c3d4  {KEY}"
    for needle in (
        "outcome   rolled back — rolled back: every touched resource is back to its pre-image",
        "decision  rolled back: gate_candidate failed",
        "by cloudbuild@worker-1 (Cloud Build b-7f3e), took 40.0 s",
        "✗ gate_candidate",
        "gate candidate: Failed — 10/10 measured connections failed (budget 0): upgrade_refused HTTP 403 ×10",
        "connections: 10 attempted, 10 measured, 0 ok, 10 failed, 0 could not measure; handshake p50 —, p95 —",
        "failed: upgrade_refused HTTP 403 ×10",
        "probed ws://lb.example/ws (Host candidate---chat-backend.localhost)",
        "↺ rollback",
        "decision rollback: gate_candidate failed",
        "put back compute.backendService chat-backend-bs: done — customRequestHeaders back as before (patch)",
        "put back run.service chat-backend: done — traffic back to chat-backend-00001-abc 100%",
        "✓ verify",
        "handshake p50 12 ms, p95 30 ms",
        "note: LATEST was pinned to chat-backend-00001-abc",
    ):
        assert needle in out, needle


def test_why_of_a_killed_deploy_names_the_call_whose_outcome_is_unknown() -> None:
    b = Builder("d-20260302-120000-0a0a").after(2).phase("apply")
    b.effect("e1", "compute.backendService", BS, "compute.backendServices.patch", outcome="unknown")
    expl = explain(b.records)
    assert expl.summary.status == "running"
    assert expl.phases[-1].seconds is None
    assert expl.unknown_outcomes == ("e1 compute.backendService chat-backend-bs (compute.backendServices.patch)",)
    out = text_of(render_why, expl)
    assert "(unfinished)" in out and "calls whose outcome was never recorded" in out
    assert "not finished: the journal ends in apply" in out


def test_why_shows_a_failed_call_with_its_error() -> None:
    b = Builder("d-20260302-120000-0a0a").after(1).phase("apply")
    b.effect(
        "e1", "compute.backendService", BS, "compute.backendServices.patch", outcome="not_applied", error="HTTP 403"
    )
    b.after(1).finish("failed", "failed before changing anything", why="apply failed: HTTP 403")
    expl = explain(b.records)
    assert expl.phases[0].effects[0].outcome == "not_applied"
    assert (
        "compute.backendServices.patch on compute.backendService chat-backend-bs: not applied — CloudError: HTTP 403"
        in (text_of(render_why, expl))
    )


def test_why_shows_the_plan_masked_as_the_journal_keeps_it() -> None:
    env = [{"name": "API_TOKEN", "value": "tok-9f8e7d"}, {"name": "MODE", "value": "a"}]
    after = [{"name": "API_TOKEN", "value": "tok-9f8e7d"}, {"name": "MODE", "value": "b"}]
    change = Change(
        kind="run.service",
        id=SERVICE_NAME,
        action=Action.UPDATE,
        before={"template": {"containers": [{"env": env}]}},
        after={"template": {"containers": [{"env": after}]}},
        precondition="etag-1",
    )
    plan = Plan(service=SERVICE_NAME, created_at=T0, config_digest="sha256:c0ffee", changes=(change,))
    masked = plan.masked_copy(SecretMask()).model_dump(mode="json")
    expl = explain(Builder(plan=masked).records)
    assert [c.head for c in expl.plan] == ["~ update run.service chat-backend"]
    assert expl.plan[0].fields == ('~ template.containers[0].env[1].value: "a" → "b"',)
    assert "tok-9f8e7d" not in json.dumps(expl.to_json())


def test_why_json_has_every_phase_gate_and_decision() -> None:
    doc = explain(rolled_back_deploy().records).to_json()
    assert json.loads(json.dumps(doc)) == doc
    assert [p["phase"] for p in doc["phases"]] == ["apply", "gate_candidate", "rollback", "verify"]
    assert doc["phases"][1]["gates"][0]["failures"] == [
        {"group": "upgrade_refused HTTP 403", "count": 10, "meaning": "upgrade refused"}
    ]
    assert doc["decisions"][0]["decision"] == "rollback"
    assert [r["stage"] for r in doc["rolled_back"]] == ["done", "done"]
    assert doc["decision"].startswith("rolled back: ")


def test_why_shows_a_freeze_override_as_a_decision() -> None:
    b = Builder(reason="hotfix for INC-42", owner=CI)
    b.decision("override_freeze", "hotfix for INC-42", by="cloudbuild@worker-1 pid 1, Cloud Build b-7f3e", windows=[])
    b.after(1).phase("apply")
    expl = explain(b.records)
    assert expl.phases[0].label == "start" and expl.phases[0].decisions[0].decision == "override_freeze"
    out = text_of(render_why, expl)
    assert "reason    hotfix for INC-42" in out and "decision override_freeze: hotfix for INC-42" in out
    assert summarize(fold(b.records)).decisions == ("override_freeze: hotfix for INC-42",)


def test_why_refuses_a_journal_that_breaks_its_rules() -> None:
    b = good_deploy()
    with pytest.raises(JournalError):
        explain(b.records[1:])
