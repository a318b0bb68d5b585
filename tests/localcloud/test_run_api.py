"""Cloud Run Admin API v2 through the real ``google.cloud.run_v2`` clients, over real HTTP.

Errors are checked twice: the ``google.api_core.exceptions`` class (which the REST clients pick by
HTTP status alone, clientlibs.md §3) and Google's message; for 409s also the gRPC status in the body.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from google.api_core import exceptions as gexc
from google.cloud import run_v2
from google.protobuf import field_mask_pb2

from deployer.localcloud.world import FaultRule
from tests.localcloud.run_helpers import PARENT, new_service, service_name

LATEST = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
REVISION = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
SUCCEEDED = run_v2.Condition.State.CONDITION_SUCCEEDED
FAILED = run_v2.Condition.State.CONDITION_FAILED


@pytest.fixture
def svcs(clients):
    return clients.services()


@pytest.fixture
def revs(clients):
    return clients.revisions()


@pytest.fixture
def runtime(localcloud):
    """The session's InstantRuntime; failing images are forgotten after the test."""
    rt = localcloud.world.runtime
    yield rt
    rt.failing_images.clear()


def create(svcs, service_id="chat", service=None):
    return svcs.create_service(parent=PARENT, service=service or new_service(), service_id=service_id).result()


def short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def body_status(exc: gexc.GoogleAPICallError) -> str:
    return exc.response.json()["error"]["status"]


# ---- create / get / list -------------------------------------------------------------------------


def test_create_returns_a_ready_service_with_the_defaults_real_cloud_run_fills_in(svcs):
    svc = create(svcs)
    assert svc.name == service_name("chat")
    assert svc.generation == 1 and svc.observed_generation == 1
    assert not svc.reconciling
    assert svc.terminal_condition.type_ == "Ready" and svc.terminal_condition.state == SUCCEEDED
    assert [(c.type_, c.state) for c in svc.conditions] == [
        ("RoutesReady", SUCCEEDED),
        ("ConfigurationsReady", SUCCEEDED),
    ]
    assert re.fullmatch(r".*/services/chat/revisions/chat-00001-[a-z0-9]{3}", svc.latest_created_revision)
    assert svc.latest_ready_revision == svc.latest_created_revision
    assert re.fullmatch(r"https://chat-[a-z]{10}-uc\.a\.run\.app", svc.uri)
    assert svc.urls[-1] == svc.uri and re.fullmatch(r"https://chat-\d{12}\.us-central1\.run\.app", svc.urls[0])
    assert [(t.type_, t.percent) for t in svc.traffic] == [(LATEST, 100)]
    assert [(t.type_, t.percent) for t in svc.traffic_statuses] == [(LATEST, 100)]
    assert svc.etag and svc.uid and svc.creator and svc.last_modifier
    assert svc.ingress == run_v2.IngressTraffic.INGRESS_TRAFFIC_ALL
    # Defaults as the real recording shows them.
    t = svc.template
    c = t.containers[0]
    assert [(p.container_port, p.name) for p in c.ports] == [(8080, "http1")]
    assert dict(c.resources.limits) == {"cpu": "1000m", "memory": "512Mi"} and c.resources.cpu_idle
    assert c.startup_probe.tcp_socket.port == 8080 and c.startup_probe.period_seconds == 240
    assert t.max_instance_request_concurrency == 80
    assert t.timeout == timedelta(seconds=300)
    assert t.scaling.max_instance_count == 100 and svc.scaling.max_instance_count == 100
    assert t.service_account.endswith("-compute@developer.gserviceaccount.com")


def test_get_and_list_services_with_pagination(svcs):
    for sid in ("a1", "b2", "c3"):
        create(svcs, sid)
    assert svcs.get_service(name=service_name("b2")).name == service_name("b2")
    first = svcs.list_services(request=run_v2.ListServicesRequest(parent=PARENT, page_size=2))
    assert [short(s.name) for s in first] == ["a1", "b2", "c3"]  # the pager follows next_page_token
    pages = list(svcs.list_services(request=run_v2.ListServicesRequest(parent=PARENT, page_size=2)).pages)
    assert [len(p.services) for p in pages] == [2, 1]
    assert pages[0].next_page_token and not pages[1].next_page_token


