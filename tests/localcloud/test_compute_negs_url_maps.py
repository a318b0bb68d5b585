"""regionNetworkEndpointGroups (serverless, Cloud Run) and urlMaps through the real clients."""

from __future__ import annotations

import re

import pytest
from google.api_core import exceptions
from google.cloud import compute_v1

from tests.localcloud.compute_support import BASE, BS_URL, NEG_URL, OPERATION_NAME, PROJECT, REGION, http, seed


def neg(name: str, **cloud_run) -> compute_v1.NetworkEndpointGroup:
    return compute_v1.NetworkEndpointGroup(
        name=name,
        network_endpoint_type="SERVERLESS",
        cloud_run=compute_v1.NetworkEndpointGroupCloudRun(**(cloud_run or {"service": "chat"})),
    )


# ---- serverless NEGs ---------------------------------------------------------------------------
def test_insert_get_list_delete_a_cloud_run_neg(localcloud, clients):
    negs = clients.region_network_endpoint_groups()
    op = negs.insert(project=PROJECT, region=REGION, network_endpoint_group_resource=neg("chat-neg", service="chat"))
    assert op.result() is None  # polled through regionOperations on the local endpoint
    got = negs.get(project=PROJECT, region=REGION, network_endpoint_group="chat-neg")
    # compute-serverless-neg-cloudrun.http.log: the recorded GET.
    assert (got.kind, got.network_endpoint_type, got.size) == ("compute#networkEndpointGroup", "SERVERLESS", 0)
    assert got.self_link == NEG_URL
    assert got.region == f"{BASE}/projects/{PROJECT}/regions/{REGION}"
    assert got.cloud_run.service == "chat"
    assert [n.name for n in negs.list(project=PROJECT, region=REGION)] == ["chat-neg"]
    assert list(negs.list(project=PROJECT, region="europe-west1")) == []
    negs.delete(project=PROJECT, region=REGION, network_endpoint_group="chat-neg").result()
    with pytest.raises(exceptions.NotFound) as info:
        negs.get(project=PROJECT, region=REGION, network_endpoint_group="chat-neg")
    assert f"projects/{PROJECT}/regions/{REGION}/networkEndpointGroups/chat-neg' was not found" in info.value.message


def test_regional_operations_have_the_recorded_shape(localcloud):
    status, op = http(
        localcloud,
        "POST",
        f"/compute/v1/projects/{PROJECT}/regions/{REGION}/networkEndpointGroups",
        {"name": "n1", "networkEndpointType": "SERVERLESS", "cloudRun": {"service": "svc", "tag": "blue"}},
    )
    assert status == 200
    assert re.match(OPERATION_NAME, op["name"])
    assert op["operationType"] == "compute.regionNetworkEndpointGroups.insert"
    assert op["region"] == f"{BASE}/projects/{PROJECT}/regions/{REGION}"
    assert op["selfLink"] == f"{BASE}/projects/{PROJECT}/regions/{REGION}/operations/{op['name']}"
    assert op["targetLink"].endswith("/networkEndpointGroups/n1")
    status, polled = http(localcloud, "GET", f"/compute/v1/projects/{PROJECT}/regions/{REGION}/operations/{op['name']}")
    assert (status, polled["status"], polled["progress"]) == (200, "DONE", 100)


@pytest.mark.parametrize(
    ("resource", "fragment"),
    [
        (neg("bad", service="chat", tag="Blue_1"), "'resource.cloudRun.tag': 'Blue_1'"),
        (neg("bad", service="x" * 64), "Must be 1-63 characters long, and comply with RFC1035."),
        (neg("bad", tag="blue"), "The service must be provided explicitly or in the URL mask."),
        (
            compute_v1.NetworkEndpointGroup(name="bad", network_endpoint_type="GCE_VM_IP_PORT"),
            "serverless (SERVERLESS) NEGs only",
        ),
    ],
)
def test_invalid_negs_are_400(localcloud, clients, resource, fragment):
    with pytest.raises(exceptions.BadRequest) as info:
        clients.region_network_endpoint_groups().insert(
            project=PROJECT, region=REGION, network_endpoint_group_resource=resource
        )
    assert fragment in info.value.message


