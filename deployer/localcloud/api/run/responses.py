"""Wire layer of the Cloud Run Admin API v2: routes, request parsing, response rendering.

Bodies and query parameters are read with the client library's own ``run_v2`` message classes
(``wire``: Google's 400 wording for unknown names and wrong types); answers are rendered from
``run_v2`` / ``google.longrunning.operations_pb2`` messages with ``json_format``, so every field
name and type is right by construction (clientlibs.md §4, §5). The polled operation is parsed
strictly by the client (clientlibs.md §0 item 4): it is a plain ``operations_pb2.Operation`` with the
Service (or Revision) packed in ``metadata``/``response`` as a typed ``Any`` — nothing else.

Enums: the clients ask ``$alt=json;enum-encoding=int`` and get integers; any other caller (and the
recordings) get names.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web
from google.cloud import run_v2
from google.longrunning import operations_pb2
from google.protobuf import json_format

from deployer.localcloud.api.common import Route, read_json_object, text_json_response
from deployer.localcloud.api.run import wire
from deployer.localcloud.api.run.models import LATEST, Operation, State
from deployer.localcloud.world import World

WAIT_DEFAULT_S = 60.0
WAIT_POLL_S = 0.02


def _state(world: World) -> State:
    state: State = world.apis["run"]
    return state


def _ints(request: web.Request) -> bool:
    return "enum-encoding=int" in request.query.get("$alt", "")


def _render(pb: Any, request: web.Request) -> web.Response:
    return text_json_response(json_format.MessageToJson(pb, indent=None, use_integers_for_enums=_ints(request)))


def wire_service(svc: run_v2.Service, *, metadata: bool = False) -> run_v2.Service:
    """The Service as Google shows it (the real recording compute-serverless-neg-cloudrun.http.log):

    - a LATEST traffic status names no revision (in memory it does, for the load balancer);
    - ``ingress`` is the *observed* setting: "On output, returns the currently observed ingress
      settings, or INGRESS_TRAFFIC_UNSPECIFIED if no revision is active." (service.proto);
    - an operation's ``metadata`` Service carries no ``uid`` (its ``response`` does).
    """
    resolved_latest = any(s.type_ == LATEST and s.revision for s in svc.traffic_statuses)
    inactive = not svc.latest_ready_revision and bool(svc.ingress)
    if not (resolved_latest or inactive or (metadata and svc.uid)):
        return svc
    out = run_v2.Service(svc)
    if resolved_latest:
        statuses = []
        for s in out.traffic_statuses:
            if s.type_ == LATEST:
                s = run_v2.TrafficTargetStatus(s)
                s.revision = ""
            statuses.append(s)
        out.traffic_statuses = statuses
    if inactive:
        out.ingress = run_v2.IngressTraffic.INGRESS_TRAFFIC_UNSPECIFIED
    if metadata:
        out.uid = ""
    return out


def _packed(message: Any, *, metadata: bool = False) -> Any:
    if isinstance(message, run_v2.Service):
        return run_v2.Service.pb(wire_service(message, metadata=metadata))
    return run_v2.Revision.pb(message)


def operation_pb(op: Operation) -> operations_pb2.Operation:
    pb = operations_pb2.Operation(name=op.name, done=op.done)
    pb.metadata.Pack(_packed(op.snapshot, metadata=True))
    if op.done:
        if op.error is not None:
            pb.error.code, pb.error.message = op.error
        else:
            pb.response.Pack(_packed(op.snapshot))
    return pb


def _name(request: web.Request, *kinds: str) -> str:
    m = request.match_info
    name = f"projects/{m['project']}/locations/{m['location']}"
    for kind, key in zip(kinds[::2], kinds[1::2], strict=True):
        name += f"/{kind}/{m[key]}"
    return name


# ---- services ----------------------------------------------------------------------------------


async def create_service(request: web.Request, world: World) -> web.StreamResponse:
    q = wire.parse_query(request.query, {"serviceId": ("service_id", "str"), "validateOnly": ("validate_only", "bool")})
    body = wire.parse_message(run_v2.Service, await read_json_object(request), "service")
    op = _state(world).create_service(
        _name(request), q.get("service_id", ""), body, validate_only=q.get("validate_only", False)
    )
    return _render(operation_pb(op), request)


async def get_service(request: web.Request, world: World) -> web.StreamResponse:
    wire.parse_query(request.query, {})
    svc = _state(world).get_service(_name(request, "services", "service"))
    return _render(run_v2.Service.pb(wire_service(svc)), request)


async def list_services(request: web.Request, world: World) -> web.StreamResponse:
    q = wire.parse_query(request.query, _LIST_QUERY)
    items, token = _state(world).list_services(_name(request), q.get("page_size", 0), q.get("page_token", ""))
    resp = run_v2.ListServicesResponse(services=[wire_service(s) for s in items], next_page_token=token)
    return _render(run_v2.ListServicesResponse.pb(resp), request)


async def update_service(request: web.Request, world: World) -> web.StreamResponse:
    q = wire.parse_query(
        request.query,
        {
            "updateMask": ("update_mask", "str"),
            "validateOnly": ("validate_only", "bool"),
            "allowMissing": ("allow_missing", "bool"),
        },
    )
    body = wire.parse_message(run_v2.Service, await read_json_object(request), "service")
    op = _state(world).update_service(
        _name(request, "services", "service"),
        body,
        q.get("update_mask", ""),
        allow_missing=q.get("allow_missing", False),
        validate_only=q.get("validate_only", False),
    )
    return _render(operation_pb(op), request)


async def delete_service(request: web.Request, world: World) -> web.StreamResponse:
    q = wire.parse_query(request.query, {"etag": ("etag", "str"), "validateOnly": ("validate_only", "bool")})
    op = _state(world).delete_service(
        _name(request, "services", "service"), q.get("etag", ""), validate_only=q.get("validate_only", False)
    )
    return _render(operation_pb(op), request)


# ---- revisions ---------------------------------------------------------------------------------

_LIST_QUERY = {
    "pageSize": ("page_size", "int32"),
    "pageToken": ("page_token", "str"),
    "showDeleted": ("show_deleted", "bool"),
}


async def list_revisions(request: web.Request, world: World) -> web.StreamResponse:
    q = wire.parse_query(request.query, _LIST_QUERY)
    items, token = _state(world).list_revisions(
        _name(request, "services", "service"), q.get("page_size", 0), q.get("page_token", "")
    )
    resp = run_v2.ListRevisionsResponse(revisions=items, next_page_token=token)
    return _render(run_v2.ListRevisionsResponse.pb(resp), request)


async def get_revision(request: web.Request, world: World) -> web.StreamResponse:
    wire.parse_query(request.query, {})
    rev = _state(world).get_revision(_name(request, "services", "service", "revisions", "revision"))
    return _render(run_v2.Revision.pb(rev), request)


async def delete_revision(request: web.Request, world: World) -> web.StreamResponse:
    q = wire.parse_query(request.query, {"etag": ("etag", "str"), "validateOnly": ("validate_only", "bool")})
    op = _state(world).delete_revision(
        _name(request, "services", "service", "revisions", "revision"),
        q.get("etag", ""),
        validate_only=q.get("validate_only", False),
    )
    return _render(operation_pb(op), request)


# ---- operations --------------------------------------------------------------------------------


async def get_operation(request: web.Request, world: World) -> web.StreamResponse:
    wire.parse_query(request.query, {})
    return _render(operation_pb(_state(world).get_operation(_name(request, "operations", "operation"))), request)


async def list_operations(request: web.Request, world: World) -> web.StreamResponse:
    q = wire.parse_query(
        request.query,
        {
            "filter": ("filter", "str"),
            "pageSize": ("page_size", "int32"),
            "pageToken": ("page_token", "str"),
            "returnPartialSuccess": ("return_partial_success", "bool"),
        },
    )
    items, token = _state(world).list_operations(_name(request), q.get("page_size", 0), q.get("page_token", ""))
    resp = operations_pb2.ListOperationsResponse(operations=[operation_pb(op) for op in items], next_page_token=token)
    return _render(resp, request)


async def wait_operation(request: web.Request, world: World) -> web.StreamResponse:
    """``:wait``: answer when the operation is done or ``timeout`` (real seconds) has passed."""
    wire.parse_query(request.query, {"timeout": ("timeout", "str")})
    body = wire.parse_message(operations_pb2.WaitOperationRequest, await read_json_object(request), "")
    name = _name(request, "operations", "operation")
    limit = body.timeout.ToTimedelta().total_seconds() if body.HasField("timeout") else WAIT_DEFAULT_S
    deadline = time.monotonic() + max(0.0, limit)
    state = _state(world)
    op = state.get_operation(name)
    while not op.done and time.monotonic() < deadline:
        await asyncio.sleep(min(WAIT_POLL_S, max(0.0, deadline - time.monotonic())))
        op = state.get_operation(name)
    return _render(operation_pb(op), request)


async def delete_operation(request: web.Request, world: World) -> web.StreamResponse:
    wire.parse_query(request.query, {})
    _state(world).delete_operation(_name(request, "operations", "operation"))
    return text_json_response("{}")


P = "/v2/projects/{project}/locations/{location}"
ROUTES: list[Route] = [
    Route("POST", f"{P}/services", "run.services.create", create_service, "run"),
    Route("GET", f"{P}/services", "run.services.list", list_services, "run"),
    Route("GET", f"{P}/services/{{service}}", "run.services.get", get_service, "run"),
    Route("PATCH", f"{P}/services/{{service}}", "run.services.patch", update_service, "run"),
    Route("DELETE", f"{P}/services/{{service}}", "run.services.delete", delete_service, "run"),
    Route("GET", f"{P}/services/{{service}}/revisions", "run.revisions.list", list_revisions, "run"),
    Route("GET", f"{P}/services/{{service}}/revisions/{{revision}}", "run.revisions.get", get_revision, "run"),
    Route("DELETE", f"{P}/services/{{service}}/revisions/{{revision}}", "run.revisions.delete", delete_revision, "run"),
    Route("GET", f"{P}/operations", "run.operations.list", list_operations, "run"),
    Route("GET", f"{P}/operations/{{operation}}", "run.operations.get", get_operation, "run"),
    Route("DELETE", f"{P}/operations/{{operation}}", "run.operations.delete", delete_operation, "run"),
    Route("POST", f"{P}/operations/{{operation:[^/:]+}}:wait", "run.operations.wait", wait_operation, "run"),
]
