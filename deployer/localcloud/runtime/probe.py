"""Startup probes: when is a revision's process ready to serve?

``plan_for`` turns the template's ``startup_probe`` (a ``run_v2.Probe``) into a ``ProbePlan``;
``run_probe`` executes one with injected ``sleep``/``clock`` and an ``attempt`` callable, so the
schedule is tested without sockets. ``tcp_attempt``/``http_attempt`` are the real attempts.

Rules (``run_v2.Probe`` field docs, [G-proto] ``google/cloud/run/v2/k8s.min.proto``):
- no ``http_get`` ⇒ a TCP probe (Cloud Run's default startup probe is TCP);
- an explicit probe runs ``initial_delay_seconds`` after start, then every ``period_seconds``; each
  attempt has ``timeout_seconds``; ``failure_threshold`` failed attempts fail the revision;
- an HTTP probe succeeds on a 2xx/3xx answer (Kubernetes' rule, which Cloud Run's probes follow —
  [Inference], not quoted).

Local deviation (documented in the README): Cloud Run's *default* probe, which the API renders as
``tcpSocket`` with ``timeoutSeconds: 240, periodSeconds: 240, failureThreshold: 1`` (recorded in
``gcp-http/compute-serverless-neg-cloudrun.http.log``), allows 240 s. Locally an absent or default
probe polls the port every 50 ms for ``default_timeout_s`` (runtime option ``startup_timeout``,
default 20 s) instead, so a revision that never listens fails in seconds, not minutes. Explicit probes
keep their own values. The probe always targets the port the local cloud assigned (``PORT``), whatever
port the probe names: locally there is no container port mapping.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

# The probe Cloud Run adds when the template has none (recorded traffic, see module doc).
CLOUD_RUN_DEFAULT_PROBE = (240, 240, 1)  # (timeout_seconds, period_seconds, failure_threshold)
DEFAULT_POLL_S = 0.05


@dataclass(frozen=True)
class ProbePlan:
    kind: str  # "tcp" | "http"
    path: str = "/"
    headers: tuple[tuple[str, str], ...] = ()
    initial_delay_s: float = 0.0
    period_s: float = DEFAULT_POLL_S
    timeout_s: float = 1.0
    failure_threshold: int = 1
    configured: bool = False  # False: Cloud Run's default probe, replaced by a local deadline
    deadline_s: float = 20.0  # only for the default probe

    @property
    def budget_s(self) -> float:
        """The longest a startup can take before the probe gives up."""
        if not self.configured:
            return self.deadline_s
        return self.initial_delay_s + self.period_s * self.failure_threshold + self.timeout_s


def plan_for(probe: Any | None, default_timeout_s: float) -> ProbePlan:
    """The plan for a ``run_v2.Probe`` (or None)."""
    if probe is None:
        return ProbePlan(kind="tcp", deadline_s=default_timeout_s)
    http = getattr(probe, "http_get", None)
    is_http = bool(http) and bool(getattr(http, "path", "") or getattr(http, "port", 0))
    timeout = int(getattr(probe, "timeout_seconds", 0) or 0)
    period = int(getattr(probe, "period_seconds", 0) or 0)
    threshold = int(getattr(probe, "failure_threshold", 0) or 0)
    delay = int(getattr(probe, "initial_delay_seconds", 0) or 0)
    if not is_http and (timeout, period, threshold) in (CLOUD_RUN_DEFAULT_PROBE, (0, 0, 0)) and delay == 0:
        return ProbePlan(kind="tcp", deadline_s=default_timeout_s)
    # Proto defaults when a field is left 0: timeout 1 s, period 10 s, threshold 3.
    timeout = timeout or 1
    period = period or 10
    threshold = threshold or 3
    headers: tuple[tuple[str, str], ...] = ()
    path = "/"
    if is_http:
        path = getattr(http, "path", "") or "/"
        headers = tuple((h.name, h.value) for h in getattr(http, "http_headers", []) or [])
    return ProbePlan(
        kind="http" if is_http else "tcp",
        path=path,
        headers=headers,
        initial_delay_s=float(delay),
        period_s=float(period),
        timeout_s=float(timeout),
        failure_threshold=threshold,
        configured=True,
    )


class ProbeResult(Enum):
    READY = "ready"
    FAILED = "failed"


Attempt = Callable[[float], Awaitable[bool]]


async def run_probe(
    plan: ProbePlan,
    attempt: Attempt,
    *,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> ProbeResult:
    """Attempt until ready or out of budget. ``attempt(timeout_s)`` answers whether one check passed."""
    start = clock()
    if not plan.configured:
        while True:
            remaining = plan.deadline_s - (clock() - start)
            if remaining <= 0:
                return ProbeResult.FAILED
            if await attempt(min(1.0, remaining)):
                return ProbeResult.READY
            await sleep(min(plan.period_s, max(0.0, plan.deadline_s - (clock() - start))))
    if plan.initial_delay_s:
        await sleep(plan.initial_delay_s)
    failures = 0
    while True:
        began = clock()
        if await attempt(plan.timeout_s):
            return ProbeResult.READY
        failures += 1
        if failures >= plan.failure_threshold:
            return ProbeResult.FAILED
        await sleep(max(0.0, plan.period_s - (clock() - began)))


async def tcp_attempt(host: str, port: int, timeout_s: float) -> bool:
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def http_attempt(host: str, port: int, path: str, headers: tuple[tuple[str, str], ...], timeout_s: float) -> bool:
    async def once() -> bool:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            lines = [f"GET {path} HTTP/1.1", f"Host: localhost:{port}", "User-Agent: GoogleHC/1.0", "Connection: close"]
            lines += [f"{k}: {v}" for k, v in headers]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            await writer.drain()
            status_line = await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        parts = status_line.split()
        return len(parts) >= 2 and parts[1].isdigit() and 200 <= int(parts[1]) < 400

    try:
        return await asyncio.wait_for(once(), timeout_s)
    except (OSError, TimeoutError, UnicodeError):
        return False
