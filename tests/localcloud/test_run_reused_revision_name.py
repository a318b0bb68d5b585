"""A template that names an existing revision with the same configuration makes no new revision and
makes that revision the latest created again (what a deploy's rollback relies on)."""

from __future__ import annotations

import pytest
from google.api_core import exceptions as gexc
from google.cloud import run_v2

from tests.localcloud.run_helpers import PARENT, new_service

REVISION = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
SUCCEEDED = run_v2.Condition.State.CONDITION_SUCCEEDED


@pytest.fixture
def runtime(localcloud):
    rt = localcloud.world.runtime
    yield rt
    rt.failing_images.clear()


def short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def test_writing_back_the_old_template_with_its_revision_name_recovers_from_a_failed_revision(clients, runtime):
    svcs, revs = clients.services(), clients.revisions()
    runtime.failing_images["gcr.io/p/chat:bad"] = ("CONTAINER_MISSING", "Image 'gcr.io/p/chat:bad' not found.")
    before = svcs.create_service(parent=PARENT, service=new_service(), service_id="chat").result()
    good = short(before.latest_created_revision)
    bad = run_v2.Service(before)
    bad.template.containers[0].image = "gcr.io/p/chat:bad"
    bad.template.revision = "chat-bad"
    bad.traffic = [
        run_v2.TrafficTarget(type_=REVISION, revision=good, percent=100),
        run_v2.TrafficTarget(type_=REVISION, revision="chat-bad", percent=0, tag="candidate"),
    ]
    with pytest.raises(gexc.FailedPrecondition):
        svcs.update_service(service=bad).result()
    failed = svcs.get_service(name=before.name)
    assert short(failed.latest_created_revision) == "chat-bad"

    restore = run_v2.Service(before)
    restore.etag = failed.etag
    restore.template.revision = good
    restore.traffic = [run_v2.TrafficTarget(type_=REVISION, revision=good, percent=100)]
    done = svcs.update_service(service=restore).result()
    assert done.terminal_condition.state == SUCCEEDED
    assert short(done.latest_created_revision) == good and short(done.latest_ready_revision) == good
    assert sorted(short(r.name) for r in revs.list_revisions(parent=before.name)) == sorted([good, "chat-bad"])
    assert [(s.revision, s.percent) for s in done.traffic_statuses] == [(good, 100)]
