"""The public gate takes the users' path: through the load balancer's URL map and Cloud Armor.

The reviewer's case: a deploy that adds an owned Cloud Armor rule denying ``/ws`` (priority 40, ``deny(403)``).
The candidate gate goes to the tag's own URL, which Cloud Armor does not guard (gcp-facts §3.5: "Cloud Armor
also protects serverless NEGs when traffic is routed through a load balancer"), so it passes; the public gate,
pointed at the load balancer (``gate.public.url``, as configs/local.yaml and deploy_support set it), meets the
403 and the deploy rolls back — the rule removed, users served again. Without ``gate.public.url`` the public
gate probes the service's own URL and the same deploy "succeeds" with everyone shut out: what CR024 warns of.

The seed's world in a local cloud with revision processes behind the load balancer, the real Google clients
over HTTP, real WebSocket gates.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from deployer.gcp.clients import Clients
from deployer.gcp.observe import to_rest_json
from deployer.orchestrator.deploy import deploy
from deployer.preflight import run_rules
from tests.orchestrator.deploy_support import (
    PROJECT,
    cloud_fixture,  # noqa: F401  (the module's cloud)
    config_data,
    logs_back_to_defaults,  # noqa: F401  (autouse fixture)
    make_config,
    options,
    reseeded_clients,
    served_version,
    snapshot,
)

pytestmark = pytest.mark.e2e

DENY_WS = {
    "priority": 40,
    "description": "a release that shuts WebSocket users out",
    "action": "deny(403)",
    "expression": "request.path.matches('^/ws')",
}


@pytest.fixture
def clients(cloud: Any) -> Clients:
    return reseeded_clients(cloud)


@pytest.fixture
def data(cloud: Any, clients: Clients, tmp_path: Any) -> dict[str, Any]:
    data = config_data(cloud, tmp_path / "state")
    data["armor"]["rules"].append(dict(DENY_WS))
    return data


def policy_priorities(clients: Clients) -> list[int]:
    policy = to_rest_json(clients.security_policies().get(project=PROJECT, security_policy="chat-armor"))
    return sorted(int(r["priority"]) for r in policy["rules"])


def lb_upgrade_status(cloud: Any) -> int:
    """The HTTP status of a WebSocket upgrade through the load balancer (101 when it is accepted)."""

    async def connect() -> int:
        try:
            async with websockets.connect(cloud.lb_url.replace("http://", "ws://") + "/ws", open_timeout=5):
                return 101
        except InvalidStatus as exc:
            return int(exc.response.status_code)

    return asyncio.run(connect())


def test_a_deny_rule_on_the_load_balancer_path_is_caught_by_the_public_gate_and_rolled_back(
    cloud: Any, clients: Clients, data: dict[str, Any]
) -> None:
    lb_url = cloud.lb_url.replace("http://", "ws://") + "/ws"
    assert data["gate"]["public"]["url"] == lb_url
    assert "CR024" not in {f.code for f in run_rules(make_config(data))}
    before, priorities = snapshot(clients), policy_priorities(clients)
    assert 40 not in priorities and served_version(cloud) == "v1"

    result = deploy(make_config(data), options())

    assert (result.status, result.exit_code) == ("rolled_back", 1), result.why
    assert next(s["step"] for s in result.steps if not s["ok"]) == "gate_public 50%", result.steps
    assert result.why and result.why.startswith("gate_public"), result.why
    candidate, public = result.gates[0], result.gates[1]
    assert (candidate["target"], candidate["verdict"]) == ("candidate", "Passed")  # the tag URL: no Cloud Armor
    assert (public["target"], public["verdict"], public["url"]) == ("public 50%", "Failed", lb_url)
    assert "403" in " ".join(public["reasons"]), public["reasons"]
    # the rule is gone, everything the deploy touched is as it was, and users are served again
    assert policy_priorities(clients) == priorities
    assert snapshot(clients) == before
    assert lb_upgrade_status(cloud) == 101 and served_version(cloud) == "v1"


def test_without_the_public_url_the_gate_probes_the_service_and_misses_it(
    cloud: Any, clients: Clients, data: dict[str, Any]
) -> None:
    """The reviewer's repro, kept as the reason CR024 exists: the run.app URL bypasses Cloud Armor."""
    del data["gate"]["public"]["url"]
    config = make_config(data)
    (finding,) = [f for f in run_rules(config) if f.code == "CR024"]
    assert finding.field == "gate.public.url" and "Cloud Armor" in finding.message

    result = deploy(config, options())

    assert (result.status, result.exit_code) == ("succeeded", 0), result.why
    public = [g for g in result.gates if g["target"].startswith("public")]
    assert public and all(g["verdict"] == "Passed" for g in public)
    assert all(g["host"] and g["host"].startswith("chat-backend.localhost") for g in public), public
    assert 40 in policy_priorities(clients)
    assert lb_upgrade_status(cloud) == 403  # every user shut out, and the deploy said it went well
