"""The local global external Application Load Balancer (an aiohttp server on ``--lb-port``).

Per request: a non-WebSocket ``Upgrade`` is refused (400, gcp-facts §2.3: the LB "blocks the request
if … The request contains an Upgrade header and the Upgrade header is not used to enable WebSocket
connections"); the host decides between

- ``SERVICE.localhost`` / ``TAG---SERVICE.localhost`` (any port): the service's own Cloud Run URL
  (``*.run.app`` on Google, §4.4). It reaches Cloud Run directly: no URL map, no Cloud Armor (§3.5:
  the default ingress lets "any resource on the internet" reach the service, bypassing the LB);
- any other host: the URL map (routing.py) → backend service → its serverless NEG → the Cloud Run
  service (and tag), with the backend service's Cloud Armor policy (armor.py) and
  ``customRequestHeaders`` (§2.5).

Then a revision: the NEG's or host's tag, else Cloud Run's session affinity cookie when the
revision enables it (§1.3), else a weighted draw over the traffic split (a seedable ``Random``).
The revision's instance is leased from the process runtime (cold-starting it if needed), and the
request is proxied (proxy.py) within the revision's ``timeout`` (§1.1).

Every request is recorded (host, path, status, revision, Cloud Armor decision with its priority …)
in a bounded log served at ``/_localcloud/lb/requests``.

Not emulated: ``max_instance_request_concurrency`` (one instance per revision takes everything),
Cloud Run ingress settings, URL-map header actions and redirects, backend-service CDN/IAP.
"""

from __future__ import annotations

import base64
import binascii
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from deployer.localcloud.runtime import armor, proxy, routing
from deployer.localcloud.runtime.options import RuntimeOptions
from deployer.localcloud.runtime.processes import ProcessRuntime, Unavailable
from deployer.localcloud.world import World

log = structlog.get_logger("localcloud.lb")

# Cloud Run's session affinity cookie (gcp-facts §1.3: "a session affinity cookie with a TTL of 30
# days"). The name GAESA is what Cloud Run responses carry ([3P]: users inspecting Cloud Run responses
# report "Sticky Sessions: Confirmed via GAESA cookie"); its value is opaque on Google, ours encodes
# the service and revision.
AFFINITY_COOKIE = "GAESA"
AFFINITY_TTL = timedelta(days=30)

NOT_FOUND_PAGE = (
    "<!DOCTYPE html>\n<html lang=en>\n<meta charset=utf-8>\n<title>Error 404 (Not Found)!!1</title>\n"
    "<p><b>404.</b> <ins>That’s an error.</ins>\n"
    "<p>The requested URL <code>{path}</code> was not found on this server.  <ins>That’s all we know.</ins>\n"
)


@dataclass
class Resolution:
    """Where a request goes, before a revision is picked."""

    via: str  # "lb" (URL map) or "run" (the service's own URL)
    service_name: str = ""  # projects/P/locations/L/services/S
    service: Any = None
    tag: str | None = None
    url_map: str = ""
    backend_service: str = ""
    policy: dict[str, Any] | None = None
    policy_name: str = ""
    custom_headers: list[tuple[str, str]] = field(default_factory=list)
    error: int = 0  # an HTTP status to answer instead


def _compile_with_cloudarmor(source: str) -> armor.Matcher:
    from deployer.cloudarmor import parse

    expression = parse(source)

    def matcher(info: armor.RequestInfo) -> bool:
        return bool(expression.evaluate(info))  # a RequestInfo is the RequestAttributes the language reads

    return matcher


