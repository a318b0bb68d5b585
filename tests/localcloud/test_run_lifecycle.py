"""How Cloud Run changes unfold in time: operation durations on an injected clock, revisions that
become ready when the runtime says so, traffic that moves only when a rollout finishes, the state
layout the runtime and load balancer read, URIs, seeding and reset.

These tests run their own local cloud with a fake clock and a runtime the test drives (a real
``RevisionRuntime`` implementation, not a mock of any SDK)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from google.api_core import exceptions as gexc
from google.cloud import run_v2
from hypothesis import given, settings
from hypothesis import strategies as st

from deployer.gcp.clients import Clients
from deployer.localcloud.api import control
from deployer.localcloud.api.common import ApiError
from deployer.localcloud.api.run import models
from deployer.localcloud.server import LocalCloud
from deployer.localcloud.world import InstantRuntime, Readiness, RevisionState, World
from tests.localcloud.run_helpers import PARENT, FakeClock, http, new_service, service_name

LATEST = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
REVISION = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION


class DrivenRuntime:
    """A RevisionRuntime whose revisions stay pending until the test settles them (or ``auto``)."""

    def __init__(self) -> None:
        self.auto: Readiness | None = Readiness.READY
        self.states: dict[str, RevisionState] = {}
        self.started: list[tuple[run_v2.Revision, run_v2.Service]] = []
        self.stopped: list[str] = []

    def start(self, revision: run_v2.Revision, service: run_v2.Service) -> None:
        self.started.append((revision, service))
        self.states[revision.name] = RevisionState(self.auto or Readiness.PENDING)

    def state(self, revision_name: str) -> RevisionState:
        return self.states.get(revision_name, RevisionState(Readiness.PENDING))

    def stop(self, revision_name: str) -> None:
        self.stopped.append(revision_name)

    def close(self) -> None:
        pass

    def settle(self, name: str, readiness: Readiness, reason: str = "", message: str = "") -> None:
        self.states[name] = RevisionState(readiness, reason, message)


@pytest.fixture(scope="module")
def cloud() -> Iterator[LocalCloud]:
    world = World(seed=3, clock=FakeClock(), runtime=DrivenRuntime())
    with LocalCloud(world=world) as lc:
        yield lc


@pytest.fixture
def env(cloud):
    """(cloud, clock, runtime, services client), fresh for each test."""
    cloud.world.reset(seed=3)
    runtime = DrivenRuntime()
    cloud.world.runtime = runtime
    cloud.world.lb_url = None
    clients = Clients(endpoint=cloud.endpoint)
    return cloud, cloud.world.clock, runtime, clients.services()


def state(cloud) -> models.State:
    return cloud.world.apis["run"]


def test_an_operation_ends_only_after_its_configured_duration(env):
    cloud, clock, _runtime, svcs = env
    cloud.world.faults.operation_seconds["run"] = 30
    op = svcs.create_service(parent=PARENT, service=new_service(), service_id="chat")
    assert not op.done()
    svc = svcs.get_service(name=service_name("chat"))
    assert svc.reconciling and svc.terminal_condition.state == run_v2.Condition.State.CONDITION_PENDING
    clock.advance(29.9)
    assert not op.done()
    clock.advance(0.1)
    assert op.done()
    assert op.result().observed_generation == 1


def test_per_method_duration_overrides_the_api_default(env):
    cloud, clock, _runtime, svcs = env
    cloud.world.faults.operation_seconds.update({"run": 100, "run.services.create": 1})
    op = svcs.create_service(parent=PARENT, service=new_service(), service_id="chat")
    clock.advance(1)
    assert op.done()


def test_an_operation_waits_for_the_runtime_to_report_the_revision(env):
    _cloud, _clock, runtime, svcs = env
    runtime.auto = None
    op = svcs.create_service(parent=PARENT, service=new_service(), service_id="chat")
    assert not op.done()
    ((revision, service),) = runtime.started
    assert revision.service == service.name == service_name("chat")
    assert revision.containers[0].image == "gcr.io/p/chat:1" and revision.containers[0].ports[0].container_port == 8080
    assert revision.timeout.total_seconds() == 300 and revision.max_instance_request_concurrency == 80
    pending = svcs.get_service(name=service.name)
    assert pending.reconciling and not pending.traffic_statuses
    runtime.settle(revision.name, Readiness.READY)
    assert op.done() and op.result().latest_ready_revision == revision.name


def test_traffic_moves_only_when_the_rollout_finishes(env):
    cloud, clock, runtime, svcs = env
    svc = svcs.create_service(parent=PARENT, service=new_service(), service_id="chat").result()
    first = svc.latest_ready_revision
    cloud.world.faults.operation_seconds["run"] = 10
    svc.template.containers[0].image = "gcr.io/p/chat:2"
    op = svcs.update_service(service=svc)
    second = runtime.started[-1][0].name
    live = state(cloud).services[svc.name]
    assert live.latest_ready_revision == first
    assert [(s.type_, s.revision, s.percent) for s in live.traffic_statuses] == [(LATEST, first.rsplit("/", 1)[1], 100)]
    assert state(cloud).revisions[second].conditions[0].type_ == "Ready"
    clock.advance(10)
    state(cloud).reconcile()  # what the runtime may call
    live = state(cloud).services[svc.name]
    assert live.latest_ready_revision == second
    assert [s.revision for s in live.traffic_statuses] == [second.rsplit("/", 1)[1]]
    assert op.result().generation == 2


def test_a_newer_change_supersedes_a_pending_one_and_both_operations_end_together(env):
    cloud, clock, _runtime, svcs = env
    svc = svcs.create_service(parent=PARENT, service=new_service(), service_id="chat").result()
    cloud.world.faults.operation_seconds["run"] = 10
    svc.template.containers[0].image = "gcr.io/p/chat:2"
    first_op = svcs.update_service(service=svc)
    clock.advance(5)
    svc = svcs.get_service(name=svc.name)
    svc.template.containers[0].image = "gcr.io/p/chat:3"
    second_op = svcs.update_service(service=svc)
    clock.advance(5)
    assert not first_op.done() and not second_op.done()
    clock.advance(5)
    assert first_op.done() and second_op.done()
    assert first_op.result().generation == second_op.result().generation == 3
    assert first_op.result().template.containers[0].image == "gcr.io/p/chat:3"


def test_deleting_a_service_aborts_its_pending_operation_and_stops_its_revisions(env):
    cloud, _clock, runtime, svcs = env
    svc = svcs.create_service(parent=PARENT, service=new_service(), service_id="chat").result()
    cloud.world.faults.operation_seconds["run.services.patch"] = 60
    svc.template.containers[0].image = "gcr.io/p/chat:2"
    pending = svcs.update_service(service=svc)
    svcs.delete_service(name=svc.name).result()
    with pytest.raises(gexc.Aborted):
        pending.result()
    assert sorted(runtime.stopped) == sorted(r.name for r, _ in runtime.started)


def test_wait_gives_up_at_its_timeout_when_the_operation_is_not_done(env):
    cloud, clock, _runtime, _svcs = env
    cloud.world.faults.operation_seconds["run"] = 30
    _, op = http(cloud, "POST", f"/v2/{PARENT}/services?serviceId=chat", {"template": {"containers": [{"image": "x"}]}})
    t0 = time.monotonic()
    status, waited = http(cloud, "POST", f"/v2/{op['name']}:wait", {"timeout": "0.2s"})
    assert status == 200 and "done" not in waited and time.monotonic() - t0 >= 0.2
    clock.advance(30)
    _, waited = http(cloud, "POST", f"/v2/{op['name']}:wait", {"timeout": "5s"})
    assert waited["done"] is True


# ---- URIs ------------------------------------------------------------------------------------------


def test_uris_point_at_the_local_load_balancer_when_it_runs(env):
    cloud, _clock, _runtime, svcs = env
    cloud.world.lb_url = "http://127.0.0.1:8080"
    svc = svcs.create_service(parent=PARENT, service=new_service(), service_id="chat").result()
    assert svc.uri == "http://chat.localhost:8080" and list(svc.urls) == [svc.uri]
    svc.traffic = [run_v2.TrafficTarget(type_=LATEST, percent=100, tag="blue")]
    svc = svcs.update_service(service=svc).result()
    assert svc.traffic_statuses[0].uri == "http://blue---chat.localhost:8080"
    cloud.world.lb_url = "http://127.0.0.1:9090"
    moved = svcs.get_service(name=svc.name)
    assert moved.uri == "http://chat.localhost:9090"
    assert moved.traffic_statuses[0].uri == "http://blue---chat.localhost:9090"


def test_google_uris_keep_their_hash_per_service(env):
    _cloud, _clock, _runtime, svcs = env
    svc = svcs.create_service(parent=PARENT, service=new_service(), service_id="chat").result()
    svc.template.containers[0].image = "gcr.io/p/chat:2"
    assert svcs.update_service(service=svc).result().uri == svc.uri


# ---- the state contract ----------------------------------------------------------------------------


def test_state_layout_the_runtime_and_load_balancer_read(env):
    cloud, _clock, _runtime, svcs = env
    svc = svcs.create_service(parent=PARENT, service=new_service(session_affinity=True), service_id="chat").result()
    run = cloud.world.apis["run"]
    assert isinstance(run, models.State)
    assert list(run.services) == [service_name("chat")]
    assert isinstance(run.services[svc.name], run_v2.Service)
    (rev_name,) = run.revisions
    rev = run.revisions[rev_name]
    assert rev_name == svc.latest_created_revision and isinstance(rev, run_v2.Revision)
    assert rev.service == svc.name and rev.session_affinity and rev.scaling.max_instance_count == 100
    assert rev.conditions[0].type_ == "Ready"
    assert rev.conditions[0].state == run_v2.Condition.State.CONDITION_SUCCEEDED
    statuses = run.services[svc.name].traffic_statuses
    assert [(s.revision, s.percent) for s in statuses] == [(rev_name.rsplit("/", 1)[1], 100)]
    before = run.services[svc.name]
    svc.labels = {"x": "y"}
    svcs.update_service(service=svc).result()
    assert run.services[svc.name] is not before and not before.labels  # replaced, never changed in place


def test_reset_forgets_everything_and_stops_revisions(env):
    cloud, _clock, runtime, svcs = env
    svcs.create_service(parent=PARENT, service=new_service(), service_id="chat").result()
    cloud.world.reset()
    run = state(cloud)
    assert not run.services and not run.revisions and not run.operations
    assert runtime.stopped == [runtime.started[0][0].name]


# ---- seeding -----------------------------------------------------------------------------------------

SEED = {
    "project": "seeded",
    "region": "europe-west1",
    "services": [
        {
            "name": "chat",
            "template": {
                "containers": [{"image": "gcr.io/p/chat:1", "ports": [{"containerPort": 9000}]}],
                "timeout": "3600s",
                "maxInstanceRequestConcurrency": 1000,
                "sessionAffinity": True,
            },
            "ingress": "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER",
        }
    ],
}


def test_seed_creates_ready_services_through_the_api_rules(env):
    cloud, _clock, _runtime, svcs = env
    cloud.world.faults.operation_seconds["run"] = 1000  # seeding does not wait for operations
    control.seed_world(cloud.world, SEED)
    svc = svcs.get_service(name="projects/seeded/locations/europe-west1/services/chat")
    assert not svc.reconciling and svc.latest_ready_revision
    assert svc.template.containers[0].startup_probe.tcp_socket.port == 9000
    assert svc.ingress == run_v2.IngressTraffic.INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER
    assert svc.uri.endswith("-ew.a.run.app")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "Chat", "template": {"containers": [{"image": "x"}]}}, "only lowercase"),
        ({"name": "chat", "template": {"containers": [{"image": "x"}]}, "bogus": 1}, 'Unknown name "bogus"'),
        ({"name": "chat", "template": {"timeout": "7200s", "containers": [{"image": "x"}]}}, "one hour"),
    ],
)
def test_a_bad_seed_is_a_400_naming_the_entry(env, entry, message):
    cloud = env[0]
    with pytest.raises(ApiError) as info:
        control.seed_world(cloud.world, {"services": [entry]})
    assert info.value.status == 400 and "services[0]" in info.value.message and message in info.value.message


# ---- generation and etag preconditions, as properties (no HTTP) ------------------------------------

ACTIONS = st.lists(st.sampled_from(["image", "traffic", "label", "same", "stale"]), min_size=1, max_size=12)


@settings(max_examples=40, deadline=None)
@given(ACTIONS)
def test_generation_and_etag_move_exactly_with_the_spec(actions):
    world = World(seed=1, clock=FakeClock(), runtime=InstantRuntime())
    run = models.install(world)
    name = service_name("chat")
    run.create_service(PARENT, "chat", new_service())
    run.reconcile()
    seen_etags = {run.get_service(name).etag}
    for i, action in enumerate(actions):
        before = run.get_service(name)
        body = run_v2.Service(before)
        if action == "image":
            body.template.containers[0].image = f"gcr.io/p/chat:v{i}"
        elif action == "traffic":
            body.traffic = [run_v2.TrafficTarget(type_=LATEST, percent=100, tag=f"t{i}")]
        elif action == "label":
            body.labels = {"step": str(i)}
        elif action == "stale":
            body.etag = "stale-etag"
            body.labels = {"step": str(i)}
            with pytest.raises(ApiError) as info:
                run.update_service(name, body)
            assert info.value.status == 409 and info.value.grpc_status == "ABORTED"
            assert run.get_service(name).etag == before.etag
            continue
        run.update_service(name, body)
        after = run.get_service(name)
        if action == "same":
            assert (after.generation, after.etag) == (before.generation, before.etag)
        else:
            assert after.generation == before.generation + 1
            assert after.etag not in seen_etags
            assert after.observed_generation == after.generation
            seen_etags.add(after.etag)
        revisions = {r for r in run.revisions if r.startswith(name)}
        assert len(revisions) == 1 + sum(a == "image" for a in actions[: i + 1])
