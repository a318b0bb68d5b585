"""Benchmark: a canary deploy's wall time against its critical-path bound, with Google-like API latencies.

Starts a local cloud with the load balancer and the seed's world, sets Google-like latencies through
its control plane — every API call 80 ms (``/_localcloud/latency {"*": 0.08}``), a Cloud Run
UpdateService operation 3 s and a Compute operation 2 s (``/_localcloud/operations``) — and runs one
deploy in this process (``deployer.orchestrator.deploy.deploy``, the code ``deployer deploy`` runs)
of configs/local.yaml with v2 and a changed backend service, so both infra (a backend-service patch
beside a Cloud Armor addRule) and a new revision are on the way, then traffic 10 → 50 → 100.

The critical-path bound is what no implementation can avoid given those latencies and the config:

    max(infra, candidate revision) + candidate gate + Σ traffic steps
    infra      = max(backend-service call + its operation, Σ Cloud Armor calls + operations)
    candidate  = UpdateService call + its operation (the revision starts inside it)
    gate       = the candidate gate's own duration (measured; its hold is configured)
    step       = UpdateService call + operation + bake + the public gate's own duration (measured)

Everything else — observing, preflight, planning, the journal, polling, reading back — is overhead
the ratio counts against the deploy (goal ≤ 1.2). It also prints the API calls by kind (request log).

    .venv/bin/python bench/deploy.py [--bake 1] [--hold 1] [--connections 10]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

GOAL = 1.2
CALL_S = 0.08  # every API call (Google-like read latency)
RUN_OP_S = 3.0  # UpdateService operation
COMPUTE_OP_S = 2.0  # Compute operation


def control(endpoint: str, path: str, body: Any) -> None:
    req = urllib.request.Request(
        f"{endpoint}/_localcloud/{path}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(req, timeout=10).read()


def main() -> int:
    import yaml

    from deployer import logs
    from deployer.config import config_from_data
    from deployer.gcp.clients import Clients
    from deployer.localcloud.server import LocalCloud
    from deployer.orchestrator.deploy import deploy

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bake", type=float, default=1.0, help="bake seconds per traffic step")
    parser.add_argument("--hold", type=float, default=1.0, help="gate hold seconds")
    parser.add_argument("--connections", type=int, default=10, help="gate connections")
    args = parser.parse_args()
    logs.configure(json=False, level="error")

    world = yaml.safe_load((ROOT / "configs" / "local-world.yaml").read_text())
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp, LocalCloud(lb_port=0, seed_doc=world) as cloud:
        services = Clients(endpoint=cloud.endpoint).services()
        name = "projects/chat-staging/locations/us-central1/services/chat-backend"
        while services.get_service(name=name).reconciling:
            time.sleep(0.05)
        data = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
        data["endpoint"] = cloud.endpoint
        data["service"]["image"] = "local/chat-backend:v2"
        data["load_balancer"]["log_sample_rate"] = 0.5  # an infra change beside Cloud Armor's
        data["rollout"] = {"steps": [10, 50, 100], "bake_seconds": args.bake, "tag": "candidate"}
        gate = {"connections": args.connections, "concurrency": args.connections, "min_samples": args.connections}
        data["gate"]["candidate"].update(gate, hold=args.hold)
        data["gate"]["public"].update(gate, hold=args.hold, url=cloud.lb_url.replace("http://", "ws://") + "/ws")
        data["state"]["path"] = str(Path(tmp) / "state")
        config = config_from_data(data)

        control(cloud.endpoint, "latency", {"*": CALL_S})
        control(cloud.endpoint, "operations", {"run": RUN_OP_S, "compute": COMPUTE_OP_S})
        mark = len(cloud.world.requests)
        t0 = time.perf_counter()
        result = deploy(config)
        wall = time.perf_counter() - t0
        calls = [r for r in list(cloud.world.requests)[mark:] if r.method and not r.method.startswith("control.")]

    if result.status != "succeeded":
        print(f"the deploy did not succeed ({result.status}): {result.why}")
        return 1
    steps = {s["step"]: s["seconds"] for s in result.steps}
    armor_calls = sum(1 for c in calls if c.method.startswith("compute.securityPolicies.") and c.http_method == "POST")
    bs_calls = sum(1 for c in calls if c.method in ("compute.backendServices.patch", "compute.backendServices.update"))
    infra = max(bs_calls * (CALL_S + COMPUTE_OP_S), armor_calls * (CALL_S + COMPUTE_OP_S))
    candidate = CALL_S + RUN_OP_S
    gate = steps["gate_candidate"]
    traffic_steps = [
        CALL_S + RUN_OP_S + (args.bake if f"bake {p}%" in steps else 0.0) + steps[f"gate_public {p}%"]
        for p in (10, 50, 100)
    ]
    bound = max(infra, candidate) + gate + sum(traffic_steps)
    ratio = wall / bound

    print("deploy of chat-backend v2: backend-service patch ∥ Cloud Armor addRule ∥ candidate, then 10 → 50 → 100")
    print(
        f"latencies: {CALL_S * 1000:.0f} ms per call, "
        f"UpdateService op {RUN_OP_S:.0f} s, Compute op {COMPUTE_OP_S:.0f} s"
    )
    print(f"  infra bound       {infra:6.2f} s   (measured infra {result.timings.get('infra', 0):.2f} s)")
    print(f"  candidate bound   {candidate:6.2f} s   (measured candidate {result.timings.get('candidate', 0):.2f} s)")
    print(f"  candidate gate    {gate:6.2f} s")
    for p, s in zip((10, 50, 100), traffic_steps, strict=True):
        measured = steps[f"shift {p}%"] + steps.get(f"bake {p}%", 0.0) + steps[f"gate_public {p}%"]
        print(f"  traffic {p:>3}%      {s:6.2f} s   (measured {measured:.2f} s)")
    print(f"  observe+plan      measured {result.timings.get('observe', 0):.2f} s (overhead)")
    print(f"critical-path bound {bound:6.2f} s")
    print(f"deploy wall time    {wall:6.2f} s")
    print(f"ratio               {ratio:6.3f}   (goal ≤ {GOAL})  {'OK' if ratio <= GOAL else 'OVER GOAL'}")
    by_kind = collections.Counter(c.method for c in calls)
    print(f"API calls: {len(calls)} in total")
    for method, n in sorted(by_kind.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {n:4d}  {method}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
