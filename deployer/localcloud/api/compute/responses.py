"""Wire layer of the emulated Compute API: routes as data, query parameters, list and wait.

Paths and query parameters are the ones ``google-cloud-compute``'s REST transport builds
(``compute_v1/services/*/transports/rest_base.py``); bodies are parsed strictly with the
``compute_v1`` message classes in ``models`` (via ``wire``). Method ids (faults, latency, the request
log) are ``compute.<collection>.<verb>``, e.g. ``compute.backendServices.patch``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from deployer.localcloud.api.common import ApiError, Route, json_response, query_bool, read_json_object
from deployer.localcloud.api.compute.links import BASE, global_link, regional_link
from deployer.localcloud.api.compute.models import State
from deployer.localcloud.world import World

FLAVOR = "compute"
P = "/compute/v1/projects/{project}"
G = P + "/global"
R = P + "/regions/{region}"
_MAX_RESULTS = 500  # Compute's cap for maxResults


def _state(world: World) -> State:
    state: State = world.apis["compute"]
    return state


def _arg(request: web.Request, name: str) -> str:
    return request.match_info[name]


def _request_id(request: web.Request) -> str | None:
    return request.query.get("requestId") or None


def _int_query(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ApiError(
            400, f"Invalid value for field '{name}': '{raw}'. Must be an integer.", reason="invalid"
        ) from exc


def _list(request: web.Request, kind: str, items: list[dict[str, Any]], self_link: str) -> web.Response:
    """A Compute list page (``maxResults``/``pageToken``); filters are refused rather than ignored."""
    if request.query.get("filter"):
        raise ApiError(
            400,
            "Invalid value for field 'filter': the local cloud does not evaluate list filters; list without one.",
            reason="invalid",
        )
    size = _int_query(request, "maxResults", _MAX_RESULTS)
    if not 0 < size <= _MAX_RESULTS:
        raise ApiError(400, f"Invalid value for field 'maxResults': '{size}'. Must be between 1 and 500.")
    start = _int_query(request, "pageToken", 0)
    body: dict[str, Any] = {
        "kind": kind,
        "id": self_link.removeprefix(BASE + "/"),
        "items": items[start : start + size],
        "selfLink": self_link,
    }
    if start + size < len(items):
        body["nextPageToken"] = str(start + size)
    return json_response(body)


# ---- backend services --------------------------------------------------------------------------
async def bs_get(request: web.Request, world: World) -> web.StreamResponse:
    return json_response(_state(world).get_backend_service(_arg(request, "project"), _arg(request, "name")))


async def bs_list(request: web.Request, world: World) -> web.StreamResponse:
    project = _arg(request, "project")
    items = _state(world).list_backend_services(project)
    return _list(request, "compute#backendServiceList", items, global_link(project, "backendServices"))


async def bs_insert(request: web.Request, world: World) -> web.StreamResponse:
    body = await read_json_object(request)
    op = _state(world).insert_backend_service(_arg(request, "project"), body, request_id=_request_id(request))
    return json_response(op)


async def bs_patch(request: web.Request, world: World) -> web.StreamResponse:
    body = await read_json_object(request)
    state, project, name = _state(world), _arg(request, "project"), _arg(request, "name")
    return json_response(state.patch_backend_service(project, name, body, request_id=_request_id(request)))


async def bs_update(request: web.Request, world: World) -> web.StreamResponse:
    body = await read_json_object(request)
    state, project, name = _state(world), _arg(request, "project"), _arg(request, "name")
    return json_response(state.update_backend_service(project, name, body, request_id=_request_id(request)))


async def bs_delete(request: web.Request, world: World) -> web.StreamResponse:
    state, project, name = _state(world), _arg(request, "project"), _arg(request, "name")
    return json_response(state.delete_backend_service(project, name, request_id=_request_id(request)))


async def bs_set_security_policy(request: web.Request, world: World) -> web.StreamResponse:
    body = await read_json_object(request)
    state, project, name = _state(world), _arg(request, "project"), _arg(request, "name")
    return json_response(state.set_security_policy(project, name, body, request_id=_request_id(request)))


# ---- security policies -------------------------------------------------------------------------
async def sp_get(request: web.Request, world: World) -> web.StreamResponse:
    return json_response(_state(world).get_security_policy(_arg(request, "project"), _arg(request, "name")))


async def sp_list(request: web.Request, world: World) -> web.StreamResponse:
    project = _arg(request, "project")
    items = _state(world).list_security_policies(project)
    return _list(request, "compute#securityPolicyList", items, global_link(project, "securityPolicies"))


async def sp_insert(request: web.Request, world: World) -> web.StreamResponse:
    body = await read_json_object(request)
    op = _state(world).insert_security_policy(
        _arg(request, "project"),
        body,
        request_id=_request_id(request),
        validate_only=query_bool(request, "validateOnly"),
    )
    return json_response(op)


async def sp_patch(request: web.Request, world: World) -> web.StreamResponse:
    body = await read_json_object(request)
    op = _state(world).patch_security_policy(
        _arg(request, "project"),
        _arg(request, "name"),
        body,
        request_id=_request_id(request),
        update_mask=request.query.get("updateMask"),
    )
    return json_response(op)


async def sp_delete(request: web.Request, world: World) -> web.StreamResponse:
    state, project, name = _state(world), _arg(request, "project"), _arg(request, "name")
    return json_response(state.delete_security_policy(project, name, request_id=_request_id(request)))


async def sp_add_rule(request: web.Request, world: World) -> web.StreamResponse:
    body = await read_json_object(request)
    state, project, name = _state(world), _arg(request, "project"), _arg(request, "name")
    return json_response(state.add_rule(project, name, body, validate_only=query_bool(request, "validateOnly")))


async def sp_patch_rule(request: web.Request, world: World) -> web.StreamResponse:
    body = await read_json_object(request)
    op = _state(world).patch_rule(
        _arg(request, "project"),
        _arg(request, "name"),
        _int_query(request, "priority", 0),
        body,
        update_mask=request.query.get("updateMask"),
        validate_only=query_bool(request, "validateOnly"),
    )
    return json_response(op)


async def sp_remove_rule(request: web.Request, world: World) -> web.StreamResponse:
    state, project, name = _state(world), _arg(request, "project"), _arg(request, "name")
    return json_response(state.remove_rule(project, name, _int_query(request, "priority", 0)))


async def sp_get_rule(request: web.Request, world: World) -> web.StreamResponse:
    state, project, name = _state(world), _arg(request, "project"), _arg(request, "name")
    return json_response(state.get_rule(project, name, _int_query(request, "priority", 0)))


# ---- serverless NEGs ---------------------------------------------------------------------------
async def neg_get(request: web.Request, world: World) -> web.StreamResponse:
    state = _state(world)
    return json_response(state.get_neg(_arg(request, "project"), _arg(request, "region"), _arg(request, "name")))


async def neg_list(request: web.Request, world: World) -> web.StreamResponse:
    project, region = _arg(request, "project"), _arg(request, "region")
    items = _state(world).list_negs(project, region)
    link = regional_link(project, region, "networkEndpointGroups")
    return _list(request, "compute#networkEndpointGroupList", items, link)


async def neg_insert(request: web.Request, world: World) -> web.StreamResponse:
    body = await read_json_object(request)
    state, project, region = _state(world), _arg(request, "project"), _arg(request, "region")
    return json_response(state.insert_neg(project, region, body, request_id=_request_id(request)))


async def neg_delete(request: web.Request, world: World) -> web.StreamResponse:
    state, project, region = _state(world), _arg(request, "project"), _arg(request, "region")
    return json_response(state.delete_neg(project, region, _arg(request, "name"), request_id=_request_id(request)))


# ---- URL maps ----------------------------------------------------------------------------------
async def um_get(request: web.Request, world: World) -> web.StreamResponse:
    return json_response(_state(world).get_url_map(_arg(request, "project"), _arg(request, "name")))


async def um_list(request: web.Request, world: World) -> web.StreamResponse:
    project = _arg(request, "project")
    items = _state(world).list_url_maps(project)
    return _list(request, "compute#urlMapList", items, global_link(project, "urlMaps"))


async def um_insert(request: web.Request, world: World) -> web.StreamResponse:
    body = await read_json_object(request)
    return json_response(_state(world).insert_url_map(_arg(request, "project"), body, request_id=_request_id(request)))


async def um_patch(request: web.Request, world: World) -> web.StreamResponse:
    body = await read_json_object(request)
    state, project, name = _state(world), _arg(request, "project"), _arg(request, "name")
    return json_response(state.patch_url_map(project, name, body, request_id=_request_id(request)))


async def um_update(request: web.Request, world: World) -> web.StreamResponse:
    body = await read_json_object(request)
    state, project, name = _state(world), _arg(request, "project"), _arg(request, "name")
    return json_response(state.update_url_map(project, name, body, request_id=_request_id(request)))


async def um_delete(request: web.Request, world: World) -> web.StreamResponse:
    state, project, name = _state(world), _arg(request, "project"), _arg(request, "name")
    return json_response(state.delete_url_map(project, name, request_id=_request_id(request)))


# ---- operations --------------------------------------------------------------------------------
def _region(request: web.Request) -> str | None:
    return request.match_info.get("region")


async def op_get(request: web.Request, world: World) -> web.StreamResponse:
    state = _state(world)
    op = state.operation(_arg(request, "project"), _region(request), _arg(request, "operation"))
    return json_response(op.render(world.clock()))


async def op_wait(request: web.Request, world: World) -> web.StreamResponse:
    """§5.2 wait: "Waits for the specified Operation resource to return as DONE or for the request to
    approach the 2 minute deadline" — here ``State.wait_bound_s`` (best effort, like Google's)."""
    state = _state(world)
    project, region, name = _arg(request, "project"), _region(request), _arg(request, "operation")
    deadline = time.monotonic() + state.wait_bound_s
    while True:
        op = state.operation(project, region, name)
        now = world.clock()
        left = deadline - time.monotonic()
        if op.done(now) or left <= 0:
            return json_response(op.render(now))
        await asyncio.sleep(max(0.001, min(0.05, left, op.done_at - now)))