def test_a_url_mask_neg_is_accepted(localcloud, clients):
    negs = clients.region_network_endpoint_groups()
    negs.insert(
        project=PROJECT,
        region=REGION,
        network_endpoint_group_resource=neg("masked", url_mask="<tag>.example.com/<service>"),
    ).result()
    assert negs.get(project=PROJECT, region=REGION, network_endpoint_group="masked").cloud_run.url_mask


def test_a_neg_in_use_cannot_be_deleted(localcloud, clients):
    seed(localcloud)
    with pytest.raises(exceptions.BadRequest) as info:
        clients.region_network_endpoint_groups().delete(
            project=PROJECT, region=REGION, network_endpoint_group="chat-neg"
        )
    assert f"is already being used by 'projects/{PROJECT}/global/backendServices/chat-bs'" in info.value.message


# ---- URL maps ----------------------------------------------------------------------------------
def ws_map(name: str = "ws-lb", service: str = BS_URL) -> compute_v1.UrlMap:
    return compute_v1.UrlMap(
        name=name,
        default_service=service,
        host_rules=[compute_v1.HostRule(hosts=["*"], path_matcher="api")],
        path_matchers=[
            compute_v1.PathMatcher(
                name="api",
                default_service=service,
                path_rules=[compute_v1.PathRule(paths=["/ws", "/ws/*"], service=service)],
            )
        ],
    )


def test_insert_get_list_patch_update_a_url_map(localcloud, clients):
    seed(localcloud)
    maps = clients.url_maps()
    maps.insert(project=PROJECT, url_map_resource=ws_map()).result()
    got = maps.get(project=PROJECT, url_map="ws-lb")
    assert (got.kind, got.default_service) == ("compute#urlMap", BS_URL)
    assert got.path_matchers[0].path_rules[0].service == BS_URL
    assert [m.name for m in maps.list(project=PROJECT)] == ["chat-lb", "ws-lb"]

    plain = BS_URL.replace("chat-bs", "plain-bs")
    maps.patch(
        project=PROJECT,
        url_map="ws-lb",
        url_map_resource=compute_v1.UrlMap(default_service=plain, fingerprint=got.fingerprint),
    ).result()
    patched = maps.get(project=PROJECT, url_map="ws-lb")
    assert patched.default_service == plain
    assert patched.path_matchers[0].default_service == BS_URL  # merge keeps what the patch did not name

    replacement = compute_v1.UrlMap(name="ws-lb", default_service=BS_URL, fingerprint=patched.fingerprint)
    maps.update(project=PROJECT, url_map="ws-lb", url_map_resource=replacement).result()
    updated = maps.get(project=PROJECT, url_map="ws-lb")
    assert list(updated.path_matchers) == [] and updated.default_service == BS_URL
    assert updated.id == got.id


def test_url_map_fingerprint_is_a_precondition(localcloud, clients):
    seed(localcloud)
    maps = clients.url_maps()
    with pytest.raises(exceptions.PreconditionFailed):
        maps.patch(
            project=PROJECT,
            url_map="chat-lb",
            url_map_resource=compute_v1.UrlMap(description="x", fingerprint="c3RhbGU="),
        )


def test_url_map_references_must_exist(localcloud, clients):
    seed(localcloud)
    with pytest.raises(exceptions.NotFound) as info:
        clients.url_maps().insert(project=PROJECT, url_map_resource=ws_map(service=BS_URL.replace("chat-bs", "gone")))
    assert f"projects/{PROJECT}/global/backendServices/gone' was not found" in info.value.message


def test_a_host_rule_must_name_a_path_matcher_of_the_map(localcloud, clients):
    seed(localcloud)
    resource = ws_map()
    resource.host_rules[0].path_matcher = "nope"
    with pytest.raises(exceptions.BadRequest) as info:
        clients.url_maps().insert(project=PROJECT, url_map_resource=resource)
    assert "'resource.hostRules[0].pathMatcher': 'nope'" in info.value.message


def test_delete_a_url_map(localcloud, clients):
    seed(localcloud)
    maps = clients.url_maps()
    maps.delete(project=PROJECT, url_map="chat-lb").result()
    assert list(maps.list(project=PROJECT)) == []
    clients.backend_services().delete(project=PROJECT, backend_service="chat-bs").result()  # no longer in use
