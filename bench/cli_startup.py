"""Benchmark: how long the CLI takes to start, and to run an offline ``deployer check``.

Runs each command N times as a fresh subprocess (what a user or Cloud Build step pays) and prints the
median and spread of the wall time, against the goal of 0.5 s each:

- ``deployer --help``
- ``deployer check -c configs/staging.yaml``            (offline: no Google library may load)
- ``deployer check -c configs/examples/seed-proposal.yaml``

It also prints the reference cost of a bare ``python -c pass`` on this machine (the floor no command
can go below), and, with ``--importtime``, the ten slowest imports of the offline check
(``python -X importtime``), which is where to look when a figure is over the goal.

    .venv/bin/python bench/cli_startup.py [--runs 9] [--importtime]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOAL_S = 0.5
PY = sys.executable


def wall(argv: list[str], runs: int) -> list[float]:
    times = []
    env = {**os.environ, "COLUMNS": "120"}
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - t0)
    return times


def slowest_imports(argv: list[str], n: int = 10) -> list[tuple[int, str]]:
    proc = subprocess.run([PY, "-X", "importtime", *argv], cwd=ROOT, capture_output=True, text=True, check=False)
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        parts = line.split("|")
        try:
            rows.append((int(parts[1]), parts[2].rstrip()))
        except ValueError:
            continue
    return sorted(rows, reverse=True)[:n]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--importtime", action="store_true", help="also list the slowest imports of check")
    args = parser.parse_args()

    cli = [PY, "-m", "deployer"]
    cases = [
        ("python -c pass (floor)", [PY, "-c", "pass"]),
        ("deployer --help", [*cli, "--help"]),
        ("deployer check (staging, offline)", [*cli, "check", "-c", "configs/staging.yaml"]),
        ("deployer check (seed proposal, offline)", [*cli, "check", "-c", "configs/examples/seed-proposal.yaml"]),
    ]
    print(f"{'command':42} {'median':>8} {'min':>7} {'max':>7}  goal {GOAL_S:.1f} s   ({args.runs} runs each)")
    over = False
    for name, argv in cases:
        times = wall(argv, args.runs)
        med = statistics.median(times)
        floor = name.startswith("python")
        verdict = "" if floor else ("ok" if med < GOAL_S else "OVER")
        over |= verdict == "OVER"
        print(f"{name:42} {med:7.3f}s {min(times):6.3f}s {max(times):6.3f}s  {verdict}")
    if args.importtime:
        print("\nslowest imports of the offline check (cumulative µs):")
        for micros, module in slowest_imports(["-m", "deployer", "check", "-c", "configs/staging.yaml"]):
            print(f"  {micros:>9}  {module}")
    return 0 if not over else 1


if __name__ == "__main__":
    sys.exit(main())
