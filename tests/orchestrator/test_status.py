"""``deployer status`` as a pure value and renderer over observed values and hand-built journals."""

from __future__ import annotations

import dataclasses
import io
import json
from datetime import timedelta

import pytest
from rich.console import Console

from deployer.errors import UsageError
from deployer.orchestrator.history import summarize, unreadable
from deployer.orchestrator.journal import fold
from deployer.orchestrator.lock import LockInfo
from deployer.orchestrator.show import resolve_deploy_id
from deployer.orchestrator.status import LockView, PinView, build_status, render_status, traffic_rows
from deployer.plan import ANNOTATION_DEPLOY_ID, ANNOTATION_LAST_GOOD, ANNOTATION_PREVIOUS, Action, Change, Plan
from tests.orchestrator.history_support import (
    CI,
    KEY,
    SERVICE_NAME,
    T0,
    emergency_rollback,
    good_deploy,
    rolled_back_deploy,
)

LATEST = "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST"
REVISION = "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION"
NOW = T0 + timedelta(hours=1)


def service(**over: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "name": SERVICE_NAME,
        "latestReadyRevision": f"{SERVICE_NAME}/revisions/chat-backend-new",
        "latestCreatedRevision": f"{SERVICE_NAME}/revisions/chat-backend-new",
        "trafficStatuses": [
            {"type": REVISION, "revision": "chat-backend-new", "percent": 100},
            {"type": REVISION, "revision": "chat-backend-old", "tag": "previous"},
        ],
        "annotations": {
            ANNOTATION_DEPLOY_ID: "d-20260302-093000-a1b2",
            ANNOTATION_LAST_GOOD: "chat-backend-new",
            ANNOTATION_PREVIOUS: "chat-backend-old",
            "run.googleapis.com/other": "not ours",
        },
    }
    doc.update(over)
    return doc


def plan_of(*changes: Change) -> Plan:
    return Plan(service=SERVICE_NAME, created_at=T0, config_digest="sha256:c0ffee", changes=changes)


NOOP = Change(
    kind="run.service", id=SERVICE_NAME, action=Action.NOOP, before={"a": 1}, after={"a": 1}, precondition="e"
)


def text_of(status) -> str:
    buf = io.StringIO()
    render_status(status, Console(file=buf, width=300, highlight=False, color_system=None))
    return buf.getvalue()


def test_traffic_rows_resolve_latest_and_gather_tags_per_revision() -> None:
    svc = service(
        trafficStatuses=[
            {"type": LATEST, "percent": 90},
            {"type": REVISION, "revision": "chat-backend-old", "percent": 10},
            {"type": REVISION, "revision": "chat-backend-old", "tag": "previous"},
            {"type": REVISION, "revision": "chat-backend-c1", "tag": "candidate"},
        ]
    )
    assert [(r.revision, r.percent, r.tags, r.via_latest) for r in traffic_rows(svc)] == [
        ("chat-backend-new", 90, (), True),
        ("chat-backend-old", 10, ("previous",), False),
        ("chat-backend-c1", 0, ("candidate",), False),
    ]


def test_a_service_in_sync_after_a_good_deploy() -> None:
    good = summarize(fold(good_deploy().records))
    status = build_status(
        service=KEY, service_name=SERVICE_NAME, at=NOW, observed_service=service(), plan=plan_of(NOOP), history=[good]
    )
    assert status.in_sync and status.checked == 1 and status.lock.held is False
    assert status.last is good and status.last_succeeded is good
    assert status.annotations == {
        ANNOTATION_DEPLOY_ID: "d-20260302-093000-a1b2",
        ANNOTATION_LAST_GOOD: "chat-backend-new",
        ANNOTATION_PREVIOUS: "chat-backend-old",
    }
    out = text_of(status)
    lines = [line.rstrip() for line in out.splitlines()]
    assert lines[0].startswith(KEY)
    new_row = next(line for line in lines if line.strip().startswith("chat-backend-new"))
    assert "100%" in new_row and "last good (deployer)" in new_row
    old_row = next(line for line in lines if line.strip().startswith("chat-backend-old"))
    assert "0%" in old_row and "previous" in old_row and "rollback target" in old_row
    assert "d-20260302-093000-a1b2 succeeded, 2026-03-02 09:30:00Z, took 59.0 s, by ana@laptop" in out
    assert "lock  free" in out and "pin   none" in out
    assert "drift none: the 1 resources the config owns match what is live" in out


