"""backendServices through the real google-cloud-compute client: CRUD, fingerprints, requestId,
serverless-NEG and custom-header rules (gcp-facts §2, §5)."""

from __future__ import annotations

import re
import uuid

import pytest
from google.api_core import exceptions
from google.cloud import compute_v1

from deployer import facts
from tests.localcloud.compute_support import BS_URL, NEG_URL, OPERATION_NAME, PROJECT, SP_URL, seed


@pytest.fixture
def bs(localcloud, clients):
    seed(localcloud)
    return clients.backend_services()


def fingerprint(bs) -> str:
    return bs.get(project=PROJECT, backend_service="chat-bs").fingerprint


def patch_request(change, request_id: str, name: str = "chat-bs"):
    return compute_v1.PatchBackendServiceRequest(
        project=PROJECT, backend_service=name, backend_service_resource=change, request_id=request_id
    )


# ---- insert / get / list / delete --------------------------------------------------------------
def test_insert_then_get_renders_the_recorded_defaults(localcloud, clients):
    bs = clients.backend_services()
    op = bs.insert(project=PROJECT, backend_service_resource=compute_v1.BackendService(name="web", protocol="HTTP"))
    assert op.result() is None  # ExtendedOperation.result() returns None on success
    assert re.match(OPERATION_NAME, op.name)
    got = bs.get(project=PROJECT, backend_service="web")
    # compute-backendservice-crud.http.log: the server defaults of a fresh backend service.
    assert got.kind == "compute#backendService"
    assert got.self_link == f"https://www.googleapis.com/compute/v1/projects/{PROJECT}/global/backendServices/web"
    assert (got.port, got.port_name, got.protocol, got.session_affinity) == (80, "http", "HTTP", "NONE")
    assert (got.timeout_sec, got.affinity_cookie_ttl_sec, got.load_balancing_scheme) == (30, 0, "EXTERNAL")
    assert got.iap.oauth2_client_secret_sha256 == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert got.fingerprint and got.id and got.creation_timestamp


def test_list_returns_every_backend_service_of_the_project(bs):
    names = [b.name for b in bs.list(project=PROJECT)]
    assert names == ["chat-bs", "plain-bs"]
    assert list(bs.list(project="other-project")) == []


def test_list_pages_with_max_results(bs):
    pages = list(bs.list(request=compute_v1.ListBackendServicesRequest(project=PROJECT, max_results=1)).pages)
    assert [[b.name for b in page.items] for page in pages] == [["chat-bs"], ["plain-bs"]]


def test_insert_an_existing_name_is_a_409(bs):
    with pytest.raises(exceptions.Conflict) as info:
        bs.insert(project=PROJECT, backend_service_resource=compute_v1.BackendService(name="chat-bs"))
    assert f"The resource 'projects/{PROJECT}/global/backendServices/chat-bs' already exists" in info.value.message


@pytest.mark.parametrize("name", ["Chat", "1chat", "chat-", "a" * 64])
def test_insert_a_bad_name_is_a_400(localcloud, clients, name):
    with pytest.raises(exceptions.BadRequest) as info:
        clients.backend_services().insert(
            project=PROJECT, backend_service_resource=compute_v1.BackendService(name=name)
        )
    assert "Invalid value for field 'resource.name'" in info.value.message


def test_get_a_missing_backend_service_is_googles_404(localcloud, clients):
    with pytest.raises(exceptions.NotFound) as info:
        clients.backend_services().get(project=PROJECT, backend_service="nope")
    assert f"The resource 'projects/{PROJECT}/global/backendServices/nope' was not found" in info.value.message
    assert info.value.errors[0]["reason"] == "notFound"


def test_delete_removes_it(bs):
    bs.delete(project=PROJECT, backend_service="plain-bs").result()
    with pytest.raises(exceptions.NotFound):
        bs.get(project=PROJECT, backend_service="plain-bs")


def test_delete_a_backend_service_a_url_map_uses_is_refused(bs):
    with pytest.raises(exceptions.BadRequest) as info:
        bs.delete(project=PROJECT, backend_service="chat-bs")
    assert "is already being used by" in info.value.message
    assert info.value.errors[0]["reason"] == "resourceInUseByAnotherResource"


# ---- patch / update and fingerprints (§5.1) ----------------------------------------------------
def test_patch_with_the_current_fingerprint_applies_and_mints_a_new_one(bs):
    before = bs.get(project=PROJECT, backend_service="chat-bs")
    change = compute_v1.BackendService(description="websockets", fingerprint=before.fingerprint)
    bs.patch(project=PROJECT, backend_service="chat-bs", backend_service_resource=change).result()
    after = bs.get(project=PROJECT, backend_service="chat-bs")
    assert after.description == "websockets"
    assert after.fingerprint != before.fingerprint
    assert list(after.custom_request_headers) == ["X-Forwarded-Proto: https"]  # untouched by the merge
    assert after.backends[0].group == NEG_URL


