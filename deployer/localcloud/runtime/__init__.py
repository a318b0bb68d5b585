"""Revisions as local processes behind a WebSocket-capable load balancer with Cloud Armor.

``start_runtime`` (called by ``LocalCloud`` when it runs with ``lb_port``) installs the process
runtime as ``world.runtime``, mounts the runtime's control routes on the API app, starts the load
balancer and sets ``world.lb_url`` (so Cloud Run renders ``http://SERVICE.localhost:PORT`` URIs).

Modules: ``images`` (image → command), ``secrets`` (local Secret Manager values), ``failures``
(Cloud Run's wording for revisions that cannot serve), ``probe`` (startup probes), ``supervise`` (the
per-revision watchdog), ``processes`` (the runtime), ``routing`` (pure URL map / NEG / traffic
logic), ``armor`` (pure Cloud Armor decisions), ``proxy`` (HTTP and WebSocket relaying), ``lb`` (the
load balancer), ``control`` (``/_localcloud/revisions…`` and ``/_localcloud/lb/requests``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from deployer.localcloud.world import World


async def start_runtime(
    world: World, api_app: web.Application, *, host: str, lb_port: int, **options: Any
) -> tuple[Any, web.AppRunner]:
    """Install the process runtime into ``world`` and start the load balancer on ``lb_port``."""
    from deployer.localcloud.runtime.control import RuntimeHook, routes
    from deployer.localcloud.runtime.lb import LoadBalancer
    from deployer.localcloud.runtime.options import RuntimeOptions
    from deployer.localcloud.runtime.processes import ProcessRuntime

    opts = RuntimeOptions.from_kwargs(options)
    runtime = ProcessRuntime(world, asyncio.get_running_loop(), opts, host=host)
    lb = LoadBalancer(world, runtime, opts, host=host)
    for route in routes(runtime, lb):
        handler = _route_handler(route, world)
        api_app.router.add_route(route.http_method, route.path, handler)
    runner = web.AppRunner(lb.app(), access_log=None, handle_signals=False, shutdown_timeout=opts.lb_shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, host, lb_port, reuse_address=True, backlog=4096)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        from deployer.localcloud.listen import listen_error

        raise listen_error(host, lb_port, exc, what=" for the load balancer", flag="--lb-port") from exc
    port = runner.addresses[0][1]
    world.runtime = runtime
    world.apis["runtime"] = RuntimeHook(runtime, lb)
    world.lb_url = f"http://{host}:{port}"
    return runtime, runner


def _route_handler(route: Any, world: World) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await route.handler(request, world)

    handler.route = route  # type: ignore[attr-defined]  # the API middleware logs it like any route
    return handler