class LoadBalancer:
    def __init__(
        self,
        world: World,
        runtime: ProcessRuntime,
        options: RuntimeOptions,
        *,
        host: str = "127.0.0.1",
        compile_expr: Callable[[str], armor.Matcher] = _compile_with_cloudarmor,
    ) -> None:
        self.world = world
        self.runtime = runtime
        self.options = options
        self.host = host
        self.rng = random.Random(options.lb_seed if options.lb_seed is not None else world.seed)
        self.counters = armor.RateCounters()
        self.requests: deque[dict[str, Any]] = deque(maxlen=options.lb_log_limit)
        self.websockets: set[web.WebSocketResponse] = set()
        self._compile = compile_expr
        self._compiled: dict[str, armor.Matcher | Exception] = {}
        self._session: aiohttp.ClientSession | None = None

    # ---- app ------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, _app: web.Application) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
            auto_decompress=False,
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self.runtime.start_sweeper()

    async def _on_shutdown(self, _app: web.Application) -> None:
        # Revisions get SIGTERM first, so their own close frames (the sample backend sends 1001)
        # still reach the clients through us.
        await self.runtime.aclose()
        for ws in list(self.websockets):
            req = getattr(ws, "_req", None)
            transport = getattr(req, "transport", None)
            if transport is not None:
                transport.abort()

    async def _on_cleanup(self, _app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    def reset(self) -> None:
        self.counters.clear()
        self.requests.clear()
        self._compiled.clear()

    # ---- resolution ---------------------------------------------------------------------------
    def _compute(self) -> Any:
        return self.world.apis.get("compute")

    def _run_services(self) -> dict[str, Any]:
        return dict(getattr(self.world.apis.get("run"), "services", {}) or {})

    def _find_service(self, service_id: str, project: str | None = None, region: str | None = None) -> tuple[str, Any]:
        services = self._run_services()
        if project and region:
            name = f"projects/{project}/locations/{region}/services/{service_id}"
            return name, services.get(name)
        matches = sorted(n for n in services if n.endswith(f"/services/{service_id}"))
        preferred = f"projects/{self.world.project}/locations/{self.world.region}/services/{service_id}"
        if preferred in services:
            return preferred, services[preferred]
        if matches:
            return matches[0], services[matches[0]]
        return "", None

    def _pick_url_map(self, host: str) -> tuple[tuple[str, str] | None, dict[str, Any] | None]:
        url_maps: dict[tuple[str, str], dict[str, Any]] = dict(getattr(self._compute(), "url_maps", {}) or {})
        if not url_maps:
            return None, None
        if self.options.url_map:
            for key, value in url_maps.items():
                if self.options.url_map in (key[1], f"{key[0]}/{key[1]}"):
                    return key, value
            return None, None
        if len(url_maps) == 1:
            key = next(iter(url_maps))
            return key, url_maps[key]
        for key in sorted(url_maps):
            if routing.select_path_matcher(url_maps[key], host) is not None:
                return key, url_maps[key]
        key = sorted(url_maps)[0]
        return key, url_maps[key]

    def _lookup(self, collection: dict[Any, dict[str, Any]], ref: routing.Ref, *keys: Any) -> dict[str, Any] | None:
        for key in keys:
            if key in collection:
                return collection[key]
        compute = self._compute()
        resolve = getattr(compute, "resolve", None)
        if resolve is not None and ref.project:
            try:
                found = resolve(
                    f"https://www.googleapis.com/compute/v1/projects/{ref.project}/"
                    + (f"regions/{ref.region}/" if ref.region else "global/")
                    + f"{ref.collection}/{ref.name}"
                )
            except Exception:
                found = None
            if isinstance(found, dict):
                return found
        return None

    def resolve(self, host: str, path: str) -> Resolution:
        run_target = routing.parse_run_host(host)
        if run_target is not None:
            name, service = self._find_service(run_target.service)
            if service is not None:
                return Resolution(via="run", service_name=name, service=service, tag=run_target.tag)
        key, url_map = self._pick_url_map(host)
        if url_map is None or key is None:
            return Resolution(via="lb", error=404)
        project = key[0]
        res = Resolution(via="lb", url_map=key[1])
        bs_url = routing.route(url_map, host, path)
        if not bs_url:
            res.error = 404
            return res
        compute = self._compute()
        bs_ref = routing.parse_ref(bs_url, "backendServices")
        bs_project = bs_ref.project or project
        backend_services = getattr(compute, "backend_services", {}) or {}
        backend = self._lookup(backend_services, bs_ref, (bs_project, bs_ref.name))
        res.backend_service = bs_ref.name
        if backend is None:
            res.error = 404
            return res
        res.custom_headers = proxy.parse_custom_headers(list(backend.get("customRequestHeaders", []) or []))
        policy_url = backend.get("securityPolicy")
        if policy_url:
            p_ref = routing.parse_ref(str(policy_url), "securityPolicies")
            policies = getattr(compute, "security_policies", {}) or {}
            res.policy = self._lookup(policies, p_ref, (p_ref.project or bs_project, p_ref.name))
            res.policy_name = p_ref.name
        negs = getattr(compute, "negs", {}) or {}
        candidates: list[tuple[routing.Ref, dict[str, Any]]] = []
        for backend_entry in backend.get("backends", []) or []:
            group = backend_entry.get("group")
            if not group:
                continue
            n_ref = routing.parse_ref(str(group), "networkEndpointGroups")
            neg_key = (n_ref.project or bs_project, n_ref.region or self.world.region, n_ref.name)
            neg = self._lookup(negs, n_ref, neg_key)
            if neg is not None and neg.get("cloudRun"):
                candidates.append((n_ref, neg))
        # One serverless NEG per region (§2.4); prefer the local cloud's region.
        candidates.sort(key=lambda c: (c[0].region != self.world.region, c[0].region or ""))
        for n_ref, neg in candidates:
            target = routing.neg_target(neg["cloudRun"], host, path)
            if target is None:
                continue
            region = n_ref.region or str(neg.get("region", "")).rsplit("/", 1)[-1] or self.world.region
            name, service = self._find_service(target.service, n_ref.project or bs_project, region)
            if service is None:
                name, service = self._find_service(target.service)
            if service is not None:
                res.service_name, res.service, res.tag = name, service, target.tag
                return res
        res.error = 503 if candidates else 502
        return res

    # ---- revision choice ----------------------------------------------------------------
    def choose_revision(self, res: Resolution, cookies: dict[str, str]) -> tuple[str | None, str | None]:
        """(revision short name, affinity cookie value to set or None)."""
        service = res.service
        latest = str(getattr(service, "latest_ready_revision", "") or "")
        statuses = list(getattr(service, "traffic_statuses", []) or [])
        if res.tag:
            return routing.tagged_revision(statuses, res.tag, latest), None
        targets = routing.split_targets(statuses, latest)
        sticky = _decode_affinity(cookies.get(AFFINITY_COOKIE, ""), res.service_name)
        if sticky and sticky in dict(targets) and self._affinity_on(res.service_name, sticky):
            return sticky, None
        revision = routing.pick_revision(targets, self.rng)
        if revision and self._affinity_on(res.service_name, revision):
            return revision, _encode_affinity(res.service_name, revision)
        return revision, None

    def _revision(self, full_name: str) -> Any:
        return (getattr(self.world.apis.get("run"), "revisions", {}) or {}).get(full_name)

    def _affinity_on(self, service_name: str, revision: str) -> bool:
        record = self.runtime.record(f"{service_name}/revisions/{revision}")
        if record is not None:
            return record.session_affinity
        return bool(getattr(self._revision(f"{service_name}/revisions/{revision}"), "session_affinity", False))

    # ---- Cloud Armor ------------------------------------------------------------------------
    def _matcher(self, source: str) -> armor.Matcher:
        compiled = self._compiled.get(source)
        if compiled is None:
            try:
                compiled = self._compile(source)
            except Exception as exc:
                compiled = exc
            self._compiled[source] = compiled
        if isinstance(compiled, Exception):
            raise compiled
        return compiled

    @staticmethod
    def request_info(request: web.Request) -> armor.RequestInfo:
        headers: dict[str, str] = {}
        for key, value in request.headers.items():
            low = key.lower()
            headers[low] = f"{headers[low]},{value}" if low in headers else value
        return armor.RequestInfo(
            path=request.raw_path.split("?", 1)[0],
            method=request.method,
            headers=headers,
            query=request.query_string,
            scheme=request.scheme,
            origin_ip=request.remote or "",
            cookies=dict(request.cookies),
        )

    # ---- the handler ------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        loop_start = time.monotonic()
        entry: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "client": request.remote,
            "method": request.method,
            "host": request.host,
            "path": request.raw_path,
            "websocket": False,
        }
        try:
            response = await self._handle(request, entry, loop_start)
        except Exception as exc:  # a bug in the local LB: answer like Google's front end, keep the trace
            log.error("lb.internal_error", error=repr(exc), path=request.path)
            entry["error"] = repr(exc)
            response = proxy.gfe_error(502)
        entry.setdefault("status", response.status)
        entry["duration_ms"] = round((time.monotonic() - loop_start) * 1000, 2)
        self.requests.append(entry)
        return response

    async def _handle(self, request: web.Request, entry: dict[str, Any], started: float) -> web.StreamResponse:
        upgrade = request.headers.get("Upgrade")
        websocket = bool(upgrade) and "websocket" in str(upgrade).lower()
        entry["websocket"] = websocket
        if upgrade and not websocket:
            entry["error"] = f"non-WebSocket Upgrade: {upgrade}"
            return proxy.bad_request()
        res = self.resolve(request.host, request.raw_path)
        entry.update(via=res.via, url_map=res.url_map or None, backend_service=res.backend_service or None)
        if res.service_name:
            entry["service"] = res.service_name.rsplit("/", 1)[-1]
        if res.tag:
            entry["tag"] = res.tag
        if res.via == "lb" and res.backend_service:
            decision = armor.decide(
                res.policy,
                self.request_info(request),
                compile_expr=self._matcher,
                counters=self.counters,
                now=self.options.armor_clock(),
                scope=res.backend_service,
            )
            entry["armor"] = {"policy": res.policy_name or None, **decision.as_log()}
            if decision.outcome == "redirect" and decision.redirect_to:
                return web.Response(status=302, headers={"Location": decision.redirect_to})
            if not decision.allowed:
                status = decision.status or 403
                body = armor.deny_body(status)
                return web.Response(status=status, text=body, content_type="text/html", charset="utf-8")
        if res.error:
            return self._error(res.error, request)
        revision, cookie = self.choose_revision(res, dict(request.cookies))
        if not revision:
            entry["error"] = f"no revision for tag {res.tag}" if res.tag else "no revision receives traffic"
            return self._error(404 if res.tag else 503, request)
        entry["revision"] = revision
        full = f"{res.service_name}/revisions/{revision}"
        record = self.runtime.record(full)
        rev_obj = self._revision(full)
        timeout_s = record.timeout_s if record else _duration(getattr(rev_obj, "timeout", None), 300.0)
        client_ip = request.remote or ""
        headers = proxy.upstream_request_headers(
            request.headers,
            client_ip=client_ip,
            lb_ip=self.host,
            scheme=request.scheme,
            custom=res.custom_headers if res.via == "lb" else [],
            websocket=websocket,
        )
        extra: dict[str, str] = {}
        if cookie is not None:
            expires = format_datetime(datetime.now(UTC) + AFFINITY_TTL, usegmt=True)
            extra["Set-Cookie"] = f"{AFFINITY_COOKIE}={cookie}; Expires={expires}; Path=/; HttpOnly"
        deadline_loop = _loop_time() + max(0.0, timeout_s - (time.monotonic() - started))
        try:
            async with self.runtime.lease(full) as instance:
                if websocket:
                    return await self._websocket(request, instance.port, headers, deadline_loop, extra, entry)
                assert self._session is not None
                remaining = max(0.001, deadline_loop - _loop_time())
                return await proxy.proxy_http(request, self._session, instance.port, headers, remaining, extra)
        except Unavailable as exc:
            entry["error"] = str(exc).splitlines()[0] if str(exc) else "unavailable"
            return proxy.gfe_error(503)

    async def _websocket(
        self,
        request: web.Request,
        port: int,
        headers: Any,
        deadline: float,
        extra: dict[str, str],
        entry: dict[str, Any],
    ) -> web.StreamResponse:
        remaining = max(0.001, deadline - _loop_time())
        upstream = await proxy.open_upstream(request, port, headers, remaining)
        if isinstance(upstream, web.Response):
            entry["status"] = upstream.status
            for key, value in extra.items():
                upstream.headers.add(key, value)
            return upstream
        outcome = proxy.WsOutcome()
        entry["status"] = 101
        try:
            return await proxy.proxy_websocket(request, upstream, deadline, extra, outcome, self.websockets)
        finally:
            entry.update(
                close_code=outcome.close_code,
                close_reason=outcome.close_reason,
                closed_by=outcome.closed_by,
                messages_up=outcome.messages_up,
                messages_down=outcome.messages_down,
            )
            if outcome.error:
                entry["error"] = outcome.error

    def _error(self, status: int, request: web.Request) -> web.Response:
        if status == 404:
            return web.Response(
                status=404, text=NOT_FOUND_PAGE.format(path=request.path), content_type="text/html", charset="UTF-8"
            )
        return proxy.gfe_error(status)


def _loop_time() -> float:
    import asyncio

    return asyncio.get_running_loop().time()


def _duration(value: Any, default: float) -> float:
    if value is None:
        return default
    if hasattr(value, "total_seconds"):
        seconds = float(value.total_seconds())
        return seconds if seconds > 0 else default
    return default


def _encode_affinity(service_name: str, revision: str) -> str:
    return base64.urlsafe_b64encode(f"{service_name}|{revision}".encode()).decode().rstrip("=")


def _decode_affinity(value: str, service_name: str) -> str | None:
    if not value:
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    name, _, revision = raw.partition("|")
    return revision if name == service_name and revision else None