def test_patch_replaces_lists_wholesale(bs):
    change = compute_v1.BackendService(custom_request_headers=["X-A: 1", "X-B: 2"], fingerprint=fingerprint(bs))
    bs.patch(project=PROJECT, backend_service="chat-bs", backend_service_resource=change).result()
    assert list(bs.get(project=PROJECT, backend_service="chat-bs").custom_request_headers) == ["X-A: 1", "X-B: 2"]


def test_a_stale_fingerprint_is_412_condition_not_met(bs):
    stale = fingerprint(bs)
    bs.patch(
        project=PROJECT,
        backend_service="chat-bs",
        backend_service_resource=compute_v1.BackendService(description="first", fingerprint=stale),
    ).result()
    with pytest.raises(exceptions.PreconditionFailed) as info:
        bs.patch(
            project=PROJECT,
            backend_service="chat-bs",
            backend_service_resource=compute_v1.BackendService(description="second", fingerprint=stale),
        )
    assert "Supplied fingerprint does not match current metadata fingerprint." in info.value.message
    assert info.value.errors[0]["reason"] == "conditionNotMet"
    assert bs.get(project=PROJECT, backend_service="chat-bs").description == "first"


def test_a_missing_fingerprint_is_412_too(bs):
    # §5.1 "An up-to-date fingerprint must be provided in order to update the BackendService".
    with pytest.raises(exceptions.PreconditionFailed):
        bs.patch(
            project=PROJECT, backend_service="chat-bs", backend_service_resource=compute_v1.BackendService(port=8080)
        )


def test_update_replaces_the_resource_and_keeps_server_fields(bs, clients):
    clients.backend_services().set_security_policy(
        project=PROJECT,
        backend_service="chat-bs",
        security_policy_reference_resource=compute_v1.SecurityPolicyReference(security_policy=SP_URL),
    ).result()
    current = bs.get(project=PROJECT, backend_service="chat-bs")
    replacement = compute_v1.BackendService(current)
    replacement.custom_request_headers = []
    replacement.description = "replaced"
    bs.update(project=PROJECT, backend_service="chat-bs", backend_service_resource=replacement).result()
    after = bs.get(project=PROJECT, backend_service="chat-bs")
    assert after.description == "replaced"
    assert list(after.custom_request_headers) == []
    assert (after.id, after.self_link, after.security_policy) == (current.id, current.self_link, SP_URL)
    assert after.fingerprint != current.fingerprint


def test_update_with_a_stale_fingerprint_is_412(bs):
    current = bs.get(project=PROJECT, backend_service="plain-bs")
    current.fingerprint = "c3RhbGUtZnA="
    with pytest.raises(exceptions.PreconditionFailed):
        bs.update(project=PROJECT, backend_service="plain-bs", backend_service_resource=current)


# ---- requestId (§5.1) --------------------------------------------------------------------------
def test_a_retried_patch_with_the_same_request_id_returns_the_same_operation_and_applies_once(bs):
    before = fingerprint(bs)
    request_id = str(uuid.UUID(int=42, version=4))
    change = compute_v1.BackendService(description="once", fingerprint=before)
    first = bs.patch_unary(request=patch_request(change, request_id))
    after_first = fingerprint(bs)
    # The retry carries the now-stale fingerprint: it must still answer the first operation, not 412.
    second = bs.patch_unary(request=patch_request(change, request_id))
    assert second.name == first.name
    assert fingerprint(bs) == after_first != before  # changed exactly once


def test_a_new_request_id_is_a_new_mutation(bs):
    current = fingerprint(bs)
    change = compute_v1.BackendService(description="x", fingerprint=current)
    first = bs.patch_unary(request=patch_request(change, str(uuid.uuid4())))
    with pytest.raises(exceptions.PreconditionFailed):  # applied: the old fingerprint is stale now
        bs.patch_unary(request=patch_request(change, str(uuid.uuid4())))
    assert first.name


@pytest.mark.parametrize("request_id", ["not-a-uuid", "00000000-0000-0000-0000-000000000000"])
def test_a_request_id_must_be_a_nonzero_uuid(bs, request_id):
    change = compute_v1.BackendService(description="x", fingerprint=fingerprint(bs))
    with pytest.raises(exceptions.BadRequest) as info:
        bs.patch(request=patch_request(change, request_id))
    assert "Invalid value for field 'requestId'" in info.value.message


