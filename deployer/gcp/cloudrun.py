"""Cloud Run v2 for the orchestrator: a thin adapter over ``run_v2.ServicesClient`` / ``RevisionsClient``.

Resources go in and out as REST JSON (``observe.to_rest_json``), so everything above this module
compares and journals plain dicts. Every call runs through ``retry.call``; the only write,
``UpdateService``, always carries the ``etag`` it was computed from (gcp-facts §4.2: "May be used to
detect modification conflict during updates"), so a retry can never land over someone else's change:
a stale etag is a 409 ``ConflictError``.

The mutation and the wait are separate calls (never ``.result()`` inside the retried function: a
retried wait would re-send the mutation). ``poll`` refreshes an operation once; ``outcome`` returns
its Service or raises the operation's error as a ``CloudError`` (a revision that failed to start is a
gRPC FAILED_PRECONDITION, HTTP 400, clientlibs.md §2a); ``wait`` does both with the fast schedule.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from deployer.errors import CloudError, NotFoundError
from deployer.gcp import retry
from deployer.gcp.clients import Clients
from deployer.gcp.observe import to_rest_json
from deployer.gcp.operations import POLL, PollSchedule

JSON = dict[str, Any]

UPDATE = "run.services.patch"
GET = "run.services.get"
GET_REVISION = "run.revisions.get"
GET_OPERATION = "run.operations.get"

# An operation's own error is final: asking again gives the same answer.
_ONCE = retry.RetryPolicy(attempts=1, deadline=None)


def to_service(doc: Mapping[str, Any]) -> Any:
    """REST JSON → ``run_v2.Service`` (output-only fields are ignored by the API)."""
    from google.cloud import run_v2

    return run_v2.Service.from_json(json.dumps(doc), ignore_unknown_fields=True)


class CloudRun:
    def __init__(
        self,
        clients: Clients,
        *,
        policy: retry.RetryPolicy = retry.DEFAULT_POLICY,
        read_policy: retry.RetryPolicy = retry.READ_POLICY,
    ) -> None:
        self.clients = clients
        self.policy = policy
        self.read_policy = read_policy

    # ---- reads ---------------------------------------------------------------------------------
    def get_service(self, name: str) -> JSON | None:
        services = self.clients.services()
        try:
            return to_rest_json(
                retry.call(lambda: services.get_service(name=name), method=GET, policy=self.read_policy)
            )
        except NotFoundError:
            return None

    def get_revision(self, name: str) -> JSON | None:
        revisions = self.clients.revisions()
        try:
            return to_rest_json(
                retry.call(lambda: revisions.get_revision(name=name), method=GET_REVISION, policy=self.read_policy)
            )
        except NotFoundError:
            return None

    # ---- the write -----------------------------------------------------------------------------
    def update_service(self, service: Mapping[str, Any], *, etag: str) -> Any:
        """Send ``service`` (REST JSON, with ``name``) as an UpdateService guarded by ``etag``; returns
        the long-running operation (not waited for)."""
        if not etag:
            raise ValueError("an UpdateService from deployer always carries the etag it was computed from")
        body = to_service({**service, "etag": etag})
        services = self.clients.services()
        return retry.call(lambda: services.update_service(service=body), method=UPDATE, policy=self.policy)

    # ---- operations ----------------------------------------------------------------------------
    def poll(self, operation: Any) -> bool:
        """Refresh ``operation`` once; True when it is done."""
        return bool(retry.call(operation.done, method=GET_OPERATION, policy=self.read_policy))

    def outcome(self, operation: Any) -> JSON:
        """The Service a done operation ended with, or its error as a ``CloudError``."""
        return to_rest_json(retry.call(lambda: operation.result(timeout=0), method=UPDATE, policy=_ONCE))

    def wait(self, operation: Any, *, schedule: PollSchedule = POLL) -> JSON:
        """Block until ``operation`` is done (fast explicit polling); its Service or a ``CloudError``."""
        try:
            result = operation.result(polling=schedule.as_retry(), timeout=schedule.timeout)
        except Exception as exc:
            err = retry.to_cloud_error(exc, method=UPDATE)
            if err is None or not isinstance(err, CloudError):
                raise
            raise err from exc
        return to_rest_json(result)

    @staticmethod
    def metadata(operation: Any) -> JSON | None:
        """The Service the operation reported when it was created (its etag is the new one)."""
        meta = getattr(operation, "metadata", None)
        return to_rest_json(meta) if meta is not None else None