async def op_list(request: web.Request, world: World) -> web.StreamResponse:
    project, region = _arg(request, "project"), _region(request)
    items = _state(world).list_operations(project, region)
    link = regional_link(project, region, "operations") if region else global_link(project, "operations")
    return _list(request, "compute#operationList", items, link)


def _route(http: str, path: str, method: str, handler: Callable[..., Any]) -> Route:
    return Route(http, path, method, handler, FLAVOR)


ROUTES: list[Route] = [
    _route("GET", G + "/backendServices", "compute.backendServices.list", bs_list),
    _route("POST", G + "/backendServices", "compute.backendServices.insert", bs_insert),
    _route("GET", G + "/backendServices/{name}", "compute.backendServices.get", bs_get),
    _route("PATCH", G + "/backendServices/{name}", "compute.backendServices.patch", bs_patch),
    _route("PUT", G + "/backendServices/{name}", "compute.backendServices.update", bs_update),
    _route("DELETE", G + "/backendServices/{name}", "compute.backendServices.delete", bs_delete),
    _route(
        "POST",
        G + "/backendServices/{name}/setSecurityPolicy",
        "compute.backendServices.setSecurityPolicy",
        bs_set_security_policy,
    ),
    _route("GET", G + "/securityPolicies", "compute.securityPolicies.list", sp_list),
    _route("POST", G + "/securityPolicies", "compute.securityPolicies.insert", sp_insert),
    _route("GET", G + "/securityPolicies/{name}", "compute.securityPolicies.get", sp_get),
    _route("PATCH", G + "/securityPolicies/{name}", "compute.securityPolicies.patch", sp_patch),
    _route("DELETE", G + "/securityPolicies/{name}", "compute.securityPolicies.delete", sp_delete),
    _route("POST", G + "/securityPolicies/{name}/addRule", "compute.securityPolicies.addRule", sp_add_rule),
    _route("POST", G + "/securityPolicies/{name}/patchRule", "compute.securityPolicies.patchRule", sp_patch_rule),
    _route("POST", G + "/securityPolicies/{name}/removeRule", "compute.securityPolicies.removeRule", sp_remove_rule),
    _route("GET", G + "/securityPolicies/{name}/getRule", "compute.securityPolicies.getRule", sp_get_rule),
    _route("GET", R + "/networkEndpointGroups", "compute.regionNetworkEndpointGroups.list", neg_list),
    _route("POST", R + "/networkEndpointGroups", "compute.regionNetworkEndpointGroups.insert", neg_insert),
    _route("GET", R + "/networkEndpointGroups/{name}", "compute.regionNetworkEndpointGroups.get", neg_get),
    _route("DELETE", R + "/networkEndpointGroups/{name}", "compute.regionNetworkEndpointGroups.delete", neg_delete),
    _route("GET", G + "/urlMaps", "compute.urlMaps.list", um_list),
    _route("POST", G + "/urlMaps", "compute.urlMaps.insert", um_insert),
    _route("GET", G + "/urlMaps/{name}", "compute.urlMaps.get", um_get),
    _route("PATCH", G + "/urlMaps/{name}", "compute.urlMaps.patch", um_patch),
    _route("PUT", G + "/urlMaps/{name}", "compute.urlMaps.update", um_update),
    _route("DELETE", G + "/urlMaps/{name}", "compute.urlMaps.delete", um_delete),
    _route("GET", G + "/operations", "compute.globalOperations.list", op_list),
    _route("GET", G + "/operations/{operation}", "compute.globalOperations.get", op_get),
    _route("POST", G + "/operations/{operation}/wait", "compute.globalOperations.wait", op_wait),
    _route("GET", R + "/operations", "compute.regionOperations.list", op_list),
    _route("GET", R + "/operations/{operation}", "compute.regionOperations.get", op_get),
    _route("POST", R + "/operations/{operation}/wait", "compute.regionOperations.wait", op_wait),
]
