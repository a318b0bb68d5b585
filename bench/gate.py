"""Benchmark: what the WebSocket gate costs per connection, against a bare ``websockets`` loop.

Starts a local echo server in its own process (its CPU is not counted), then in this process, alternating
rounds so both see the same machine state:

- bare:  ``websockets.asyncio.client.connect`` → one ping → close, N connections at concurrency C
- gate:  ``deployer.gate.run_gate`` making the same connections (upgrade, one ping, clean close), with its
         per-step timing, classification and verdict

It prints handshakes per second, the CPU time per connection of each (``time.process_time`` of this
process) and their ratio (goal ≤ 1.3), then holds N connections open with the gate and prints resident
memory per held connection (RSS growth / open sockets at the peak).

    .venv/bin/python bench/gate.py [--connections 1000] [--concurrency 200] [--rounds 3] [--hold 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

GOAL_RATIO = 1.3

ECHO_SERVER = """
import asyncio, sys
from websockets.asyncio.server import serve

async def echo(ws):
    async for message in ws:
        await ws.send(message)

async def main():
    async with serve(echo, "127.0.0.1", 0, backlog=4096, ping_interval=None) as server:
        print(next(iter(server.sockets)).getsockname()[1], flush=True)
        await asyncio.Future()

asyncio.run(main())
"""


async def bare(url: str, n: int, concurrency: int) -> int:
    from websockets.asyncio.client import connect

    sem = asyncio.Semaphore(concurrency)
    ok = 0

    async def one() -> None:
        nonlocal ok
        async with sem, connect(url, proxy=None, ping_interval=None) as ws:
            await (await ws.ping())
            ok += 1

    await asyncio.gather(*(one() for _ in range(n)))
    return ok


async def gated(url: str, n: int, concurrency: int) -> int:
    from deployer.gate import GateSpec, Thresholds, run_gate

    spec = GateSpec(url, connections=n, concurrency=concurrency, pings=1, thresholds=Thresholds(min_samples=1))
    verdict = await run_gate(spec)
    if verdict.outcome.value != "Passed":
        raise SystemExit(f"gate did not pass the echo server: {verdict.reasons}")
    return verdict.counts.ok


def measure(fn: object, url: str, n: int, concurrency: int) -> tuple[float, float, int]:
    """(cpu seconds, wall seconds, connections ok) of one round in a fresh event loop."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    ok = asyncio.run(fn(url, n, concurrency))  # type: ignore[operator]
    return time.process_time() - cpu0, time.perf_counter() - wall0, ok


async def held_memory(url: str, n: int, concurrency: int, hold_s: float) -> tuple[int, int, int]:
    """Hold n connections with the gate; (baseline RSS, peak RSS growth, open sockets at that peak)."""
    import psutil

    from deployer.gate import GateSpec, Thresholds, run_gate

    proc = psutil.Process()
    base_rss, base_fds = proc.memory_info().rss, proc.num_fds()
    peak = (0, 0)
    spec = GateSpec(
        url, connections=n, concurrency=concurrency, pings=0, hold_s=hold_s, thresholds=Thresholds(min_samples=1)
    )
    task = asyncio.ensure_future(run_gate(spec))
    while not task.done():
        fds = proc.num_fds() - base_fds
        if fds >= peak[1]:
            peak = (proc.memory_info().rss - base_rss, fds)
        await asyncio.sleep(0.1)
    verdict = task.result()
    if verdict.outcome.value != "Passed":
        raise SystemExit(f"gate did not pass the held run: {verdict.reasons}")
    return base_rss, peak[0], peak[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hold", type=float, default=4.0)
    args = parser.parse_args()

    from deployer import logs

    logs.configure(level="warning")
    server = subprocess.Popen([sys.executable, "-c", ECHO_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = f"ws://127.0.0.1:{server.stdout.readline().strip()}/ws"
        n, c = args.connections, args.concurrency
        print(f"echo server {url}; {n} connections at concurrency {c}, {args.rounds} rounds each (alternating)")
        measure(bare, url, 100, c)  # warm up both paths (imports, caches)
        measure(gated, url, 100, c)
        results: dict[str, list[tuple[float, float, int]]] = {"bare": [], "gate": []}
        for _ in range(args.rounds):
            for name, fn in (("bare", bare), ("gate", gated)):
                cpu, wall, ok = measure(fn, url, n, c)
                if ok != n:
                    raise SystemExit(f"{name}: only {ok}/{n} connections succeeded")
                results[name].append((cpu, wall, ok))

        def per_conn_us(name: str) -> float:
            return statistics.median(cpu for cpu, _, _ in results[name]) / n * 1e6

        def rate(name: str) -> float:
            return n / statistics.median(wall for _, wall, _ in results[name])

        bare_us, gate_us = per_conn_us("bare"), per_conn_us("gate")
        ratio = gate_us / bare_us
        print(f"bare websockets: {rate('bare'):8.0f} handshakes/s   CPU {bare_us:7.1f} µs/connection")
        print(f"deployer gate:   {rate('gate'):8.0f} handshakes/s   CPU {gate_us:7.1f} µs/connection")
        print(
            f"gate/bare CPU per connection: {ratio:.2f} (goal ≤ {GOAL_RATIO}) {'OK' if ratio <= GOAL_RATIO else 'OVER'}"
        )

        base, grown, fds = asyncio.run(held_memory(url, n, n, args.hold))
        per_conn = grown / fds if fds else float("nan")
        print(
            f"held {fds} connections for {args.hold:g}s: RSS {base / 2**20:.1f} MiB → +{grown / 2**20:.1f} MiB, "
            f"{per_conn / 1024:.1f} KiB per held connection"
        )
        return 0 if ratio <= GOAL_RATIO else 1
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
