"""Benchmark: what one Google API call costs against the local cloud, and the local cloud's own share.

Starts a LocalCloud seeded with ``configs/local-world.yaml``, then drives the real client libraries
(``deployer.gcp.clients.Clients``) through N iterations of:

- ``GetService``                          run_v2 ``get_service``
- ``UpdateService + .result()``           run_v2 ``update_service`` (a new env value: a new revision)
- ``BackendServices.patch + .result()``   compute_v1 ``patch`` with the current fingerprint

For each call it takes the client-observed wall time, and from the request log the local cloud's own
handling time (``duration_ms`` of every HTTP request the call made, summed: routing, the API's rules,
rendering). It prints p50/p99 of both, the share, and whether the goal holds: the local cloud adds
under 5 ms p50 per call.

    .venv/bin/python bench/localcloud_api.py [--iterations 200] [--warmup 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

GOAL_P50_MS = 5.0
PROJECT = "chat-staging"
REGION = "us-central1"
SERVICE = f"projects/{PROJECT}/locations/{REGION}/services/chat-backend"
BACKEND_SERVICE = "chat-backend-bs"


@dataclass
class Sample:
    wall_ms: float
    server_ms: float
    requests: int


@dataclass
class Result:
    name: str
    samples: list[Sample]

    def pct(self, values: list[float], q: int) -> float:
        if len(values) < 2:
            return values[0]
        return statistics.quantiles(values, n=100, method="inclusive")[q - 1]

    def row(self) -> dict[str, float]:
        wall = [s.wall_ms for s in self.samples]
        server = [s.server_ms for s in self.samples]
        return {
            "wall_p50": self.pct(wall, 50),
            "wall_p99": self.pct(wall, 99),
            "local_p50": self.pct(server, 50),
            "local_p99": self.pct(server, 99),
            "share": 100 * sum(server) / sum(wall),
            "requests": statistics.mean(s.requests for s in self.samples),
        }


def measure(
    cloud: Any,
    name: str,
    call: Callable[[int], None],
    iterations: int,
    warmup: int,
    after: Callable[[], None] | None = None,
) -> Result:
    """Time ``call(i)`` (wall clock, client side) and sum the request-log durations it caused.
    ``after`` runs untimed between iterations."""
    requests = cloud.world.requests
    for i in range(warmup):
        call(-1 - i)
        if after is not None:
            after()
    samples: list[Sample] = []
    for i in range(iterations):
        before = len(requests)
        t0 = time.perf_counter()
        call(i)
        wall = (time.perf_counter() - t0) * 1000
        made = requests[before:]
        samples.append(Sample(wall, sum(r.duration_ms for r in made), len(made)))
        if after is not None:
            after()
    return Result(name, samples)


def run(iterations: int, warmup: int) -> list[Result]:
    from google.cloud import compute_v1

    from deployer.gcp.clients import Clients
    from deployer.localcloud.server import LocalCloud, load_seed_file

    doc = load_seed_file(ROOT / "configs" / "local-world.yaml")
    with LocalCloud(seed_doc=doc) as cloud:
        clients = Clients(endpoint=cloud.endpoint, project=PROJECT)
        services, backend_services = clients.services(), clients.backend_services()
        state: dict[str, Any] = {}

        def get_service(_i: int) -> None:
            services.get_service(name=SERVICE)

        def update_service(i: int) -> None:
            svc = state["service"]
            svc.template.containers[0].env[0].value = f"bench-{i}"
            svc.template.revision = ""  # let the server name the new revision
            state["service"] = services.update_service(service=svc).result()

        def patch_backend_service(i: int) -> None:
            resource = compute_v1.BackendService(description=f"bench {i}", fingerprint=state["fingerprint"])
            backend_services.patch(
                project=PROJECT, backend_service=BACKEND_SERVICE, backend_service_resource=resource
            ).result()

        def refresh_fingerprint() -> None:  # untimed: the next patch needs the current fingerprint
            state["fingerprint"] = backend_services.get(project=PROJECT, backend_service=BACKEND_SERVICE).fingerprint

        state["service"] = services.get_service(name=SERVICE)
        refresh_fingerprint()
        return [
            measure(cloud, "GetService", get_service, iterations, warmup),
            measure(cloud, "UpdateService + .result()", update_service, iterations, warmup),
            measure(
                cloud,
                "BackendServices.patch + .result()",
                patch_backend_service,
                iterations,
                warmup,
                refresh_fingerprint,
            ),
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args(argv)

    from deployer import logs

    logs.configure(level="warning")  # the local cloud's info events would drown the table
    results = run(args.iterations, args.warmup)

    print(f"local cloud API benchmark: {args.iterations} iterations each (after {args.warmup} warm-up), real clients")
    header = f"{'call':<36}{'wall p50':>10}{'wall p99':>10}{'local p50':>11}{'local p99':>11}{'share':>8}{'reqs':>6}"
    print(header)
    print("-" * len(header))
    worst = 0.0
    for result in results:
        row = result.row()
        worst = max(worst, row["local_p50"])
        print(
            f"{result.name:<36}{row['wall_p50']:>8.2f}ms{row['wall_p99']:>8.2f}ms"
            f"{row['local_p50']:>9.2f}ms{row['local_p99']:>9.2f}ms{row['share']:>7.1f}%{row['requests']:>6.1f}"
        )
    verdict = "holds" if worst < GOAL_P50_MS else "does NOT hold"
    print(
        f"goal: the local cloud adds < {GOAL_P50_MS:.0f} ms p50 per call -> {verdict} (worst local p50 {worst:.2f} ms)"
    )
    print("wall = client-observed time per call; local = the local cloud's own handling (request log duration_ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