def test_after_a_rollback_the_last_deploy_says_why_and_the_last_success_is_shown_too() -> None:
    good, bad = summarize(fold(good_deploy().records)), summarize(fold(rolled_back_deploy().records))
    status = build_status(
        service=KEY,
        service_name=SERVICE_NAME,
        at=NOW,
        observed_service=service(),
        plan=plan_of(NOOP),
        history=[bad, good],
    )
    assert (status.last, status.last_succeeded) == (bad, good)
    out = text_of(status)
    assert "d-20260302-100000-c3d4 rolled back" in out and "why: gate_candidate failed" in out
    assert "last succeeded: d-20260302-093000-a1b2 succeeded" in out


def test_an_incomplete_rollback_says_what_is_still_changed_and_to_resume() -> None:
    bad = summarize(fold(rolled_back_deploy().records))
    left = ("compute.backendService chat-backend-bs: customRequestHeaders still the deploy's",)
    incomplete = dataclasses.replace(bad, status="rollback_incomplete", remaining=left)
    status = build_status(
        service=KEY,
        service_name=SERVICE_NAME,
        at=NOW,
        observed_service=service(),
        plan=plan_of(NOOP),
        history=[incomplete],
    )
    out = text_of(status)
    assert f"still changed: {left[0]}" in out
    assert "`deployer resume -c CONFIG` tries again to put back what is still changed" in out
    assert "tries again" not in text_of(dataclasses.replace(status, last=bad))


def test_after_an_emergency_rollback_it_is_the_last_and_the_last_success_is_still_a_deploy() -> None:
    good, bad = summarize(fold(good_deploy().records)), summarize(fold(rolled_back_deploy().records))
    rollback = summarize(fold(emergency_rollback().records))
    status = build_status(
        service=KEY,
        service_name=SERVICE_NAME,
        at=NOW,
        observed_service=service(),
        plan=plan_of(NOOP),
        history=[rollback, bad, good],
    )
    assert (status.last, status.last_succeeded) == (rollback, good)


def test_drift_lists_what_differs_with_secrets_masked() -> None:
    before = {"template": {"containers": [{"image": "v1", "env": [{"name": "DB_PASSWORD", "value": "hunter2"}]}]}}
    after = {"template": {"containers": [{"image": "v2", "env": [{"name": "DB_PASSWORD", "value": "s3cret!"}]}]}}
    change = Change(
        kind="run.service", id=SERVICE_NAME, action=Action.UPDATE, before=before, after=after, precondition="e"
    )
    rule = Change(
        kind="armor.rule",
        id="projects/chat-staging/global/securityPolicies/chat-armor/rules/50",
        action=Action.CREATE,
        after={"priority": 50, "action": "allow"},
        precondition="fp",
    )
    status = build_status(
        service=KEY,
        service_name=SERVICE_NAME,
        at=NOW,
        observed_service=service(),
        plan=plan_of(change, rule),
        traffic_drift="traffic is pinned to chat-backend-old 100%, but the last deploy (d-1) left ...",
    )
    assert not status.in_sync
    assert [d.head for d in status.drift] == ["~ update run.service chat-backend", "+ create armor.rule chat-armor/50"]
    assert status.drift[0].fields == (
        '~ template.containers[0].image: "v1" → "v2"',
        "~ template.containers[0].env[0].value: <redacted#1> → <redacted#2>",
    )
    out = text_of(status)
    doc = json.dumps(status.to_json())
    for secret in ("hunter2", "s3cret!"):
        assert secret not in out and secret not in doc
    assert "drift 2 of 2 resources differ from the config" in out
    assert "traffic: traffic is pinned to chat-backend-old 100%" in out
    assert status.to_json()["drift"]["changes"][1] == {
        "action": "create",
        "kind": "armor.rule",
        "resource": "projects/chat-staging/global/securityPolicies/chat-armor/rules/50",
        "fields": ["+ priority: 50", '+ action: "allow"'],
    }


def test_a_held_lock_and_an_expired_one() -> None:
    info = LockInfo(
        service=KEY,
        deploy_id="d-20260302-093000-a1b2",
        owner=CI,
        acquired_at=T0,
        heartbeat_at=T0,
        expires_at=T0 + timedelta(minutes=2),
    )
    held = LockView.of(info, T0 + timedelta(seconds=30))
    assert (held.held, held.expired, held.deploy_id) == (True, False, "d-20260302-093000-a1b2")
    status = build_status(
        service=KEY, service_name=SERVICE_NAME, at=T0, observed_service=service(), plan=plan_of(NOOP), lock=held
    )
    assert "lock  deploy d-20260302-093000-a1b2 by cloudbuild@worker-1 pid 1, Cloud Build b-7f3e" in text_of(status)
    expired = LockView.of(info, T0 + timedelta(minutes=10))
    assert expired.expired and "lease expired 480 s ago" in expired.text
    status = build_status(
        service=KEY, service_name=SERVICE_NAME, at=T0, observed_service=service(), plan=plan_of(NOOP), lock=expired
    )
    assert "`deployer resume -c CONFIG` finishes or rolls it back" in text_of(status)
    assert status.to_json()["lock"]["expired"] is True


