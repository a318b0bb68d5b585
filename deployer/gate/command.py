"""``deployer gate``: command-line values → ``GateSpec`` → run → rendered verdict → exit code.

Kept out of ``deployer/cli.py`` so the CLI stays a list of thin commands (and ``scripts/validate_websocket.py``
reuses the same path). Exit codes: 0 Passed, 1 Failed, 3 Inconclusive or Error, 2 usage.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from deployer.errors import UsageError
from deployer.gate.spec import GateSpec, loopback_target, parse_header
from deployer.gate.verdict import DEFAULT_MIN_SAMPLES, Thresholds

T = TypeVar("T")

# A progress line is worth drawing only when the run takes a while.
_PROGRESS_MIN_HOLD_S = 1.0
_PROGRESS_MIN_CONNECTIONS = 100


def build_spec(
    url: str,
    *,
    connections: int,
    concurrency: int,
    hold_s: float,
    pings: int,
    send: str | None,
    expect: str | None,
    headers: Sequence[str],
    bearer_env: str | None,
    id_token: bool,
    audience: str | None,
    subprotocols: Sequence[str],
    origin: str | None,
    host: str | None,
    p95_ms: float | None,
    min_samples: int | None,
    open_timeout_s: float,
    ping_timeout_s: float,
    app_timeout_s: float,
    max_failure_ratio: float,
    max_error_ratio: float,
    ca_file: str | None,
    compression: bool,
    env: Mapping[str, str] | None = None,
) -> GateSpec:
    """Validate the command line into a spec; every problem is one ``UsageError`` line (exit 2)."""
    env = os.environ if env is None else env
    if bearer_env is not None and not env.get(bearer_env):
        raise UsageError(f"environment variable {bearer_env} (--bearer-env) is empty or not set")
    if ca_file is not None and not os.path.isfile(ca_file):
        raise UsageError(f"--ca-file {ca_file}: " + ("is a directory" if os.path.isdir(ca_file) else "no such file"))
    _check_thresholds(p95_ms=p95_ms, max_failure_ratio=max_failure_ratio, max_error_ratio=max_error_ratio)
    thresholds = Thresholds(
        min_samples=resolve_min_samples(min_samples, connections),
        max_failure_ratio=max_failure_ratio,
        max_error_ratio=max_error_ratio,
        **({"handshake_p95_ms": p95_ms} if p95_ms is not None else {}),
    )
    if host is None:  # ws://chat.localhost:PORT/ws: 127.0.0.1, the name as Host (as the deploy's gates do)
        url, host = loopback_target(url)
    return GateSpec(
        url=url,
        connections=connections,
        concurrency=concurrency,
        open_timeout_s=open_timeout_s,
        pings=pings,
        ping_timeout_s=ping_timeout_s,
        send=send,
        expect=expect,
        app_timeout_s=app_timeout_s,
        hold_s=hold_s,
        headers=tuple(parse_header(h) for h in headers),
        bearer_env=bearer_env,
        id_token=id_token,
        audience=audience,
        subprotocols=tuple(subprotocols),
        origin=origin,
        host=host,
        compression=compression,
        ca_file=ca_file,
        thresholds=thresholds,
    )


def resolve_min_samples(given: int | None, connections: int) -> int:
    """``--min-samples``: the default asks for 10 measured connections, or every one of fewer (``-n 3``
    needs 3, so a healthy target can pass); a value given on purpose that is more than ``--connections``
    could never be met, so it is refused rather than ending every run Inconclusive."""
    if given is None:
        return max(1, min(DEFAULT_MIN_SAMPLES, connections))
    if given < 1:
        raise UsageError(f"--min-samples: must be at least 1 (got {given})")
    if connections >= 1 and given > connections:
        raise UsageError(
            f"--min-samples: {given} is more than --connections {connections}, so the gate could never pass "
            f"(at most {connections}; leave it out to require every connection)"
        )
    return given


def _check_thresholds(*, p95_ms: float | None, max_failure_ratio: float, max_error_ratio: float) -> None:
    """The threshold flags, each refused under its own name (``Thresholds`` names fields, not flags)."""
    if p95_ms is not None and not p95_ms > 0:
        raise UsageError(f"--p95-ms: must be a positive number of milliseconds (got {p95_ms:g})")
    for flag, value in (("--max-failure-ratio", max_failure_ratio), ("--max-error-ratio", max_error_ratio)):
        if not 0.0 <= value <= 1.0:
            raise UsageError(f"{flag}: must be a fraction between 0 and 1 (got {value:g})")


def run_command(spec: GateSpec, *, json_out: bool, verbose: bool = False) -> int:
    """Run the gate, print the table (or JSON) on stdout, return the exit code."""
    from rich.console import Console

    from deployer import logs
    from deployer.gate.probe import run_gate
    from deployer.gate.report import progress_line, render, to_json_text

    logs.configure(level="debug" if verbose else "warning")
    err = Console(stderr=True)
    long_run = spec.hold_s >= _PROGRESS_MIN_HOLD_S or spec.connections >= _PROGRESS_MIN_CONNECTIONS
    with progress_line(err, spec.connections, enabled=err.is_terminal and long_run) as on_progress:
        verdict = asyncio.run(_interruptible(run_gate(spec, on_progress=on_progress)))
    if json_out:
        sys.stdout.write(to_json_text(verdict) + "\n")
        sys.stdout.flush()
    else:
        out = Console(highlight=False)
        if not out.is_terminal:  # CI logs: no 80-column wrapping of reasons and bodies
            out = Console(highlight=False, width=160)
        render(verdict, out)
    return verdict.exit_code


async def _interruptible(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro``; Ctrl-C cancels it from the event loop and ends as ``KeyboardInterrupt``.

    asyncio.run's own Ctrl-C handler runs as a plain signal handler, so its ``cancel()`` can land in the
    middle of a loop callback (CPython 3.11's ``_sock_connect_cb`` then logs "InvalidStateError" and a
    traceback on stderr). ``add_signal_handler`` runs it between callbacks instead."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(coro)
    interrupted: list[bool] = []

    def on_sigint() -> None:
        interrupted.append(True)
        task.cancel()

    installed = False
    if threading.current_thread() is threading.main_thread():
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGINT, on_sigint)
            installed = True
    try:
        return await task
    except asyncio.CancelledError:
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGINT)
