"""The emergency rollback's pure parts (``rollback_target``): which revision (``choose_target``), the
traffic and template it writes, and when an update already landed. The command runs in tests/e2e."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from deployer.errors import CloudError
from deployer.orchestrator import traffic
from deployer.orchestrator.journal import Journal, JournalState, restore_targets
from deployer.orchestrator.owner import Owner
from deployer.orchestrator.rollback_target import (
    Target,
    already_moved,
    choose_target,
    rollback_body,
    rollback_traffic,
    template_from_revision,
    want_of,
)
from deployer.plan import (
    ANNOTATION_DEPLOY_ID,
    ANNOTATION_LAST_GOOD,
    ANNOTATION_PREVIOUS,
    BACKEND_SERVICE,
    RUN_SERVICE,
    Action,
)
from deployer.state.local import LocalStateStore

T0 = datetime(2026, 11, 26, 14, 52, 1, tzinfo=UTC)
SVC = "projects/p/locations/us-central1/services/api"
OLD, NEW, OLDER = "api-00001-abc", "api-11261452-a1b2", "api-00000-zzz"
LATEST = {"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 100}


def rev(name: str, percent: int = 0, tag: str = "") -> dict[str, Any]:
    return traffic.target(name, percent, tag)


def service(traffic_: list[dict[str, Any]], latest: str, **extra: Any) -> dict[str, Any]:
    statuses = []
    for t in traffic_:
        s = dict(t)
        if "revision" not in s:
            s = {**s}
        statuses.append(s)
    return {
        "name": SVC,
        "etag": '"e"',
        "template": {"revision": latest, "containers": [{"image": f"img:{latest}"}]},
        "traffic": traffic_,
        "trafficStatuses": statuses,
        "latestReadyRevision": f"{SVC}/revisions/{latest}",
        "latestCreatedRevision": f"{SVC}/revisions/{latest}",
        **extra,
    }


PRE = service([LATEST], OLD, labels={"env": "staging"})
LIVE = service([rev(NEW, 100), rev(OLD, 0, "previous")], NEW, labels={"env": "staging", "owner": "ops"})


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def deploy_journal(
    tmp_path: Path, deploy_id: str, *, touch_service: bool = True, finish: str | None = None
) -> JournalState:
    j = Journal.begin(
        LocalStateStore(tmp_path),
        service="p/r/api",
        deploy_id=deploy_id,
        config_digest="",
        owner=Owner(user="ci", host="h", pid=1),
        clock=Clock(),
    )
    kind, rid, before = (RUN_SERVICE, SVC, PRE) if touch_service else (BACKEND_SERVICE, "bs", {"name": "bs"})
    eid = j.pre_image(kind=kind, resource_id=rid, resource=before, precondition="x")
    j.effect_started(eid, action=Action.UPDATE, method="m")
    if finish == "failed":  # it changed nothing: its only call was refused
        j.effect_failed(eid, CloudError("refused", status=403), outcome="not_applied")
    else:
        j.effect_done(eid)
    if finish == "rolled_back":
        j.decision("rollback", "a gate failed")
        for t in restore_targets(j.state):
            j.rollback_step(t, "done")
    if finish:
        j.finish(finish, finish)  # type: ignore[arg-type]
    return j.state


# ---- choose_target ---------------------------------------------------------------------------------------


def test_to_names_the_revision() -> None:
    target = choose_target(LIVE, [], to_revision=f"{SVC}/revisions/{OLDER}")
    assert (target.revision, target.source, target.pre_image) == (OLDER, "--to", None)


def test_the_journal_of_a_deploy_gives_the_revision_that_served_before_it(tmp_path: Path) -> None:
    running = deploy_journal(tmp_path, "d-20261126-145201-aaaa")  # preempted in flight, or died
    target = choose_target(LIVE, [running])
    assert (target.revision, target.source, target.journal_id) == (OLD, "journal", "d-20261126-145201-aaaa")
    assert target.pre_image == PRE


def test_deploys_that_changed_nothing_are_skipped(tmp_path: Path) -> None:
    good = deploy_journal(tmp_path, "d-20261126-140000-aaaa", finish="succeeded")
    undone = deploy_journal(tmp_path, "d-20261126-145000-bbbb", finish="rolled_back")
    failed = deploy_journal(tmp_path, "d-20261126-145500-cccc", finish="failed")
    target = choose_target(LIVE, [failed, undone, good])
    assert target.journal_id == "d-20261126-140000-aaaa" and target.revision == OLD


def test_an_infra_only_deploy_keeps_what_serves(tmp_path: Path) -> None:
    infra = deploy_journal(tmp_path, "d-20261126-145201-aaaa", touch_service=False, finish="succeeded")
    target = choose_target(LIVE, [infra])
    assert (target.revision, target.pre_image) == (NEW, None)
    assert "did not change the service" in target.why


def test_a_second_rollback_goes_where_the_first_went(tmp_path: Path) -> None:
    j = Journal.begin(
        LocalStateStore(tmp_path),
        service="p/r/api",
        deploy_id="d-20261126-150000-dddd",
        config_digest="",
        owner=Owner(user="oncall", host="h", pid=2),
        operation="rollback",
        clock=Clock(),
    )
    j.decision("rollback", "5xx", to_revision=OLD)
    j.finish("succeeded", "moved")
    older_deploy = deploy_journal(tmp_path, "d-20261126-140000-aaaa", finish="succeeded")
    target = choose_target(service([rev(OLD, 100)], OLD), [j.state, older_deploy])
    assert (target.revision, target.journal_id) == (OLD, "d-20261126-150000-dddd")


def test_without_a_journal_the_annotations_then_the_previous_tag_then_the_revisions() -> None:
    annotated = {**LIVE, "annotations": {ANNOTATION_LAST_GOOD: NEW, ANNOTATION_PREVIOUS: OLD}}
    assert choose_target(annotated, []).source == "annotations"
    assert choose_target(annotated, []).revision == OLD
    tagged = choose_target(LIVE, [])
    assert (tagged.revision, tagged.source) == (OLD, "previous tag")
    bare = service([rev(NEW, 100)], NEW)
    assert choose_target(bare, []) == Target(None, "previous revision", why="needs the service's revisions")
    ready = [{"type": "Ready", "state": "CONDITION_SUCCEEDED"}]
    revisions: list[dict[str, Any]] = [
        {"name": f"{SVC}/revisions/{NEW}", "createTime": "2026-11-26T14:00:00Z", "conditions": ready},
        {"name": f"{SVC}/revisions/{OLD}", "createTime": "2026-11-20T10:00:00Z", "conditions": ready},
        {"name": f"{SVC}/revisions/{OLDER}", "createTime": "2026-11-01T10:00:00Z", "conditions": ready},
        {"name": f"{SVC}/revisions/api-broken", "createTime": "2026-11-25T10:00:00Z", "conditions": []},
    ]
    found = choose_target(bare, [], revisions=revisions)
    assert (found.revision, found.source) == (OLD, "previous revision")
    assert choose_target(bare, [], revisions=revisions[:1]).revision is None


# ---- what is written -------------------------------------------------------------------------------------


def test_a_pre_image_that_served_one_revision_is_written_back_exactly() -> None:
    out = rollback_traffic([LATEST, rev(OLDER, 0, "v0")], OLD, OLD)
    assert out == [rev(OLD, 100), rev(OLDER, 0, "v0")]  # LATEST pinned, tags as they were


def test_a_split_becomes_everything_on_the_target_with_the_tags_kept() -> None:
    out = rollback_traffic([rev(NEW, 50, "candidate"), rev(OLD, 50)], NEW, OLD)
    assert out == [rev(OLD, 100), rev(NEW, 0, "candidate")]
    assert want_of(out) == [traffic.Served(OLD, 100), traffic.Served(NEW, 0, "candidate")]


def test_the_body_restores_the_pre_image_keeping_labels_and_marking_the_rollback() -> None:
    target = Target(OLD, "journal", journal_id="d-x", pre_image=PRE)
    body, written = rollback_body(LIVE, target, template=PRE["template"], rollback_id="d-20261126-150000-dddd")
    assert written == [rev(OLD, 100)]
    assert body["labels"] == {"env": "staging", "owner": "ops"}  # as they are now
    assert body["annotations"] == {ANNOTATION_DEPLOY_ID: "d-20261126-150000-dddd", ANNOTATION_LAST_GOOD: OLD}
    assert body["template"] == PRE["template"]
    assert not {"etag", "trafficStatuses", "latestReadyRevision"} & set(body)


def test_a_template_from_a_revision_drops_system_labels_and_keeps_its_name() -> None:
    revision = {
        "name": f"{SVC}/revisions/{OLD}",
        "containers": [{"image": "img:1"}],
        "labels": {"run.googleapis.com/startupProbeType": "Default", "app": "chat"},
        "annotations": {"run.googleapis.com/operation-id": "x"},
        "maxInstanceRequestConcurrency": 80,
        "gpuZonalRedundancyDisabled": False,  # rendered by the revision, never set in its template
        "createTime": "t",
        "conditions": [],
    }
    assert template_from_revision(revision) == {
        "labels": {"app": "chat"},
        "containers": [{"image": "img:1"}],
        "maxInstanceRequestConcurrency": 80,
        "revision": OLD,
    }


def test_already_moved_means_this_rollbacks_update_is_live() -> None:
    written = [rev(OLD, 100)]
    done = service(written, OLD, annotations={ANNOTATION_DEPLOY_ID: "d-r"})
    assert already_moved(done, written, {"revision": OLD}, "d-r")
    assert not already_moved(done, written, {"revision": OLD}, "d-other")
    assert not already_moved({**done, "reconciling": True}, written, {"revision": OLD}, "d-r")
    assert not already_moved(LIVE, written, {"revision": OLD}, "d-r")