def test_a_pin_is_shown_with_who_why_and_until_when() -> None:
    pin = PinView(
        revision="chat-backend-old",
        who="ana@laptop pid 4242",
        reason="5xx on /ws",
        at=T0,
        expires_at=T0 + timedelta(hours=4),
        rollback_id="d-20260302-093500-9999",
    )
    status = build_status(
        service=KEY, service_name=SERVICE_NAME, at=NOW, observed_service=service(), plan=plan_of(NOOP), pin=pin
    )
    out = text_of(status)
    assert "pin   traffic pinned to chat-backend-old by ana@laptop pid 4242 at 2026-03-02 09:30:00Z: 5xx on /ws" in out
    assert "(rollback d-20260302-093500-9999)" in out
    assert "deploys refuse until 2026-03-02 13:30:00Z unless `deployer unpin`" in out
    assert status.to_json()["pin"]["active"] is True
    later = build_status(
        service=KEY,
        service_name=SERVICE_NAME,
        at=T0 + timedelta(hours=5),
        observed_service=service(),
        plan=plan_of(NOOP),
        pin=pin,
    )
    assert "expired at 2026-03-02 13:30:00Z: deploys no longer refuse" in text_of(later)
    assert later.to_json()["pin"]["active"] is False


def test_a_missing_service_and_an_unreadable_journal() -> None:
    status = build_status(
        service=KEY,
        service_name=SERVICE_NAME,
        at=NOW,
        observed_service=None,
        plan=None,
        history=[unreadable("d-20260302-130000-dead", "journal x is corrupt", KEY)],
    )
    assert not status.exists and status.traffic == ()
    assert status.journal_error == "journal x is corrupt" and status.last_succeeded is None
    out = text_of(status)
    assert "the Cloud Run service does not exist" in out and "the newest journal is unreadable" in out


def test_status_json_is_complete() -> None:
    good = summarize(fold(good_deploy().records))
    doc = build_status(
        service=KEY, service_name=SERVICE_NAME, at=NOW, observed_service=service(), plan=plan_of(NOOP), history=[good]
    ).to_json()
    assert json.loads(json.dumps(doc)) == doc
    assert doc["traffic"] == [
        {"revision": "chat-backend-new", "percent": 100, "tags": [], "latest": False},
        {"revision": "chat-backend-old", "percent": 0, "tags": ["previous"], "latest": False},
    ]
    assert doc["last_deploy"]["deploy_id"] == "d-20260302-093000-a1b2"
    assert doc["lock"]["held"] is False and doc["pin"] is None
    assert doc["drift"] == {"in_sync": True, "checked": 1, "changes": [], "traffic": None, "template": None}
    assert doc["latest_ready_revision"] == "chat-backend-new"


# ---- why's deploy id ---------------------------------------------------------------------------------

IDS = ["d-20260302-100000-c3d4", "d-20260302-093000-a1b2"]


def test_why_takes_a_known_id_or_last() -> None:
    assert resolve_deploy_id(IDS, "d-20260302-093000-a1b2", KEY) == "d-20260302-093000-a1b2"
    assert resolve_deploy_id(IDS, "last", KEY) == "d-20260302-100000-c3d4"


@pytest.mark.parametrize(
    ("wanted", "ids", "message"),
    [
        ("d-20260302-093000-ffff", IDS, f"no deploy d-20260302-093000-ffff of {KEY} in the journal"),
        ("../etc", IDS, "(deploy ids look like d-YYYYMMDD-HHMMSS-xxxx)"),
        ("last", [], f"no deploys of {KEY} in the journal yet"),
    ],
)
def test_an_unknown_deploy_id_is_a_usage_error(wanted: str, ids: list[str], message: str) -> None:
    with pytest.raises(UsageError) as info:
        resolve_deploy_id(ids, wanted, KEY)
    assert info.value.exit_code == 2 and message in info.value.message
    if ids:
        assert info.value.hint is not None and "d-20260302-100000-c3d4" in info.value.hint
