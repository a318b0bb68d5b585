"""The local cloud's own control plane, under ``/_localcloud/``.

- ``GET  /_localcloud/health``            200 when serving
- ``POST /_localcloud/reset``             forget everything (optional ``{"seed": N}``)
- ``POST /_localcloud/seed``              build a whole world from a YAML or JSON document
- ``GET|POST|DELETE /_localcloud/faults`` fault rules: ``{"method", "status", "count", "message", "kind",
  "skip"}``; the test harness's ``{"kind": "kill", "pid", "when": "before"|"after"}`` (see ``world.FaultRule``)
- ``POST /_localcloud/latency``           ``{"<method or prefix*>": seconds, ...}``
- ``POST /_localcloud/operations``        operation durations: ``{"run": s, "compute": s, "<method>": s}``
- ``GET|DELETE /_localcloud/requests``    the request log
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

import yaml
from aiohttp import web

from deployer.localcloud.api.common import ApiError, Route, json_response, read_json_object
from deployer.localcloud.world import FaultRule, World

# The order resources are seeded in: what is referenced must exist first. "runtime" (present when
# revisions run as processes) takes the seed's ``secrets``/``secrets_file`` before revisions start.
SEED_ORDER = ("runtime", "run", "compute", "storage")
# What the runtime reads (runtime/control.py); accepted when no runtime runs (no --lb-port), as before.
RUNTIME_SEED_KEYS = ("secrets", "secrets_file")


async def health(request: web.Request, world: World) -> web.StreamResponse:
    return json_response({"status": "ok", "project": world.project, "region": world.region})


async def reset(request: web.Request, world: World) -> web.StreamResponse:
    body = await read_json_object(request)
    world.reset(seed=body.get("seed"))
    return json_response({"status": "reset"})


def seed_world(world: World, doc: dict[str, Any]) -> None:
    """Reset, then create every resource in ``doc`` through each API's own rules."""
    if not isinstance(doc, dict):
        raise ApiError(400, "seed document must be a mapping")
    apis = (getattr(api, "seed_keys", ()) for api in world.apis.values())
    known = {"seed", "project", "region", *RUNTIME_SEED_KEYS}.union(*apis)
    unknown = sorted(str(k) for k in doc if k not in known)
    if unknown:  # a misspelt key would otherwise seed nothing, silently
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ApiError(400, f"seed: unknown top-level key '{unknown[0]}'{hint} (known: {', '.join(sorted(known))})")
    world.reset(seed=doc.get("seed"))
    world.project = str(doc.get("project", world.project))
    world.region = str(doc.get("region", world.region))
    for name in SEED_ORDER:
        api = world.apis.get(name)
        if api is not None:
            api.seed(doc)


async def seed(request: web.Request, world: World) -> web.StreamResponse:
    raw = await request.text()
    try:
        doc = yaml.safe_load(raw) or {}
    except yaml.YAMLError as exc:
        raise ApiError(400, f"seed document is not valid YAML: {exc}") from exc
    seed_world(world, doc)
    return json_response({"status": "seeded", "project": world.project, "region": world.region})


async def faults(request: web.Request, world: World) -> web.StreamResponse:
    if request.method == "DELETE":
        world.faults.rules.clear()
    elif request.method == "POST":
        body = await read_json_object(request)
        kind = str(body.get("kind", "http"))
        try:
            rule = FaultRule(
                method=str(body["method"]),
                status=int(body["status"]) if kind != "kill" else int(body.get("status", 0)),
                count=int(body.get("count", 1)),
                message=str(body.get("message", "")),
                kind=kind,
                skip=int(body.get("skip", 0)),
                pid=int(body.get("pid", 0)),
                when=str(body.get("when", "before")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ApiError(400, f"fault needs method and status: {exc}") from exc
        if rule.kind not in ("http", "operation", "kill"):
            raise ApiError(400, "fault kind must be 'http', 'operation' or 'kill'")
        if rule.kind == "kill" and (rule.pid <= 0 or rule.when not in ("before", "after")):
            raise ApiError(400, "a kill fault needs pid (> 0) and when ('before' or 'after')")
        world.faults.add(rule)
    return json_response({"faults": [_shown(r) for r in world.faults.rules]})


def _shown(rule: FaultRule) -> dict[str, Any]:
    out = {f.name: getattr(rule, f.name) for f in dataclasses.fields(rule) if f.name != "hook"}
    out["hook"] = rule.hook is not None
    return out


async def latency(request: web.Request, world: World) -> web.StreamResponse:
    body = await read_json_object(request)
    for method, seconds in body.items():
        world.faults.latency[method] = float(seconds)
    return json_response({"latency": world.faults.latency})


async def operations(request: web.Request, world: World) -> web.StreamResponse:
    body = await read_json_object(request)
    for key, seconds in body.items():
        world.faults.operation_seconds[key] = float(seconds)
    return json_response({"operations": world.faults.operation_seconds})


async def requests_log(request: web.Request, world: World) -> web.StreamResponse:
    if request.method == "DELETE":
        world.requests.clear()
    return json_response({"requests": [dataclasses.asdict(r) for r in world.requests]})


P = "/_localcloud"
ROUTES: list[Route] = [
    Route("GET", f"{P}/health", "control.health", health, "control"),
    Route("POST", f"{P}/reset", "control.reset", reset, "control"),
    Route("POST", f"{P}/seed", "control.seed", seed, "control"),
    Route("GET", f"{P}/faults", "control.faults", faults, "control"),
    Route("POST", f"{P}/faults", "control.faults", faults, "control"),
    Route("DELETE", f"{P}/faults", "control.faults", faults, "control"),
    Route("POST", f"{P}/latency", "control.latency", latency, "control"),
    Route("POST", f"{P}/operations", "control.operations", operations, "control"),
    Route("GET", f"{P}/requests", "control.requests", requests_log, "control"),
    Route("DELETE", f"{P}/requests", "control.requests", requests_log, "control"),
]