def test_get_a_missing_service_is_404_in_googles_words(svcs):
    with pytest.raises(gexc.NotFound) as info:
        svcs.get_service(name=service_name("nope"))
    assert (
        "Resource 'nope' of kind 'SERVICE' in region 'us-central1' in project 'local-project' does not exist."
        in info.value.message
    )


def test_creating_an_existing_service_is_409(svcs):
    create(svcs)
    with pytest.raises(gexc.Conflict) as info:
        svcs.create_service(parent=PARENT, service=new_service(), service_id="chat")
    assert "Resource 'chat' already exists." in info.value.message
    assert body_status(info.value) == "ALREADY_EXISTS"


@pytest.mark.parametrize("service_id", ["Chat", "1chat", "chat-", "chat_x", "a" * 50, ""])
def test_service_id_rule_uses_googles_message(svcs, service_id):
    with pytest.raises(gexc.BadRequest) as info:
        svcs.create_service(parent=PARENT, service=new_service(), service_id=service_id)
    assert info.value.message.endswith(
        "Violation in CreateServiceRequest.service_id: only lowercase, digits, and hyphens; must begin with "
        "letter, and cannot end with hyphen; must be less than 50 characters."
    )


def test_a_49_character_service_id_is_accepted(svcs):
    assert create(svcs, "a" * 49).name.endswith("/" + "a" * 49)


def test_validate_only_create_stores_nothing(svcs):
    req = run_v2.CreateServiceRequest(parent=PARENT, service=new_service(), service_id="chat", validate_only=True)
    result = svcs.create_service(request=req).result()
    assert result.name == service_name("chat")
    with pytest.raises(gexc.NotFound):
        svcs.get_service(name=service_name("chat"))


# ---- update ----------------------------------------------------------------------------------------


def test_template_change_makes_a_revision_and_traffic_change_does_not(svcs, revs):
    svc = create(svcs)
    first = svc.latest_created_revision
    svc.template.containers[0].image = "gcr.io/p/chat:2"
    svc = svcs.update_service(service=svc).result()
    second = svc.latest_created_revision
    assert svc.generation == 2 and re.fullmatch(r".*/chat-00002-[a-z0-9]{3}", second)
    assert svc.latest_ready_revision == second
    # Traffic only: pin 100% to the first revision. No revision is made.
    svc.traffic = [run_v2.TrafficTarget(type_=REVISION, revision=short(first), percent=100)]
    svc = svcs.update_service(service=svc).result()
    assert svc.generation == 3 and svc.latest_created_revision == second
    assert [(s.revision, s.percent) for s in svc.traffic_statuses] == [(short(first), 100)]
    assert [r.name for r in revs.list_revisions(parent=svc.name)] == [first, second]


def test_an_unchanged_patch_changes_nothing(svcs):
    svc = create(svcs)
    again = svcs.update_service(service=svc).result()
    assert (again.generation, again.etag, again.latest_created_revision) == (
        svc.generation,
        svc.etag,
        svc.latest_created_revision,
    )


def test_update_mask_camel_case_paths_change_only_those_fields(svcs):
    svc = create(svcs, service=new_service(max_instance_request_concurrency=50))
    patch = run_v2.Service(
        name=svc.name,
        labels={"team": "chat"},
        template=run_v2.RevisionTemplate(max_instance_request_concurrency=200),
    )
    mask = field_mask_pb2.FieldMask(paths=["labels", "template.max_instance_request_concurrency"])
    updated = svcs.update_service(service=patch, update_mask=mask).result()
    assert dict(updated.labels) == {"team": "chat"}
    assert updated.template.max_instance_request_concurrency == 200
    assert updated.template.containers[0].image == "gcr.io/p/chat:1"  # untouched by the mask
    assert updated.generation == 2


