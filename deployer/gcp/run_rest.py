"""Cloud Run Admin API v2 over plain REST: the emergency rollback's few calls, without ``run_v2``.

Why: importing ``google.cloud.run_v2`` costs about 0.3 s here (it imports every service of the API,
grpc, and aiohttp through api_core's async operations client — ``python -X importtime``), a tenth of an
emergency rollback's whole budget (``bench/rollback.py``). The rollback needs calls whose REST shapes
Google documents and clientlibs.md §2a records:

- ``GET  /v2/{service}``                 GetService
- ``PATCH /v2/{service}``                UpdateService: the Service (without ``name``: it is in the path),
                                          ``etag`` in the body (gcp-facts §4.2: "May be used to detect
                                          modification conflict during updates")
- ``POST /v2/{operation}:wait``          operations.wait: answers when the operation is done (or at its
                                          timeout), so there is no poll interval to lose
- ``GET  /v2/{revision}``, ``GET /v2/{service}/revisions``

Resources go in and out as the REST JSON the rest of deployer uses (camelCase, enum names; no
``$alt=json;enum-encoding=int``, so answers name their enums). An error answer becomes the
``google.api_core`` exception for its HTTP status (``from_http_response``, the same mapping the client
libraries use, clientlibs.md §0 item 5), so ``retry.call`` classifies it exactly as it does theirs.

Credentials: a local endpoint gets none and never a proxy (as ``Clients`` does); Google gets Application
Default Credentials in an ``AuthorizedSession``. The interface matches ``cloudrun.CloudRun`` for what the
rollback uses (``get_service``, ``update_service`` → an operation, ``wait``, ``metadata``, ``get_revision``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import requests

from deployer.errors import CloudError, NotFoundError
from deployer.gcp import retry

JSON = dict[str, Any]

GOOGLE = "https://run.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
TIMEOUT_S = 60.0  # one HTTP exchange (a wait asks the server for at most WAIT_S)
WAIT_S = 600  # operations.wait: the longest one call may wait for the operation
_STATUS_FIELDS = ("name", "@type")


class RunRest:
    def __init__(
        self,
        endpoint: str | None,
        *,
        policy: retry.RetryPolicy = retry.DEFAULT_POLICY,
        read_policy: retry.RetryPolicy = retry.READ_POLICY,
    ) -> None:
        self.base = (endpoint or GOOGLE).rstrip("/")
        self.local = endpoint is not None
        self.policy = policy
        self.read_policy = read_policy
        self._session: requests.Session | None = None
        self._lock = threading.Lock()

    @property
    def session(self) -> requests.Session:
        with self._lock:
            if self._session is None:
                if self.local:
                    session = requests.Session()
                    session.trust_env = False  # loopback never through HTTP(S)_PROXY (clientlibs.md §0 item 10)
                else:
                    import google.auth
                    from google.auth.transport.requests import AuthorizedSession

                    credentials, _project = google.auth.default(scopes=[SCOPE])
                    session = AuthorizedSession(credentials)
                session.headers["User-Agent"] = "deployer (emergency rollback)"
                self._session = session
            return self._session

    def _call(
        self,
        verb: str,
        path: str,
        *,
        method: str,
        policy: retry.RetryPolicy,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        timeout: float = TIMEOUT_S,
    ) -> JSON:
        from google.api_core import exceptions as gexc

        url = f"{self.base}/v2/{path}"

        def once() -> JSON:
            resp = self.session.request(verb, url, json=body, params=params, timeout=timeout)
            if resp.status_code >= 400:
                raise gexc.from_http_response(resp)
            out: JSON = resp.json() if resp.content else {}
            return out

        return retry.call(once, method=method, policy=policy)

    # ---- reads ---------------------------------------------------------------------------------
    def get_service(self, name: str) -> JSON | None:
        try:
            return self._call("GET", name, method="run.services.get", policy=self.read_policy)
        except NotFoundError:
            return None

    def get_revision(self, name: str) -> JSON | None:
        try:
            return self._call("GET", name, method="run.revisions.get", policy=self.read_policy)
        except NotFoundError:
            return None

    def list_revisions(self, service: str) -> list[JSON]:
        out: list[JSON] = []
        token = None
        while True:
            params = {"pageToken": token} if token else None
            page = self._call(
                "GET", f"{service}/revisions", method="run.revisions.list", policy=self.read_policy, params=params
            )
            out.extend(page.get("revisions") or [])
            token = page.get("nextPageToken")
            if not token:
                return out

    # ---- the write -----------------------------------------------------------------------------
    def update_service(self, service: Mapping[str, Any], *, etag: str) -> JSON:
        """PATCH the Service (REST JSON with ``name``), guarded by ``etag``; the long-running operation
        as the API answers it (not waited for)."""
        if not etag:
            raise ValueError("an UpdateService from deployer always carries the etag it was computed from")
        name = str(service["name"])
        body = {k: v for k, v in service.items() if k not in _STATUS_FIELDS}
        body["etag"] = etag
        return self._call("PATCH", name, method="run.services.patch", policy=self.policy, body=body)

    @staticmethod
    def metadata(operation: Mapping[str, Any]) -> JSON | None:
        """The Service the operation reported when it was created (its etag is the new one)."""
        meta = operation.get("metadata")
        return {k: v for k, v in meta.items() if k != "@type"} if isinstance(meta, Mapping) else None

    # ---- operations ----------------------------------------------------------------------------
    def wait(self, operation: Mapping[str, Any], *, timeout: float = 900.0) -> JSON:
        """Block until the operation is done (``operations.wait``, asked again if it answers early); its
        Service, or its error as a ``CloudError``."""
        name = str(operation["name"])
        done = operation if operation.get("done") else None
        deadline = time.monotonic() + timeout
        while done is None:
            left = max(1, min(WAIT_S, int(deadline - time.monotonic())))
            got = self._call(
                "POST",
                f"{name}:wait",
                method="run.operations.wait",
                policy=self.read_policy,
                body={"timeout": f"{left}s"},
                timeout=left + TIMEOUT_S,
            )
            if got.get("done"):
                done = got
            elif time.monotonic() > deadline:
                raise CloudError(f"the Cloud Run operation {name} did not finish in time", method="run.operations.wait")
        return outcome(done)


def outcome(operation: Mapping[str, Any]) -> JSON:
    """A finished operation's Service (REST JSON), or its error (a ``google.rpc.Status``: a gRPC code,
    clientlibs.md §2a, e.g. 9 → FailedPrecondition) as a ``CloudError``."""
    from google.api_core import exceptions as gexc

    error = operation.get("error")
    if isinstance(error, Mapping):
        exc = gexc.from_grpc_status(int(error.get("code") or 2), str(error.get("message") or "the operation failed"))
        err = retry.to_cloud_error(exc, method="run.services.patch")
        assert err is not None
        raise err from exc
    response = operation.get("response")
    if not isinstance(response, Mapping):
        raise CloudError(
            "the Cloud Run operation finished with neither a response nor an error", method="run.services.patch"
        )
    return {k: v for k, v in response.items() if k != "@type"}
