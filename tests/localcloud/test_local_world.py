"""configs/local-world.yaml: valid for the APIs' own message classes, and seeded into a live local cloud."""

from __future__ import annotations

import json
import urllib.request

import pytest

from deployer.gcp.clients import Clients
from deployer.localcloud.server import LocalCloud, load_seed_file
from tests.conftest import ROOT

WORLD = ROOT / "configs" / "local-world.yaml"
BS_URL_SUFFIX = "projects/chat-staging/global/backendServices/chat-backend-bs"


@pytest.fixture(scope="module")
def doc() -> dict:
    return load_seed_file(WORLD)


def test_every_resource_parses_strictly_with_the_client_message_classes(doc):
    from google.cloud import compute_v1, run_v2

    classes = {
        "services": run_v2.Service,
        "networkEndpointGroups": compute_v1.NetworkEndpointGroup,
        "securityPolicies": compute_v1.SecurityPolicy,
        "backendServices": compute_v1.BackendService,
        "urlMaps": compute_v1.UrlMap,
    }
    for key, cls in classes.items():
        assert doc[key], key
        for entry in doc[key]:
            cls.from_json(json.dumps(entry))  # strict: an unknown or mistyped field raises ParseError


def test_world_is_the_seeds_staging_world(doc):
    assert (doc["project"], doc["region"]) == ("chat-staging", "us-central1")
    (svc,) = doc["services"]
    template = svc["template"]
    assert template["timeout"] == "3600s"
    assert template["sessionAffinity"] is True
    assert template["containers"][0]["image"] == "local/chat-backend:v1"
    env = {e["name"]: e["value"] for e in template["containers"][0]["env"]}
    assert env["WEBSOCKET_HEARTBEAT_INTERVAL"] == "25"
    assert {e for e in env if e.startswith("WEBSOCKET_")} == {
        "WEBSOCKET_CONNECTION_TIMEOUT",
        "WEBSOCKET_HEARTBEAT_INTERVAL",
        "WEBSOCKET_HEARTBEAT_TIMEOUT",
        "WEBSOCKET_CLEANUP_INTERVAL",
        "WEBSOCKET_STALE_TIMEOUT",
    }
    (bs,) = doc["backendServices"]
    assert "timeoutSec" not in bs  # gcp-facts §2.1: 400 for serverless NEG backends
    assert bs["customRequestHeaders"] == ["X-Forwarded-Proto: https"]
    (policy,) = doc["securityPolicies"]
    limit = next(r for r in policy["rules"] if r["action"] == "throttle")["rateLimitOptions"]
    assert limit["rateLimitThreshold"] == {"count": 100, "intervalSec": 60}
    assert (limit["enforceOnKey"], limit["exceedAction"]) == ("IP", "deny(429)")
    assert any(r["priority"] == 2147483647 for r in policy["rules"])
    (url_map,) = doc["urlMaps"]
    (rule,) = url_map["pathMatchers"][0]["pathRules"]
    assert rule["paths"] == ["/ws", "/ws/*", "/websocket", "/websocket/*"]
    assert "routeAction" not in rule