def test_update_mask_with_an_unknown_path_is_400(svcs):
    svc = create(svcs)
    mask = field_mask_pb2.FieldMask(paths=["nonsense"])
    with pytest.raises(gexc.BadRequest) as info:
        svcs.update_service(service=run_v2.Service(name=svc.name), update_mask=mask)
    assert "Violation in UpdateServiceRequest.update_mask: unknown field path 'nonsense'." in info.value.message


def test_stale_etag_is_409_aborted_and_current_etag_is_accepted(svcs):
    svc = create(svcs)
    stale = svc.etag
    svc.template.containers[0].image = "gcr.io/p/chat:2"
    svc = svcs.update_service(service=svc).result()
    assert svc.etag != stale
    svc.etag = stale
    svc.template.containers[0].image = "gcr.io/p/chat:3"
    with pytest.raises(gexc.Conflict) as info:
        svcs.update_service(service=svc)
    assert body_status(info.value) == "ABORTED"
    assert "Etag mismatch" in info.value.message
    current = svcs.get_service(name=svc.name)
    current.template.containers[0].image = "gcr.io/p/chat:3"
    assert svcs.update_service(service=current).result().generation == 3


def test_patch_of_a_missing_service_is_404_unless_allow_missing(svcs):
    with pytest.raises(gexc.NotFound):
        svcs.update_service(service=run_v2.Service(name=service_name("fresh"), template=new_service().template))
    req = run_v2.UpdateServiceRequest(
        service=run_v2.Service(name=service_name("fresh"), template=new_service().template), allow_missing=True
    )
    assert svcs.update_service(request=req).result().generation == 1


def test_validate_only_update_changes_nothing(svcs):
    svc = create(svcs)
    svc.template.containers[0].image = "gcr.io/p/chat:2"
    svcs.update_service(request=run_v2.UpdateServiceRequest(service=svc, validate_only=True)).result()
    assert svcs.get_service(name=svc.name).template.containers[0].image == "gcr.io/p/chat:1"


# ---- revisions -------------------------------------------------------------------------------------


def test_revision_names_explicit_prefix_and_reuse(svcs, revs):
    svc = create(svcs, service=new_service(revision="chat-blue"))
    assert short(svc.latest_created_revision) == "chat-blue"
    rev = revs.get_revision(name=svc.latest_created_revision)
    assert rev.service == svc.name and rev.containers[0].image == "gcr.io/p/chat:1"
    assert rev.conditions[0].type_ == "Ready" and rev.conditions[0].state == SUCCEEDED
    # Same name, same configuration: no new revision (labels on the service are not template).
    svc.labels = {"a": "b"}
    svc = svcs.update_service(service=svc).result()
    assert len(list(revs.list_revisions(parent=svc.name))) == 1
    # Same name, different configuration: Google's 409 (gcp-facts §4.2, §4.5).
    svc.template.containers[0].image = "gcr.io/p/chat:2"
    with pytest.raises(gexc.Conflict) as info:
        svcs.update_service(service=svc)
    assert "Revision named 'chat-blue' with different configuration already exists." in info.value.message


def test_a_revision_name_must_carry_the_service_prefix(svcs):
    with pytest.raises(gexc.BadRequest) as info:
        svcs.create_service(parent=PARENT, service=new_service(revision="blue"), service_id="chat")
    assert (
        "The revision name must be prefixed by the name of the enclosing Service or Configuration with a trailing -"
        in info.value.message
    )


def test_delete_revision_refuses_a_serving_revision_and_deletes_an_idle_one(svcs, revs):
    svc = create(svcs)
    first = svc.latest_created_revision
    with pytest.raises(gexc.BadRequest) as info:
        revs.delete_revision(name=first)
    assert f'Revision "{short(first)}" cannot be directly deleted because it is actively serving.' in info.value.message
    assert body_status(info.value) == "FAILED_PRECONDITION"
    svc.template.containers[0].image = "gcr.io/p/chat:2"
    svcs.update_service(service=svc).result()
    deleted = revs.delete_revision(name=first).result()
    assert deleted.name == first and deleted.delete_time
    with pytest.raises(gexc.NotFound) as missing:
        revs.get_revision(name=first)
    assert f"Resource '{short(first)}' of kind 'REVISION'" in missing.value.message


