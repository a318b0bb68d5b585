"""The fault matrix's world: one local cloud with the load balancer, re-seeded per case; a canary config
made cheap (gates of 1 connection, no hold, no bake, steps [50, 100], the default startup probe); the
mutating calls it faults; the faults; what "the new release" and "the pre-images" look like; and the
subprocess runner for the SIGKILL cases.

"Equal" is what the deploy promises: the service's effective traffic (``trafficStatuses``: revision,
percent, tag), the backend service byte-identical apart from its fingerprint, and the owned Cloud Armor
rules byte-identical.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deployer.gcp.clients import Clients
from deployer.gcp.observe import to_rest_json
from deployer.localcloud.server import LocalCloud
from deployer.orchestrator import traffic
from deployer.state import StateStore
from tests.orchestrator.deploy_support import (
    OWNED_PRIORITIES,
    PROJECT,
    ROOT,
    SERVICE_NAME,
    config_data,
    control,
    reseed,
    running_cloud,
    wait_settled,
)

BACKEND = "chat-backend-bs"
POLICY = "chat-armor"


@pytest.fixture(scope="module", name="cloud")
def cloud_fixture() -> Iterator[LocalCloud]:
    """The ``cloud`` fixture of the e2e modules that import it: the matrix's cloud, one per module (revision
    processes get 0.5 s to stop: the SIGKILL cases leave some behind on purpose)."""
    with running_cloud(stop_grace=0.5) as lc:
        yield lc


@dataclass(frozen=True)
class Call:
    """One mutating call of a canary deploy or of a rollback: the ``skip``-th call of ``method``."""

    phase: str  # "deploy" | "rollback"
    label: str
    method: str
    skip: int = 0

    @property
    def id(self) -> str:
        return f"{self.phase}:{self.label}"


DEPLOY_CALLS = [
    Call("deploy", "backend-service-patch", "compute.backendServices.patch"),
    Call("deploy", "armor-addRule-50", "compute.securityPolicies.addRule"),
    Call("deploy", "armor-patchRule-1000", "compute.securityPolicies.patchRule"),
    Call("deploy", "candidate-update", "run.services.patch", 0),
    Call("deploy", "traffic-50-update", "run.services.patch", 1),
    Call("deploy", "finalize-update", "run.services.patch", 2),
]
ROLLBACK_CALLS = [
    Call("rollback", "traffic-update", "run.services.patch"),
    Call("rollback", "backend-service-restore", "compute.backendServices.patch"),
    Call("rollback", "armor-removeRule-50", "compute.securityPolicies.removeRule"),
    Call("rollback", "armor-patchRule-1000-back", "compute.securityPolicies.patchRule"),
]
CALLS = DEPLOY_CALLS + ROLLBACK_CALLS
FAULTS = ["503x2", "429", "400", "403", "409-foreign-write", "operation", "kill-before", "kill-after"]
STORES = ["local", "gcs"]


def matrix_config(cloud: Any, store_kind: str, state_dir: Path) -> dict[str, Any]:
    """configs/local.yaml against ``cloud``, made to touch every kind of resource and cost little."""
    data = config_data(cloud, state_dir)
    data["service"].pop("startup_probe", None)  # the default probe polls every 50 ms locally
    data["load_balancer"]["custom_request_headers"] = ["X-Forwarded-Proto: https", "X-Release: canary"]
    for rule in data["armor"]["rules"]:
        if rule["priority"] == 1000:
            rule["description"] = "per-IP rate limit (owned by deployer)"  # a patchRule
    small = {"connections": 1, "concurrency": 1, "min_samples": 1, "hold": 0, "ping": 0}
    data["gate"]["candidate"].update(small)
    data["gate"]["public"].update(small)
    if store_kind == "gcs":
        data["state"] = {"backend": "gcs", "bucket": "deployer-state", "prefix": f"matrix-{uuid.uuid4().hex[:8]}"}
    return data


def fresh_world(cloud: Any, clients: Clients) -> None:
    reseed(cloud, clients)
    control(cloud, "faults", method="DELETE")


def snapshot(clients: Clients) -> dict[str, Any]:
    svc = wait_settled(clients, 60)
    bs = to_rest_json(clients.backend_services().get(project=PROJECT, backend_service=BACKEND))
    bs.pop("fingerprint")
    policy = to_rest_json(clients.security_policies().get(project=PROJECT, security_policy=POLICY))
    rules = {int(r["priority"]): r for r in policy["rules"] if int(r["priority"]) in OWNED_PRIORITIES}
    return {"traffic": sorted(traffic.effective(svc)), "backend_service": bs, "rules": rules}


# ---- the faults ----------------------------------------------------------------------------------------


def foreign_write(clients: Clients, method: str, priority: int = 1000) -> Callable[[], None]:
    """Someone else's write to the same resource, landing between the deployer's read and its write (for a
    rule that does not exist yet, ``addRule``: the other rule the deploy owns, which it patches next)."""

    def run_service() -> None:
        services = clients.services()
        svc = services.get_service(name=SERVICE_NAME)
        svc.labels["edited-by"] = "someone-else"
        services.update_service(service=svc).result()

    def backend() -> None:
        from google.cloud import compute_v1

        bs = clients.backend_services()
        live = bs.get(project=PROJECT, backend_service=BACKEND)
        bs.patch(
            project=PROJECT,
            backend_service=BACKEND,
            backend_service_resource=compute_v1.BackendService(
                description="edited by someone else", fingerprint=live.fingerprint
            ),
        ).result()

    def armor() -> None:
        from google.cloud import compute_v1

        sp = clients.security_policies()
        sp.patch_rule(
            request=compute_v1.PatchRuleSecurityPolicyRequest(
                project=PROJECT,
                security_policy=POLICY,
                priority=priority,
                security_policy_rule_resource=compute_v1.SecurityPolicyRule(description="edited by someone else"),
            )
        ).result()

    if method.startswith("run."):
        return run_service
    if method.startswith("compute.backendServices"):
        return backend
    return armor


def inject(cloud: Any, clients: Clients, call: Call, fault: str, pid: int = 0) -> None:
    """Register ``fault`` on ``call`` (through the control plane; the foreign write as a Python hook)."""
    from deployer.localcloud.world import FaultRule

    rule: dict[str, Any] = {"method": call.method, "skip": call.skip}
    if fault == "503x2":
        rule.update(status=503, count=2)
    elif fault in ("429", "400", "403"):
        rule.update(status=int(fault))
    elif fault == "operation":
        rule.update(status=500, kind="operation")
    elif fault.startswith("kill-"):
        rule.update(kind="kill", pid=pid, when=fault.removeprefix("kill-"))
    elif fault == "409-foreign-write":
        priority = 50 if "removeRule-50" in call.label else 1000
        hook = foreign_write(clients, call.method, priority)
        cloud.world.faults.add(FaultRule(method=call.method, kind="hook", skip=call.skip, hook=hook))
        return
    else:  # pragma: no cover
        raise AssertionError(fault)
    control(cloud, "faults", rule)


def faults_left(cloud: Any) -> list[Any]:
    return list(cloud.world.faults.rules)


# ---- the deployer as a process (the SIGKILL cases) ------------------------------------------------------------


def write_config(data: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


def spawn(args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    return subprocess.Popen(
        [sys.executable, "-m", "deployer", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(proc: subprocess.Popen[bytes], timeout: float = 120) -> tuple[int, str]:
    try:
        _out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
        raise AssertionError(f"the deployer did not stop: {err.decode()[-2000:]}") from None
    return proc.returncode, err.decode()


def lock_left(store: StateStore, key: str) -> bool:
    from deployer.orchestrator.lock import lock_key

    return store.read(lock_key(key)) is not None


def settle_cloud(clients: Clients) -> None:
    """Let a rollout the killed process started finish before the next case (bounded)."""
    wait_settled(clients, 60)
    time.sleep(0)


def copy_data(data: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(data)


__all__ = ["ROOT"]
