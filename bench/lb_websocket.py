"""Benchmark: 1,000 concurrent WebSockets held through the local load balancer and Cloud Armor.

Runs ``deployer localcloud up --seed configs/local-world.yaml --lb-port 0`` as its own process (so its
resident memory is measured alone), then from this process:

1. sequential handshakes (open + close), alternating direct to the revision's port and through the
   load balancer (URL map chat-lb → chat-backend-bs + Cloud Armor chat-armor → chat-backend): p50/p99
   of each and their ratio;
2. opens ``--connections`` WebSockets through the LB (at most ``--concurrency`` handshakes at once),
   checks each with a ping/pong, holds them all ``--hold`` seconds reading heartbeats, checks each again
   with a ping/pong, and closes them;
3. prints connections held, unexpected closes (goal 0), the handshake latencies under load, and the
   local cloud process's resident memory per held connection (RSS growth at the peak / connections;
   the revision's process is not counted).

Client sockets come from 50 loopback addresses (127.0.0.10–59): the seeded Cloud Armor policy throttles
each client IP to 100 requests a minute, as the seed's staging did.

    .venv/bin/python bench/lb_websocket.py [--connections 1000] [--hold 30] [--concurrency 100]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import websockets

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
READY = re.compile(r"API on (http://127\.0\.0\.1:\d+), load balancer on http://127\.0\.0\.1:(\d+)")
SOURCES = [f"127.0.0.{i}" for i in range(10, 60)]


def raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, need)) if hard != resource.RLIM_INFINITY else max(soft, need)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def start_cloud() -> tuple[subprocess.Popen[str], str, int]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deployer",
            "localcloud",
            "up",
            "--api-port",
            "0",
            "--lb-port",
            "0",
            "--seed",
            "configs/local-world.yaml",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # inherits the raised fd limit
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = READY.search(line)
    if match is None:
        proc.kill()
        raise SystemExit(f"the local cloud did not start: {line!r}")
    return proc, match.group(1), int(match.group(2))


def revision_port(api: str) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with urllib.request.urlopen(api + "/_localcloud/revisions", timeout=5) as resp:
            revisions = json.loads(resp.read())["revisions"]
        ready = [r for r in revisions if r["ready"] and r["port"]]
        if ready:
            return int(ready[0]["port"])
        time.sleep(0.1)
    raise SystemExit("the seeded revision did not become ready")


async def handshake(url: str, source: str | None, compression: str | None) -> float:
    kw: dict[str, Any] = {"local_addr": (source, 0)} if source else {}
    t0 = time.perf_counter()
    ws = await websockets.connect(url, open_timeout=30, proxy=None, compression=compression, **kw)
    elapsed = time.perf_counter() - t0
    await ws.close()
    return elapsed


async def sequential(lb: str, direct: str, samples: int, compression: str | None) -> tuple[list[float], list[float]]:
    via_lb: list[float] = []
    via_direct: list[float] = []
    for i in range(samples):  # alternate, so both see the same machine state
        via_direct.append(await handshake(direct, None, compression))
        via_lb.append(await handshake(lb, SOURCES[i % len(SOURCES)], compression))
    return via_lb, via_direct


class Held:
    def __init__(self) -> None:
        self.open = 0
        self.failed_handshakes: list[str] = []
        self.unexpected: list[str] = []
        self.handshakes: list[float] = []
        self.heartbeats = 0
        self.verified_start = 0
        self.verified_end = 0


async def pong(ws: Any, ident: int) -> bool:
    await ws.send(json.dumps({"type": "ping", "id": ident}))
    async with asyncio.timeout(30):
        while True:
            msg = json.loads(await ws.recv())
            if msg.get("type") == "pong" and msg.get("id") == ident:
                return True


async def one(
    i: int,
    lb: str,
    gate: asyncio.Semaphore,
    state: Held,
    all_open: asyncio.Event,
    release: asyncio.Event,
    compression: str | None,
) -> None:
    async with gate:
        t0 = time.perf_counter()
        try:
            ws = await websockets.connect(
                lb,
                open_timeout=60,
                proxy=None,
                compression=compression,
                local_addr=(SOURCES[i % len(SOURCES)], 0),
                ping_interval=None,
            )
        except Exception as exc:
            state.failed_handshakes.append(repr(exc))
            return
        state.handshakes.append(time.perf_counter() - t0)
    state.open += 1
    try:
        if await pong(ws, i):
            state.verified_start += 1
        await all_open.wait()
        reader = asyncio.create_task(read_heartbeats(ws, state))
        await release.wait()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        if await pong(ws, 100_000 + i):
            state.verified_end += 1
        await ws.close()
    except websockets.ConnectionClosed as exc:
        state.unexpected.append(f"#{i}: {exc!r}")
    except Exception as exc:
        state.unexpected.append(f"#{i}: {exc!r}")
    finally:
        state.open -= 1


async def read_heartbeats(ws: Any, state: Held) -> None:
    while True:
        msg = json.loads(await ws.recv())
        if msg.get("type") == "heartbeat":
            state.heartbeats += 1


async def hold(
    lb: str, n: int, concurrency: int, hold_s: float, cloud: psutil.Process, baseline: int, compression: str | None
) -> tuple[Held, int, float]:
    state = Held()
    gate = asyncio.Semaphore(concurrency)
    all_open, release = asyncio.Event(), asyncio.Event()
    t0 = time.perf_counter()
    tasks = [asyncio.create_task(one(i, lb, gate, state, all_open, release, compression)) for i in range(n)]
    while state.open + len(state.failed_handshakes) < n and not all(t.done() for t in tasks):
        await asyncio.sleep(0.05)
    ramp = time.perf_counter() - t0
    all_open.set()
    peak = 0
    end = time.monotonic() + hold_s
    while time.monotonic() < end:
        await asyncio.sleep(0.5)
        peak = max(peak, cloud.memory_info().rss)
    release.set()
    await asyncio.gather(*tasks)
    return state, peak, ramp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--hold", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=100, help="handshakes in flight at once")
    parser.add_argument("--samples", type=int, default=200, help="sequential handshakes each way")
    parser.add_argument("--no-compression", action="store_true", help="clients do not offer permessage-deflate")
    args = parser.parse_args()
    compression = None if args.no_compression else "deflate"
    raise_fd_limit(args.connections * 4 + 256)
    proc, api, lb_port = start_cloud()
    try:
        port = revision_port(api)
        lb = f"ws://127.0.0.1:{lb_port}/ws"
        direct = f"ws://127.0.0.1:{port}/ws"
        cloud = psutil.Process(proc.pid)
        asyncio.run(handshake(lb, SOURCES[0], compression))  # warm up both paths
        asyncio.run(handshake(direct, None, compression))
        via_lb, via_direct = asyncio.run(sequential(lb, direct, args.samples, compression))
        baseline = cloud.memory_info().rss
        state, peak, ramp = asyncio.run(
            hold(lb, args.connections, args.concurrency, args.hold, cloud, baseline, compression)
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()

    held = state.verified_end
    lb50, lb99 = percentile(via_lb, 50) * 1000, percentile(via_lb, 99) * 1000
    d50, d99 = percentile(via_direct, 50) * 1000, percentile(via_direct, 99) * 1000
    print(f"machine: {os.cpu_count()} CPUs; clients offer permessage-deflate: {compression is not None}")
    print(f"connections requested:           {args.connections}")
    print(f"connections held {args.hold:.0f} s:            {held}  (ping/pong answered before and after the hold)")
    print(f"failed handshakes:               {len(state.failed_handshakes)}")
    print(f"unexpected closes:               {len(state.unexpected)}  (goal 0)")
    print(f"heartbeats received while held:  {state.heartbeats}")
    print(f"handshake, sequential ({args.samples} each way):")
    print(f"  through LB + Cloud Armor:  p50 {lb50:6.2f} ms   p99 {lb99:6.2f} ms")
    print(f"  direct to the revision:    p50 {d50:6.2f} ms   p99 {d99:6.2f} ms")
    print(f"  ratio LB / direct:         p50 {lb50 / d50:5.2f}x    p99 {lb99 / d99:5.2f}x")
    hs = state.handshakes
    print(
        f"handshake under load ({args.connections} through the LB, {args.concurrency} in flight): "
        f"p50 {percentile(hs, 50) * 1000:.1f} ms  p99 {percentile(hs, 99) * 1000:.1f} ms  "
        f"(all open after {ramp:.1f} s)"
    )
    per = (peak - baseline) / held if held else float("nan")
    print(
        f"local cloud RSS: {baseline / 2**20:.1f} MiB before, {peak / 2**20:.1f} MiB peak → "
        f"{per / 1024:.1f} KiB per held connection"
    )
    for line in (state.failed_handshakes + state.unexpected)[:5]:
        print("  e.g.", line)


if __name__ == "__main__":
    main()