def test_delete_revision_with_a_stale_etag_is_409(svcs, revs):
    svc = create(svcs)
    svc.template.containers[0].image = "gcr.io/p/chat:2"
    first = svc.latest_created_revision
    svcs.update_service(service=svc).result()
    with pytest.raises(gexc.Conflict):
        revs.delete_revision(request=run_v2.DeleteRevisionRequest(name=first, etag="stale"))


# ---- traffic ---------------------------------------------------------------------------------------


def test_no_traffic_deploy_with_a_tag_gets_a_tag_uri(svcs):
    svc = create(svcs)
    old = short(svc.latest_ready_revision)
    svc.template.containers[0].image = "gcr.io/p/chat:2"
    svc.template.revision = "chat-green"
    svc.traffic = [
        run_v2.TrafficTarget(type_=REVISION, revision=old, percent=100),
        run_v2.TrafficTarget(type_=REVISION, revision="chat-green", percent=0, tag="green"),
    ]
    svc = svcs.update_service(service=svc).result()
    tagged = next(s for s in svc.traffic_statuses if s.tag == "green")
    assert (tagged.revision, tagged.percent) == ("chat-green", 0)
    host = svc.uri.removeprefix("https://")
    assert tagged.uri == f"https://green---{host}"
    assert [(s.revision, s.percent) for s in svc.traffic_statuses if not s.tag] == [(old, 100)]


@pytest.mark.parametrize(
    ("traffic", "message"),
    [
        (
            [run_v2.TrafficTarget(type_=LATEST, percent=90)],
            "Violation in UpdateServiceRequest.service.traffic: traffic percentages must add up to 100; "
            "they add up to 90.",
        ),
        (
            [run_v2.TrafficTarget(type_=LATEST, percent=101)],
            "Violation in UpdateServiceRequest.service.traffic[0].percent: must be between 0 and 100; got 101.",
        ),
        (
            [
                run_v2.TrafficTarget(type_=LATEST, percent=100, tag="x"),
                run_v2.TrafficTarget(type_=LATEST, percent=0, tag="x"),
            ],
            "traffic tag 'x' is used by more than one target",
        ),
        (
            [run_v2.TrafficTarget(type_=LATEST, percent=100, tag="Green")],
            "traffic tag 'Green' must be a valid DNS label",
        ),
        (
            [run_v2.TrafficTarget(type_=LATEST, percent=100, tag="t" * 43)],
            f"spec.traffic.tag: traffic tag '{'t' * 43}' and service name 'chat' together are too long. "
            "Combined traffic tag and service name cannot exceed 46 characters.",
        ),
        (
            [run_v2.TrafficTarget(type_=REVISION, percent=100)],
            "a target of type TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION must name a revision.",
        ),
    ],
)
def test_traffic_rules_answer_400_with_a_clear_message(svcs, traffic, message):
    svc = create(svcs)
    svc.traffic = traffic
    with pytest.raises(gexc.BadRequest) as info:
        svcs.update_service(service=svc)
    assert message in info.value.message


def test_a_tag_of_exactly_46_characters_with_the_service_is_accepted(svcs):
    svc = create(svcs)
    svc.traffic = [run_v2.TrafficTarget(type_=LATEST, percent=100, tag="t" * 42)]
    assert svcs.update_service(service=svc).result().traffic_statuses[0].tag == "t" * 42


def test_traffic_to_a_missing_revision_fails_the_operation_and_keeps_serving(svcs):
    svc = create(svcs)
    serving = list(svc.traffic_statuses)
    svc.traffic = [run_v2.TrafficTarget(type_=REVISION, revision="chat-nope", percent=100)]
    op = svcs.update_service(service=svc)
    with pytest.raises(gexc.InternalServerError) as info:  # gRPC 13, as real Cloud Run answers
        op.result()
    assert (
        "Revision 'chat-nope' does not exist or is deleted. Update all traffic to route to currently available "
        "revisions." in info.value.message
    )
    now = svcs.get_service(name=svc.name)
    assert list(now.traffic_statuses) == serving
    assert now.terminal_condition.state == FAILED and now.observed_generation == 1 and now.generation == 2


