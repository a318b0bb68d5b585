"""Revisions as local processes behind a WebSocket-capable load balancer with Cloud Armor."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from deployer.errors import LocalCloudError
from deployer.localcloud.world import World


async def start_runtime(
    world: World, api_app: web.Application, *, host: str, lb_port: int, **options: Any
) -> tuple[Any, web.AppRunner]:
    """Install the process runtime into ``world`` and start the load balancer on ``lb_port``."""
    raise LocalCloudError("the load balancer and process runtime are not built yet")