# ---- serverless NEG backends (§2.1, §2.4) ------------------------------------------------------
def test_timeout_sec_on_a_serverless_neg_backend_service_is_googles_400(bs):
    change = compute_v1.BackendService(timeout_sec=120, fingerprint=fingerprint(bs))
    with pytest.raises(exceptions.BadRequest) as info:
        bs.patch(project=PROJECT, backend_service="chat-bs", backend_service_resource=change)
    assert info.value.message.endswith(
        "Invalid value for field 'resource.timeoutSec': '120'. Timeout sec is not supported for a backend service "
        "with Serverless network endpoint groups."
    )
    assert facts.SERVERLESS_NEG_TIMEOUT_MESSAGE in info.value.message
    assert info.value.errors[0]["reason"] == "invalid"


def test_timeout_sec_on_insert_with_a_serverless_neg_is_refused_and_absent_by_default(bs):
    resource = compute_v1.BackendService(name="ws", timeout_sec=86400, backends=[compute_v1.Backend(group=NEG_URL)])
    with pytest.raises(exceptions.BadRequest) as info:
        bs.insert(project=PROJECT, backend_service_resource=resource)
    assert "'resource.timeoutSec': '86400'" in info.value.message
    got = bs.get(project=PROJECT, backend_service="chat-bs")
    assert "timeout_sec" not in got  # the fixed 60 minutes is not a field of this service


def test_timeout_sec_without_a_serverless_neg_is_fine(bs):
    current = bs.get(project=PROJECT, backend_service="plain-bs").fingerprint
    change = compute_v1.BackendService(timeout_sec=120, fingerprint=current)
    bs.patch(project=PROJECT, backend_service="plain-bs", backend_service_resource=change).result()
    assert bs.get(project=PROJECT, backend_service="plain-bs").timeout_sec == 120


def test_health_checks_and_balancing_mode_are_refused_for_serverless_negs(bs):
    current = fingerprint(bs)
    with pytest.raises(exceptions.BadRequest) as info:
        bs.patch(
            project=PROJECT,
            backend_service="chat-bs",
            backend_service_resource=compute_v1.BackendService(
                health_checks=[f"projects/{PROJECT}/global/healthChecks/hc"], fingerprint=current
            ),
        )
    assert "Health checks are not supported" in info.value.message
    with pytest.raises(exceptions.BadRequest) as info:
        bs.patch(
            project=PROJECT,
            backend_service="chat-bs",
            backend_service_resource=compute_v1.BackendService(
                backends=[compute_v1.Backend(group=NEG_URL, balancing_mode="UTILIZATION")], fingerprint=current
            ),
        )
    assert "Balancing mode is not supported" in info.value.message


def test_only_one_serverless_neg_per_region(localcloud, clients):
    seed(localcloud)
    negs = clients.region_network_endpoint_groups()
    negs.insert(
        project=PROJECT,
        region="us-central1",
        network_endpoint_group_resource=compute_v1.NetworkEndpointGroup(
            name="other-neg",
            network_endpoint_type="SERVERLESS",
            cloud_run=compute_v1.NetworkEndpointGroupCloudRun(service="other"),
        ),
    ).result()
    other = NEG_URL.replace("chat-neg", "other-neg")
    resource = compute_v1.BackendService(
        name="two", backends=[compute_v1.Backend(group=NEG_URL), compute_v1.Backend(group=other)]
    )
    with pytest.raises(exceptions.BadRequest) as info:
        clients.backend_services().insert(project=PROJECT, backend_service_resource=resource)
    assert "only one serverless NEG per region" in info.value.message


def test_a_backend_group_that_does_not_exist_is_404(bs):
    missing = NEG_URL.replace("chat-neg", "missing")
    resource = compute_v1.BackendService(name="x", backends=[compute_v1.Backend(group=missing)])
    with pytest.raises(exceptions.NotFound) as info:
        bs.insert(project=PROJECT, backend_service_resource=resource)
    assert "networkEndpointGroups/missing' was not found" in info.value.message


def test_session_affinity_must_be_a_known_value(bs):
    change = compute_v1.BackendService(session_affinity="STICKY", fingerprint=fingerprint(bs))
    with pytest.raises(exceptions.BadRequest) as info:
        bs.patch(project=PROJECT, backend_service="chat-bs", backend_service_resource=change)
    assert "'resource.sessionAffinity': 'STICKY'" in info.value.message