# ---- field limits ----------------------------------------------------------------------------------


def _container(**kw):
    return run_v2.Container(image="gcr.io/p/chat:1", **kw)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (
            {"timeout": timedelta(seconds=3601)},
            "Violation in CreateServiceRequest.service.template.timeout: maximum allowed time is one hour.",
        ),
        ({"timeout": timedelta(milliseconds=500)}, "minimum allowed time is one second."),
        ({"max_instance_request_concurrency": 1001}, "must be between 0 and 1000; got 1001."),
        (
            {"containers": [_container(resources=run_v2.ResourceRequirements(limits={"cpu": "3"}, cpu_idle=True))]},
            "service.template.containers[0].resources.limits.cpu: '3' is not supported",
        ),
        (
            {
                "containers": [
                    _container(resources=run_v2.ResourceRequirements(limits={"cpu": "500m"}, cpu_idle=True))
                ],
                "max_instance_request_concurrency": 80,
            },
            "Maximum concurrency must be set to 1 when CPU is less than 1",
        ),
        (
            {"containers": [_container(resources=run_v2.ResourceRequirements(limits={"cpu": "500m"}))]},
            "cpu_idle must be true",
        ),
        (
            {"containers": [_container(resources=run_v2.ResourceRequirements(limits={"cpu": "4", "memory": "1Gi"}))]},
            "Setting 4 CPU requires at least 2Gi of memory.",
        ),
        (
            {"containers": [_container(ports=[run_v2.ContainerPort(container_port=8080, name="h3")])]},
            "'h3' is not supported; allowed values are http1, h2c.",
        ),
        (
            {
                "containers": [
                    _container(ports=[run_v2.ContainerPort(container_port=1), run_v2.ContainerPort(container_port=2)])
                ]
            },
            "Violation in CreateServiceRequest.service.template.containers[0].ports: ports should contain 0 or 1 port.",
        ),
        (
            {"containers": [_container(env=[run_v2.EnvVar(name="A", value="1"), run_v2.EnvVar(name="A", value="2")])]},
            "environment variable 'A' is defined more than once.",
        ),
        (
            {"containers": [_container(env=[run_v2.EnvVar(name="PORT", value="9000")])]},
            "template.containers[0].env: The following reserved env names were provided: PORT. These values are "
            "automatically set by the system.",
        ),
        (
            {"labels": {"run.googleapis.com/cpu-throttling": "false"}},
            "does not support labels with `run.googleapis.com`",
        ),
        (
            {"containers": [run_v2.Container(image="Not An Image")]},
            "containers[0].image: must be a container image path in the form [hostname/]repo-path[:tag and/or @digest]",
        ),
    ],
)
def test_template_limits_answer_400_with_a_clear_message(svcs, template, message):
    tmpl = {"containers": [_container()], **template}
    with pytest.raises(gexc.BadRequest) as info:
        svcs.create_service(
            parent=PARENT, service=run_v2.Service(template=run_v2.RevisionTemplate(**tmpl)), service_id="chat"
        )
    assert message in info.value.message
    assert body_status(info.value) == "INVALID_ARGUMENT"


def test_websocket_friendly_limits_are_accepted(svcs):
    tmpl = run_v2.RevisionTemplate(
        containers=[_container(resources=run_v2.ResourceRequirements(limits={"cpu": "500m"}, cpu_idle=True))],
        timeout=timedelta(seconds=3600),
        max_instance_request_concurrency=1,
        session_affinity=True,
    )
    svc = create(svcs, service=run_v2.Service(template=tmpl))
    assert svc.template.timeout == timedelta(seconds=3600) and svc.template.session_affinity
    big = create(svcs, "big", service=new_service(max_instance_request_concurrency=1000))
    assert big.template.max_instance_request_concurrency == 1000


def test_service_labels_with_a_reserved_prefix_are_rejected(svcs):
    svc = new_service()
    svc.annotations = {"serving.knative.dev/creator": "me"}
    with pytest.raises(gexc.BadRequest) as info:
        svcs.create_service(parent=PARENT, service=svc, service_id="chat")
    assert "Violation in CreateServiceRequest.service.annotations" in info.value.message


