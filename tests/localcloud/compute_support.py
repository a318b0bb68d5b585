"""Values and raw HTTP for the Compute API tests (the real clients come from the ``clients`` fixture)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

PROJECT = "local-project"
REGION = "us-central1"
BASE = "https://www.googleapis.com/compute/v1"
NEG_URL = f"{BASE}/projects/{PROJECT}/regions/{REGION}/networkEndpointGroups/chat-neg"
BS_URL = f"{BASE}/projects/{PROJECT}/global/backendServices/chat-bs"
SP_URL = f"{BASE}/projects/{PROJECT}/global/securityPolicies/chat-armor"
OPERATION_NAME = r"^operation-\d{13}-[0-9a-f]{13}-[0-9a-f]{8}-[0-9a-f]{8}$"

# The world most tests start from: a serverless NEG, a backend service on it, a policy, a URL map.
WORLD: dict[str, Any] = {
    "networkEndpointGroups": [
        {"name": "chat-neg", "region": REGION, "networkEndpointType": "SERVERLESS", "cloudRun": {"service": "chat"}}
    ],
    "securityPolicies": [{"name": "chat-armor", "description": "armor"}],
    "backendServices": [
        {
            "name": "chat-bs",
            "loadBalancingScheme": "EXTERNAL_MANAGED",
            "backends": [{"group": "chat-neg"}],
            "customRequestHeaders": ["X-Forwarded-Proto: https"],
        },
        {"name": "plain-bs", "loadBalancingScheme": "EXTERNAL_MANAGED"},
    ],
    "urlMaps": [{"name": "chat-lb", "defaultService": "chat-bs"}],
}


def seed(cloud: Any, doc: dict[str, Any] | None = None) -> Any:
    """Seed the compute state directly (the same validated paths the API uses); returns the State."""
    state = cloud.world.apis["compute"]
    state.seed(doc if doc is not None else WORLD)
    return state


def http(cloud: Any, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, dict]:
    """One raw HTTP call to the local cloud; returns (status, JSON body)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(
        cloud.endpoint + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def fast_polling() -> Any:
    """``.result(polling=...)`` that polls every few milliseconds instead of the default ~1 s."""
    from google.api_core import retry
    from google.api_core.future import polling

    return retry.Retry(predicate=polling.POLLING_PREDICATE, initial=0.01, maximum=0.05, multiplier=1.5, timeout=10)
