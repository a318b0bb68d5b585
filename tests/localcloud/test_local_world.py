"""configs/local-world.yaml: valid for the APIs' own message classes, and seeded into a live local cloud."""

from __future__ import annotations

import json

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


def test_storage_part_of_the_world_seeds_on_its_own(doc):
    """The buckets alone (what the storage API owns) seed without the other APIs' keys."""
    with LocalCloud(seed_doc={k: doc[k] for k in ("seed", "project", "region", "buckets")}) as lc:
        gcs = Clients(endpoint=lc.endpoint, project="chat-staging").storage()
        assert [b.name for b in gcs.list_buckets()] == ["deployer-state"]
        assert gcs.get_bucket("deployer-state").location == "US-CENTRAL1"
