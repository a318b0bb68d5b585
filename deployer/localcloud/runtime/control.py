"""The runtime's part of the ``/_localcloud/`` control plane, and its seed/reset hook.

- ``GET /_localcloud/revisions``               every revision the runtime knows: state, pid, port, …
- ``GET /_localcloud/revisions/{name}/logs``   a revision's stdout/stderr/system lines (``?tail=N``);
  ``name`` is the revision's short name (``chat-backend-00001-abc``) or its full resource name
- ``GET|DELETE /_localcloud/lb/requests``      the load balancer's request log (DELETE clears it)

The hook (``world.apis["runtime"]``) takes part in ``World.reset`` (stops every revision process,
clears the LB log and the Cloud Armor counters) and in seeding: a seed document may carry
``secrets: {key: value}`` and/or ``secrets_file: path`` (secrets.py for the key forms).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from deployer.errors import ConfigError
from deployer.localcloud.api.common import ApiError, Route, json_response
from deployer.localcloud.api.control import RUNTIME_SEED_KEYS
from deployer.localcloud.runtime.images import REPO_ROOT
from deployer.localcloud.runtime.lb import LoadBalancer
from deployer.localcloud.runtime.processes import ProcessRuntime
from deployer.localcloud.world import World


class RuntimeHook:
    """What ``World.reset`` and seeding call on the runtime (it sits in ``world.apis``)."""

    def __init__(self, runtime: ProcessRuntime, lb: LoadBalancer) -> None:
        self.runtime = runtime
        self.lb = lb
        self.base_secrets = dict(runtime.secrets.values)

    def reset(self) -> None:
        self.runtime.reset()
        self.lb.reset()
        self.runtime.secrets.values = dict(self.base_secrets)

    seed_keys = RUNTIME_SEED_KEYS  # the seed document's top-level keys this reads

    def seed(self, doc: dict[str, Any]) -> None:
        try:
            if doc.get("secrets_file"):
                path = Path(str(doc["secrets_file"]))
                self.runtime.secrets.load_file(path if path.is_absolute() else REPO_ROOT / path)
            if doc.get("secrets"):
                self.runtime.secrets.load_mapping(doc["secrets"])
        except ConfigError as exc:
            raise ApiError(400, f"seed: {exc.message}") from exc


def routes(runtime: ProcessRuntime, lb: LoadBalancer) -> list[Route]:
    async def revisions(request: web.Request, world: World) -> web.StreamResponse:
        return json_response({"revisions": [r.describe() for r in runtime.records()]})

    async def revision_logs(request: web.Request, world: World) -> web.StreamResponse:
        name = request.match_info["name"]
        record = runtime.find(name)
        if record is None:
            raise ApiError(404, f"Revision '{name}' is not known to the local runtime.")
        lines = list(record.logs)
        tail = request.query.get("tail")
        if tail and tail.isdigit():
            lines = lines[-int(tail) :] if int(tail) else []
        return json_response({"revision": record.name, "lines": lines})

    async def lb_requests(request: web.Request, world: World) -> web.StreamResponse:
        if request.method == "DELETE":
            lb.requests.clear()
        return json_response({"requests": list(lb.requests)})

    p = "/_localcloud"
    return [
        Route("GET", f"{p}/revisions", "control.revisions", revisions, "control"),
        Route("GET", f"{p}/revisions/{{name:.+}}/logs", "control.revisionLogs", revision_logs, "control"),
        Route("GET", f"{p}/lb/requests", "control.lbRequests", lb_requests, "control"),
        Route("DELETE", f"{p}/lb/requests", "control.lbRequests", lb_requests, "control"),
    ]
