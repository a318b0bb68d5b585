"""What every emulated API shares: routes as data, Google's error shapes, JSON rendering.

A handler is ``async def handler(request: web.Request, world: World) -> web.StreamResponse``.
Models raise ``ApiError``; the server middleware renders it in the shape of the route's API
(``flavor``): Cloud Run (AIP-193), Compute, Cloud Storage, or the control plane.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from deployer.localcloud.world import World

Handler = Callable[[web.Request, World], Awaitable[web.StreamResponse]]

# google.rpc.Code names by HTTP status, as Google's REST front ends pair them (AIP-193).
GRPC_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

# gRPC numeric codes, for errors delivered inside a failed Cloud Run long-running operation.
GRPC_CODE = {
    "OK": 0,
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}

# Compute's per-error ``reason`` by HTTP status (as seen in real Compute errors).
COMPUTE_REASON = {
    400: "invalid",
    403: "forbidden",
    404: "notFound",
    409: "alreadyExists",
    412: "conditionNotMet",
    429: "rateLimitExceeded",
    500: "backendError",
    502: "backendError",
    503: "backendError",
    504: "backendError",
}

# Messages for injected faults, close to what Google answers with those statuses.
DEFAULT_FAULT_MESSAGE = {
    400: "Invalid request.",
    403: "The caller does not have permission",
    404: "Requested entity was not found.",
    409: "The request was aborted because of a concurrent modification. Please retry.",
    412: "Precondition Failed",
    429: "Quota exceeded for quota metric 'Write requests' and limit 'Write requests per minute'.",
    500: "Internal error encountered.",
    502: "Bad Gateway",
    503: "The service is currently unavailable.",
    504: "The request timed out. Please try again.",
}


@dataclass(frozen=True)
class Route:
    http_method: str
    path: str
    method: str  # the API method id used by faults, latency and the request log
    handler: Handler
    flavor: str  # "run" | "compute" | "storage" | "control"


class ApiError(Exception):
    """An error answer. ``status`` is HTTP; the rest fills the API's own error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        grpc_status: str | None = None,
        reason: str | None = None,
        domain: str = "global",
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.grpc_status = grpc_status or GRPC_STATUS.get(status, "UNKNOWN")
        self.reason = reason or COMPUTE_REASON.get(status, "invalid")
        self.domain = domain
        self.details = details

    def body(self, flavor: str) -> dict[str, Any]:
        if flavor == "run":
            err: dict[str, Any] = {"code": self.status, "message": self.message, "status": self.grpc_status}
            if self.details:
                err["details"] = self.details
            return {"error": err}
        if flavor in ("compute", "storage"):
            return {
                "error": {
                    "code": self.status,
                    "message": self.message,
                    "errors": [{"message": self.message, "domain": self.domain, "reason": self.reason}],
                }
            }
        return {"error": {"code": self.status, "message": self.message}}

    def response(self, flavor: str) -> web.Response:
        return json_response(self.body(flavor), status=self.status)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, separators=(",", ":")),
        status=status,
        content_type="application/json",
        charset="UTF-8",
    )


def text_json_response(text: str, status: int = 200) -> web.Response:
    """A response whose JSON was rendered by a protobuf/proto-plus serializer."""
    return web.Response(text=text, status=status, content_type="application/json", charset="UTF-8")


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or Google's 400 for anything else."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"Invalid JSON payload received. {_json_problem(exc)}") from exc
    if not isinstance(data, dict):
        raise ApiError(400, "Invalid JSON payload received. Expected an object at the top level.")
    return data


def _json_problem(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"Syntax error at line {exc.lineno} column {exc.colno}: {exc.msg}."
    return "Body is not valid UTF-8 JSON."


def query_bool(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("true", "1")