# ---- customRequestHeaders (§2.5) ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        (["Connection: upgrade"], "hop-by-hop header Connection"),
        (["Upgrade: websocket"], "hop-by-hop header Upgrade"),
        (["keep-alive: 5"], "hop-by-hop header keep-alive"),
        (["TE: trailers"], "hop-by-hop"),
        (["Trailer: x"], "hop-by-hop"),
        (["Transfer-Encoding: chunked"], "hop-by-hop"),
        (["X-Goog-Thing: 1"], "must not begin with X-Google, X-Goog-, X-GFE or X-Amz-"),
        (["X-Google-Thing: 1"], "must not begin with"),
        (["X-GFE-Thing: 1"], "must not begin with"),
        (["X-Amz-Date: 1"], "must not begin with"),
        (["X-User-IP: 1.2.3.4"], "must not be X-User-IP"),
        (["CDN-Loop: x"], "must not be CDN-Loop"),
        (["X-No-Colon"], "must contain a colon"),
        (["Bad Name: 1"], "valid HTTP header-field name"),
        (["X-A: 1", "x-a: 2"], "appears more than once"),
        ([f"X-H{i}: v" for i in range(17)], "At most 16 custom request headers"),
        ([f"X-Big{i}: {'v' * 1100}" for i in range(8)], "exceed 8 KB"),
    ],
)
def test_custom_request_headers_google_forbids_are_400(bs, headers, fragment):
    change = compute_v1.BackendService(custom_request_headers=headers, fingerprint=fingerprint(bs))
    with pytest.raises(exceptions.BadRequest) as info:
        bs.patch(project=PROJECT, backend_service="chat-bs", backend_service_resource=change)
    assert fragment in info.value.message
    assert "Invalid value for field 'resource.customRequestHeaders" in info.value.message


def test_sixteen_headers_within_8kb_are_fine(bs):
    headers = [f"X-H{i}: {{client_region}}" for i in range(16)]
    change = compute_v1.BackendService(custom_request_headers=headers, fingerprint=fingerprint(bs))
    bs.patch(project=PROJECT, backend_service="chat-bs", backend_service_resource=change).result()
    assert len(bs.get(project=PROJECT, backend_service="chat-bs").custom_request_headers) == 16


# ---- setSecurityPolicy (§3.6) ------------------------------------------------------------------
def test_set_security_policy_attaches_and_detaches_by_url(bs):
    before = fingerprint(bs)
    ref = compute_v1.SecurityPolicyReference(security_policy=SP_URL)
    bs.set_security_policy(project=PROJECT, backend_service="chat-bs", security_policy_reference_resource=ref).result()
    attached = bs.get(project=PROJECT, backend_service="chat-bs")
    assert attached.security_policy == SP_URL
    assert attached.fingerprint != before
    bs.set_security_policy(
        project=PROJECT,
        backend_service="chat-bs",
        security_policy_reference_resource=compute_v1.SecurityPolicyReference(security_policy=""),
    ).result()
    assert "security_policy" not in bs.get(project=PROJECT, backend_service="chat-bs")


def test_set_security_policy_accepts_a_partial_url(bs):
    ref = compute_v1.SecurityPolicyReference(security_policy=f"projects/{PROJECT}/global/securityPolicies/chat-armor")
    bs.set_security_policy(project=PROJECT, backend_service="chat-bs", security_policy_reference_resource=ref).result()
    assert bs.get(project=PROJECT, backend_service="chat-bs").security_policy == SP_URL


def test_set_a_policy_that_does_not_exist_is_404(bs):
    ref = compute_v1.SecurityPolicyReference(security_policy=SP_URL.replace("chat-armor", "nope"))
    with pytest.raises(exceptions.NotFound) as info:
        bs.set_security_policy(project=PROJECT, backend_service="chat-bs", security_policy_reference_resource=ref)
    assert f"projects/{PROJECT}/global/securityPolicies/nope' was not found" in info.value.message


def test_security_policy_in_a_patch_body_is_output_only_and_ignored(bs):
    # §3.6: "[Output Only] … Attach policies with setSecurityPolicy, not by patching the field."
    change = compute_v1.BackendService(security_policy=SP_URL, fingerprint=fingerprint(bs))
    bs.patch(project=PROJECT, backend_service="chat-bs", backend_service_resource=change).result()
    assert "security_policy" not in bs.get(project=PROJECT, backend_service="chat-bs")


def test_state_contract_for_the_load_balancer(bs, localcloud):
    state = localcloud.world.apis["compute"]
    resource = state.backend_services[(PROJECT, "chat-bs")]
    assert resource["selfLink"] == BS_URL
    assert resource["backends"] == [{"group": NEG_URL}]
    assert state.resolve(resource["backends"][0]["group"])["cloudRun"] == {"service": "chat"}
    assert state.resolve(BS_URL) is resource
    assert state.resolve("chat-bs", kind="backendServices") is resource
    assert state.resolve("chat-bs", kind="urlMaps") is None
