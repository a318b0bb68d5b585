"""Read what is live into an ``Observed`` value: a thin adapter over the Google clients.

Reads (all idempotent, through ``retry.call`` with the read policy; a 404 is "absent", None):

- Cloud Run: the service, then the revision serving the largest share of traffic;
- Compute: the backend service, the security policy (with its rules), the URL map, then the
  network endpoint groups behind the backend service.

Each resource is rendered as REST JSON (camelCase, enums by name, int64 as strings) with the
library's own ``to_json``, so what rules and plans see is what Google's REST API returns. The two
waves of reads run on a few threads: a live ``check`` or a deploy's first step costs about two
round trips, not six.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from deployer.config import DeployConfig
from deployer.errors import NotFoundError
from deployer.gcp import retry
from deployer.gcp.clients import Clients
from deployer.model import JSON, Observed

_NEG = re.compile(r"projects/([^/]+)/regions/([^/]+)/networkEndpointGroups/([^/?#]+)")


def to_rest_json(message: Any) -> JSON:
    """A proto-plus message as Google's REST API renders it (defaults without presence left out)."""
    text = type(message).to_json(
        message, use_integers_for_enums=False, always_print_fields_with_no_presence=False, indent=None
    )
    out: JSON = json.loads(text)
    return out


def _read(fn: Callable[[], Any], method: str, policy: retry.RetryPolicy) -> JSON | None:
    try:
        return to_rest_json(retry.call(fn, method=method, policy=policy))
    except NotFoundError:
        return None


def serving_revision_name(service: JSON, service_path: str) -> str | None:
    """The full name of the revision with the largest traffic share (LATEST → ``latestReadyRevision``)."""
    statuses = service.get("trafficStatuses") or service.get("traffic") or []
    best: tuple[int, str] | None = None
    for status in statuses:
        percent = int(status.get("percent") or 0)
        name = status.get("revision") or ""
        if not name and str(status.get("type", "")).endswith("LATEST"):
            name = service.get("latestReadyRevision") or ""
        if name and percent > 0 and (best is None or percent > best[0]):
            best = (percent, name)
    if best is None:
        latest = service.get("latestReadyRevision")
        return str(latest) if latest else None
    name = best[1]
    return name if name.startswith("projects/") else f"{service_path}/revisions/{name}"


def _backend_reader(group: str, negs_client: Any, policy: retry.RetryPolicy) -> Callable[[], JSON | None]:
    """How to read one backend of a backend service: a regional NEG through its client, anything else
    (an instance group) as a stub that says what it is."""
    match = _NEG.search(group)
    if match is None or negs_client is None:
        return lambda: {"selfLink": group, "kind": "compute#instanceGroup"}
    project, region, name = match.groups()
    return lambda: _read(
        lambda: negs_client.get(project=project, region=region, network_endpoint_group=name),
        "compute.regionNetworkEndpointGroups.get",
        policy,
    )


class _Stopped(Exception):
    """A sibling read already failed, or the command was interrupted: stop retrying this one."""


def _stoppable(policy: retry.RetryPolicy, stop: threading.Event) -> retry.RetryPolicy:
    """``policy`` whose waits between retries end (raising ``_Stopped``) once ``stop`` is set: when one read
    has failed for good or Ctrl-C arrived, the others do not keep retrying for their whole budget (the
    command would otherwise exit, and print their retries, seconds after its error line)."""

    def sleep(seconds: float) -> None:
        if policy.sleep is time.sleep:
            stopped = stop.wait(seconds)
        else:  # an injected sleep (tests): keep it, and look at the flag after it
            policy.sleep(seconds)
            stopped = stop.is_set()
        if stopped:
            raise _Stopped("observe stopped")

    return policy.with_(sleep=sleep)


def observe(config: DeployConfig, clients: Clients, *, policy: retry.RetryPolicy | None = None) -> Observed:
    """Everything ``config`` touches, as it is live now."""
    stop = threading.Event()
    pol = _stoppable(policy or retry.READ_POLICY, stop)
    project, lb, armor = config.project, config.load_balancer, config.armor
    # Build the clients here, on one thread (each imports its library once).
    services, revisions = clients.services(), clients.revisions()
    backend_services = clients.backend_services() if lb else None
    url_maps = clients.url_maps() if lb and lb.url_map else None
    policies = clients.security_policies() if armor else None
    negs_client = clients.region_network_endpoint_groups() if lb else None

    first: dict[str, Callable[[], JSON | None]] = {
        "service": lambda: _read(lambda: services.get_service(name=config.service_path), "run.services.get", pol)
    }
    if lb and backend_services is not None:
        name = lb.backend_service
        first["backend_service"] = lambda: _read(
            lambda: backend_services.get(project=project, backend_service=name), "compute.backendServices.get", pol
        )
    if lb and lb.url_map and url_maps is not None:
        url_map = lb.url_map
        first["url_map"] = lambda: _read(
            lambda: url_maps.get(project=project, url_map=url_map), "compute.urlMaps.get", pol
        )
    if armor and policies is not None:
        policy_name = armor.policy
        first["security_policy"] = lambda: _read(
            lambda: policies.get(project=project, security_policy=policy_name), "compute.securityPolicies.get", pol
        )
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="observe") as pool:
        try:
            got = dict(zip(first, pool.map(lambda f: f(), first.values()), strict=True))

            second: list[Callable[[], JSON | None]] = []
            service = got.get("service")
            revision_name = serving_revision_name(service, config.service_path) if service else None
            if revision_name:
                second.append(
                    lambda: _read(lambda: revisions.get_revision(name=revision_name), "run.revisions.get", pol)
                )
            backend = got.get("backend_service")
            for backend_ref in (backend or {}).get("backends") or []:
                second.append(_backend_reader(str(backend_ref.get("group", "")), negs_client, pol))
            results = list(pool.map(lambda f: f(), second))
        except BaseException:
            stop.set()  # the first failure (or Ctrl-C) is the answer: the other reads stop at their next wait
            raise

    serving = results.pop(0) if revision_name else None
    return Observed(
        service=service,
        serving_revision=serving,
        backend_service=backend,
        security_policy=got.get("security_policy"),
        url_map=got.get("url_map"),
        negs=tuple(r for r in results if r is not None),
    )