def _post_seed(endpoint: str, text: str) -> tuple[int, dict]:
    req = urllib.request.Request(endpoint + "/_localcloud/seed", data=text.encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _assert_world_reads_back(endpoint: str) -> None:
    """Every seeded resource, read back through the real client libraries."""
    clients = Clients(endpoint=endpoint, project="chat-staging")
    svc = clients.services().get_service(name="projects/chat-staging/locations/us-central1/services/chat-backend")
    assert svc.template.containers[0].image == "local/chat-backend:v1"
    assert svc.template.timeout.total_seconds() == 3600
    assert svc.template.session_affinity is True
    assert svc.latest_ready_revision  # the seeded revision is serving
    env = {e.name: e.value for e in svc.template.containers[0].env}
    assert env["WEBSOCKET_STALE_TIMEOUT"] == "900"

    neg = clients.region_network_endpoint_groups().get(
        project="chat-staging", region="us-central1", network_endpoint_group="chat-backend-neg"
    )
    assert neg.network_endpoint_type == "SERVERLESS"
    assert neg.cloud_run.service == "chat-backend"

    policy = clients.security_policies().get(project="chat-staging", security_policy="chat-armor")
    rules = {r.priority: r for r in policy.rules}
    assert rules[1000].action == "throttle"
    assert rules[1000].rate_limit_options.rate_limit_threshold.count == 100
    assert rules[1000].rate_limit_options.rate_limit_threshold.interval_sec == 60
    assert rules[1000].rate_limit_options.exceed_action == "deny(429)"
    assert 2147483647 in rules

    bs = clients.backend_services().get(project="chat-staging", backend_service="chat-backend-bs")
    assert bs.load_balancing_scheme == "EXTERNAL_MANAGED"
    assert list(bs.custom_request_headers) == ["X-Forwarded-Proto: https"]
    assert bs.security_policy.endswith("projects/chat-staging/global/securityPolicies/chat-armor")
    assert bs.backends[0].group.endswith(
        "projects/chat-staging/regions/us-central1/networkEndpointGroups/chat-backend-neg"
    )

    url_map = clients.url_maps().get(project="chat-staging", url_map="chat-lb")
    assert url_map.default_service.endswith(BS_URL_SUFFIX)
    assert "api.staging.example.com" in url_map.host_rules[0].hosts
    assert list(url_map.path_matchers[0].path_rules[0].paths) == ["/ws", "/ws/*", "/websocket", "/websocket/*"]
    assert url_map.path_matchers[0].path_rules[0].service.endswith(BS_URL_SUFFIX)

    gcs = clients.storage()
    assert [b.name for b in gcs.list_buckets()] == ["deployer-state"]
    gcs.bucket("deployer-state").blob("probe").upload_from_string(b"x", if_generation_match=0)


@pytest.mark.e2e
def test_seeding_through_the_control_plane_creates_everything():
    with LocalCloud() as lc:
        status, body = _post_seed(lc.endpoint, WORLD.read_text())
        assert status == 200, body
        assert (body["project"], body["region"]) == ("chat-staging", "us-central1")
        _assert_world_reads_back(lc.endpoint)


def test_a_misspelt_seed_key_is_refused_and_seeds_nothing():
    with LocalCloud() as lc:
        status, body = _post_seed(lc.endpoint, "project: elsewhere\nbackendService: [{name: bs}]\n")
        assert status == 400
        assert "unknown top-level key 'backendService'; did you mean 'backendServices'?" in str(body)
        assert lc.world.project != "elsewhere"  # refused before anything was reset or created
        status, body = _post_seed(lc.endpoint, "secrets: {}\n")  # runtime keys are known without a runtime
        assert status == 200, body


@pytest.mark.e2e
def test_seeding_at_construction_creates_everything(doc):
    with LocalCloud(seed_doc=doc) as lc:
        assert lc.world.project == "chat-staging"
        _assert_world_reads_back(lc.endpoint)


@pytest.mark.e2e
def test_seeding_twice_gives_the_same_ids(doc):
    """seed: 7 makes ids, etags and fingerprints replay identically."""
    seen = []
    for _ in range(2):
        with LocalCloud(seed_doc=doc) as lc:
            clients = Clients(endpoint=lc.endpoint, project="chat-staging")
            bs = clients.backend_services().get(project="chat-staging", backend_service="chat-backend-bs")
            svc = clients.services().get_service(
                name="projects/chat-staging/locations/us-central1/services/chat-backend"
            )
            seen.append((bs.id, bs.fingerprint, svc.uid, svc.latest_ready_revision))
    assert seen[0] == seen[1]


def test_storage_part_of_the_world_seeds_on_its_own(doc):
    """The buckets alone (what the storage API owns) seed without the other APIs' keys."""
    with LocalCloud(seed_doc={k: doc[k] for k in ("seed", "project", "region", "buckets")}) as lc:
        gcs = Clients(endpoint=lc.endpoint, project="chat-staging").storage()
        assert [b.name for b in gcs.list_buckets()] == ["deployer-state"]
        assert gcs.get_bucket("deployer-state").location == "US-CENTRAL1"
