"""Compute operations: the ``compute#operation`` shape of the recordings, RUNNING until done."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from deployer.localcloud.api.compute.links import global_link, invalid, region_link, regional_link

OPERATION_USER = "user@example.com"  # what the recordings show (normalised there)
# Operation error codes by HTTP status, as Compute names them in ``error.errors[].code`` (doubt:
# only CONDITION_NOT_MET and RESOURCE_NOT_FOUND are seen in public reports; the rest are our picks).
_OPERATION_ERROR_CODES = {
    400: "INVALID_USAGE",
    403: "PERMISSION_DENIED",
    404: "RESOURCE_NOT_FOUND",
    409: "RESOURCE_ALREADY_EXISTS",
    412: "CONDITION_NOT_MET",
    429: "QUOTA_EXCEEDED",
    500: "INTERNAL_ERROR",
    502: "INTERNAL_ERROR",
    503: "SERVICE_UNAVAILABLE",
    504: "TIMEOUT",
}


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


@dataclass
class Operation:
    """One Compute operation. ``region`` None means a global operation."""

    project: str
    region: str | None
    name: str
    id: str
    operation_type: str
    target_link: str
    target_id: str
    method: str
    insert_time: float
    done_at: float
    error: tuple[int, str] | None = None  # (HTTP status, message) when it ends in error

    def done(self, now: float) -> bool:
        return now >= self.done_at

    @property
    def self_link(self) -> str:
        if self.region:
            return regional_link(self.project, self.region, "operations", self.name)
        return global_link(self.project, "operations", self.name)

    def render(self, now: float) -> dict[str, Any]:
        """The REST shape of the recordings: RUNNING (progress 0) until done, then DONE (100)."""
        done = self.done(now)
        out: dict[str, Any] = {
            "kind": "compute#operation",
            "id": self.id,
            "name": self.name,
            "operationType": self.operation_type,
            "progress": 100 if done else 0,
            "status": "DONE" if done else "RUNNING",
            "targetId": self.target_id,
            "targetLink": self.target_link,
            "selfLink": self.self_link,
            "insertTime": _rfc3339(self.insert_time),
            "startTime": _rfc3339(self.insert_time),
            "user": OPERATION_USER,
        }
        if self.region:
            out["region"] = region_link(self.project, self.region)
        if done:
            out["endTime"] = _rfc3339(self.done_at)
            if self.error is not None:
                status, message = self.error
                # clientlibs.md §0 item 7: .result() raises only when BOTH httpErrorStatusCode and
                # httpErrorMessage are set; error.errors carries the detail.
                out["httpErrorStatusCode"] = status
                out["httpErrorMessage"] = HTTPStatus(status).phrase.upper() if status in _STATUSES else "ERROR"
                out["error"] = {
                    "errors": [{"code": _OPERATION_ERROR_CODES.get(status, "INTERNAL_ERROR"), "message": message}]
                }
        return out


_STATUSES = {s.value for s in HTTPStatus}


def check_request_id(request_id: str | None) -> None:
    """proto: "The request ID must be a valid UUID with the exception that zero UUID is not supported"."""
    if request_id is None:
        return
    try:
        parsed = uuid.UUID(request_id)
    except ValueError as exc:
        raise invalid("requestId", request_id, "The request ID must be a valid UUID.") from exc
    if parsed.int == 0:
        raise invalid("requestId", request_id, "The zero UUID is not supported as a request ID.")
