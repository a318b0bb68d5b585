"""Builds the local cloud's aiohttp application and runs it.

``build_app(world)`` installs every API's state into the world and mounts its ``ROUTES`` behind
one middleware that, for each call: adds the configured latency, applies an injected fault,
renders ``ApiError`` in the API's own error shape (never a traceback), and appends to the
request log. ``LocalCloud`` runs it on a background thread (tests, demo, benchmarks);
``serve`` runs it in the foreground (``deployer localcloud up``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from deployer.errors import LocalCloudError
from deployer.localcloud.api import common, control
from deployer.localcloud.api.common import ApiError, Route
from deployer.localcloud.world import RequestRecord, World

log = structlog.get_logger("localcloud")

REQUEST_LOG_LIMIT = 100_000
WORLD = web.AppKey("world", World)


def api_modules() -> list[Any]:
    from deployer.localcloud.api.compute import models as compute_models
    from deployer.localcloud.api.compute import responses as compute_responses
    from deployer.localcloud.api.run import models as run_models
    from deployer.localcloud.api.run import responses as run_responses
    from deployer.localcloud.api.storage import models as storage_models
    from deployer.localcloud.api.storage import responses as storage_responses

    return [
        (run_models, run_responses),
        (compute_models, compute_responses),
        (storage_models, storage_responses),
    ]


def all_routes() -> list[Route]:
    routes = list(control.ROUTES)
    for _models, responses in api_modules():
        routes.extend(responses.ROUTES)
    return routes


def _make_handler(route: Route, world: World) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await route.handler(request, world)

    return handler


def _kill(pid: int) -> None:
    """The ``kill`` fault (a test harness for SIGKILL at a precise call, not Google behaviour)."""
    if pid > 0:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
        log.warning("localcloud.fault_killed", pid=pid)


def _fault_error(route: Route, world: World) -> ApiError | None:
    if route.flavor == "control":
        return None
    rule = world.faults.take(route.method, kind="http")
    if rule is None:
        return None
    message = rule.message or common.DEFAULT_FAULT_MESSAGE.get(rule.status, "Injected fault.")
    return ApiError(rule.status, message)


def build_app(world: World, routes: Iterable[Route] | None = None, *, log_requests: bool = False) -> web.Application:
    """``log_requests``: one structlog ``localcloud.request`` event per call (``deployer localcloud up``)."""
    for models, _responses in api_modules():
        if models.__name__.split(".")[-2] not in world.apis:
            models.install(world)

    @web.middleware
    async def google_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        started = time.time()
        t0 = time.perf_counter()
        route: Route | None = None
        match = request.match_info
        route_handler = getattr(match.route, "handler", None)
        route = getattr(route_handler, "route", None)
        fault = False
        kill = None
        try:
            if route is not None:
                delay = world.faults.latency_for(route.method)
                if delay > 0:
                    await asyncio.sleep(delay)
                if route.flavor != "control":
                    hook = world.faults.take(route.method, kind="hook")
                    if hook is not None and hook.hook is not None:
                        await asyncio.to_thread(hook.hook)
                    kill = world.faults.take(route.method, kind="kill")
                    if kill is not None and kill.when == "before":
                        _kill(kill.pid)  # the caller dies; its call is dropped unapplied
                        fault = True
                        raise ApiError(503, "The caller was killed before this call (local cloud test harness).")
                injected = _fault_error(route, world)
                if injected is not None:
                    fault = True
                    raise injected
            response = await handler(request)
            if kill is not None and kill.when == "after":
                _kill(kill.pid)  # applied; the caller dies before it reads the answer
                fault = True
        except ApiError as exc:
            response = exc.response(route.flavor if route else "control")
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            message = f"The requested URL {request.path} was not found on this server."
            if exc.status == 405:
                message = f"Method {request.method} is not allowed for {request.path}."
            response = ApiError(exc.status, message).response("compute")
        except Exception as exc:  # a bug in the emulator: answer 500 in Google's shape, keep the trace
            log.error("localcloud.internal_error", path=request.path, error=repr(exc), trace=traceback.format_exc())
            response = ApiError(500, f"Internal error in the local cloud: {exc!r}").response(
                route.flavor if route else "control"
            )
        status = response.status
        if len(world.requests) < REQUEST_LOG_LIMIT:
            world.requests.append(
                RequestRecord(
                    method=route.method if route else "",
                    http_method=request.method,
                    path=request.path,
                    query=request.query_string,
                    status=status,
                    started=started,
                    duration_ms=(time.perf_counter() - t0) * 1000,
                    fault=fault,
                )
            )
        if log_requests:
            log.info(
                "localcloud.request",
                method=route.method if route else "",
                http_method=request.method,
                path=request.path,
                status=status,
                duration_ms=round((time.perf_counter() - t0) * 1000, 3),
                fault=fault,
            )
        return response

    app = web.Application(middlewares=[google_middleware], client_max_size=64 * 1024 * 1024)
    app[WORLD] = world
    for route in routes if routes is not None else all_routes():
        h = _make_handler(route, world)
        h.route = route
        app.router.add_route(route.http_method, route.path, h)
    return app


SEED_MAX_BYTES = 16 * 1024 * 1024  # far above any world (configs/local-world.yaml is ~6 KiB)


def load_seed_file(path: str | Path) -> dict[str, Any]:
    import yaml

    p = Path(path)
    try:
        with p.open("rb") as fh:  # never read a device (/dev/zero) or an endless stream whole
            raw = fh.read(SEED_MAX_BYTES + 1)
        if len(raw) > SEED_MAX_BYTES:
            raise LocalCloudError(f"seed file {p} is larger than {SEED_MAX_BYTES // (1024 * 1024)} MiB")
        doc = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise LocalCloudError(f"seed file {p} is not UTF-8 text (byte {exc.start})") from exc
    except OSError as exc:
        raise LocalCloudError(f"cannot read seed file {p}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise LocalCloudError(f"seed file {p} is not valid YAML: {problem}{where}") from exc
    if not isinstance(doc, dict):
        raise LocalCloudError(f"seed file {p} must hold a mapping at the top level")
    return doc


class LocalCloud:
    """The local cloud on a background thread: ``with LocalCloud() as lc: lc.endpoint``.

    ``lb_port=None`` runs only the APIs (revisions become Ready at once); an int (0 = any free
    port) also runs revisions as processes behind the load balancer (the runtime).
    """

    def __init__(
        self,
        *,
        api_port: int = 0,
        lb_port: int | None = None,
        seed: int = 0,
        seed_doc: dict[str, Any] | None = None,
        host: str = "127.0.0.1",
        world: World | None = None,
        runtime_options: dict[str, Any] | None = None,
        log_requests: bool = False,
    ) -> None:
        self.world = world or World(seed=seed)
        self._log_requests = log_requests
        self.host = host
        self._api_port = api_port
        self._lb_port = lb_port
        self._seed_doc = seed_doc
        self._runtime_options = runtime_options or {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="localcloud", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._runners: list[web.AppRunner] = []
        self.api_port = 0
        self.lb_port: int | None = None
        self.runtime: Any = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    @property
    def lb_url(self) -> str:
        if self.lb_port is None:
            raise LocalCloudError("this local cloud runs no load balancer (start it with lb_port)")
        return f"http://{self.host}:{self.lb_port}"

    def start(self) -> LocalCloud:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise LocalCloudError(
                f"local cloud failed to start: {self._error}", hint=getattr(self._error, "hint", None)
            ) from self._error
        if not self._ready.is_set():
            raise LocalCloudError("local cloud did not start within 30 s")
        return self

    async def _startup(self) -> None:
        app = build_app(self.world, log_requests=self._log_requests)
        if self._lb_port is not None:
            from deployer.localcloud.runtime import start_runtime

            self.runtime, lb_runner = await start_runtime(
                self.world, app, host=self.host, lb_port=self._lb_port, **self._runtime_options
            )
            self._runners.append(lb_runner)
            self.lb_port = lb_runner.addresses[0][1]
        if self._seed_doc is not None:
            control.seed_world(self.world, self._seed_doc)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._api_port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            from deployer.localcloud.listen import listen_error

            raise listen_error(self.host, self._api_port, exc) from exc
        self._runners.append(runner)
        self.api_port = runner.addresses[0][1]
        if self.runtime is not None and hasattr(self.runtime, "api_url"):
            self.runtime.api_url = self.endpoint  # revision failure messages link to their logs here

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._startup())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the local cloud's loop from another thread."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _shutdown(self) -> None:
        for runner in reversed(self._runners):
            with contextlib.suppress(Exception):
                await runner.cleanup()
        self.world.runtime.close()

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self.call(self._shutdown(), timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> LocalCloud:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(*, api_port: int, lb_port: int | None, seed_file: str | None, host: str = "127.0.0.1") -> None:
    """Run in the foreground until SIGINT/SIGTERM (``deployer localcloud up``)."""
    seed_doc = load_seed_file(seed_file) if seed_file else None
    cloud = LocalCloud(api_port=api_port, lb_port=lb_port, seed_doc=seed_doc, host=host, log_requests=True)
    stop = threading.Event()
    started = False

    def _on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        cloud.start()
        started = True
        lb = f", load balancer on {cloud.lb_url}" if cloud.lb_port is not None else ""
        log.info(
            "localcloud.ready",
            api=cloud.endpoint,
            lb=cloud.lb_url if cloud.lb_port else None,
            project=cloud.world.project,
            region=cloud.world.region,
        )
        print(f"local cloud ready: API on {cloud.endpoint}{lb}  (Ctrl-C to stop)", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        cloud.stop()
        for s, h in old.items():
            signal.signal(s, h)
        if started:
            print("local cloud stopped", flush=True)