# ---- delete ----------------------------------------------------------------------------------------


def test_delete_service_returns_it_and_then_it_is_gone(svcs, revs):
    svc = create(svcs)
    with pytest.raises(gexc.Conflict):
        svcs.delete_service(request=run_v2.DeleteServiceRequest(name=svc.name, etag="stale"))
    deleted = svcs.delete_service(request=run_v2.DeleteServiceRequest(name=svc.name, etag=svc.etag)).result()
    assert deleted.name == svc.name and deleted.delete_time and deleted.expire_time
    assert deleted.generation == 2
    with pytest.raises(gexc.NotFound):
        svcs.get_service(name=svc.name)
    with pytest.raises(gexc.NotFound):
        revs.get_revision(name=svc.latest_created_revision)


# ---- operations ------------------------------------------------------------------------------------


def test_operations_get_list_and_wait(svcs):
    op = svcs.create_service(parent=PARENT, service=new_service(), service_id="chat")
    name = op.operation.name
    assert re.fullmatch(r"projects/local-project/locations/us-central1/operations/[0-9a-f-]{36}", name)
    op.result()
    got = svcs.get_operation(request={"name": name})
    assert got.done and got.response.type_url == "type.googleapis.com/google.cloud.run.v2.Service"
    listed = svcs.list_operations(request={"name": PARENT})
    assert name in [o.name for o in listed.operations]
    waited = svcs.wait_operation(request={"name": name, "timeout": {"seconds": 1}})
    assert waited.done
    with pytest.raises(gexc.NotFound):
        svcs.get_operation(request={"name": f"{PARENT}/operations/missing"})


def test_an_injected_operation_fault_ends_the_operation_with_the_grpc_error(localcloud, svcs):
    svc = create(svcs)
    localcloud.world.faults.add(FaultRule(method="run.services.patch", status=409, kind="operation", message="boom"))
    svc.template.containers[0].image = "gcr.io/p/chat:2"
    with pytest.raises(gexc.Aborted) as info:  # HTTP 409 -> ABORTED -> gRPC 10
        svcs.update_service(service=svc).result()
    assert "boom" in info.value.message
    now = svcs.get_service(name=svc.name)
    assert now.latest_ready_revision == svc.latest_ready_revision  # traffic did not move


def test_a_failing_revision_keeps_traffic_where_it_was(svcs, revs, runtime):
    runtime.failing_images["gcr.io/p/chat:bad"] = ("CONTAINER_MISSING", "Image 'gcr.io/p/chat:bad' not found.")
    svc = create(svcs)
    good = svc.latest_ready_revision
    svc.template.containers[0].image = "gcr.io/p/chat:bad"
    with pytest.raises(gexc.FailedPrecondition) as info:  # gRPC 9
        svcs.update_service(service=svc).result()
    now = svcs.get_service(name=svc.name)
    bad = now.latest_created_revision
    assert bad != good and now.latest_ready_revision == good
    assert (
        f"Revision '{short(bad)}' is not ready and cannot serve traffic. Image 'gcr.io/p/chat:bad' not found."
        in info.value.message
    )
    assert now.terminal_condition.state == FAILED
    assert now.terminal_condition.reason == run_v2.Condition.CommonReason.REVISION_FAILED
    assert now.observed_generation == 1 and now.generation == 2
    assert [(s.type_, s.percent) for s in now.traffic_statuses] == [(LATEST, 100)]
    ready = revs.get_revision(name=bad).conditions[0]
    assert (ready.type_, ready.state, ready.reason) == (
        "Ready",
        FAILED,
        run_v2.Condition.CommonReason.CONTAINER_MISSING,
    )
    assert ready.message == "Image 'gcr.io/p/chat:bad' not found."
    # A good image again recovers the service.
    now.template.containers[0].image = "gcr.io/p/chat:3"
    fixed = svcs.update_service(service=now).result()
    assert fixed.terminal_condition.state == SUCCEEDED and fixed.latest_ready_revision == fixed.latest_created_revision
    assert fixed.observed_generation == fixed.generation == 3
