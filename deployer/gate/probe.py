"""The gate's probe: N real WebSocket connections at concurrency C, each observed step by step.

asyncio + the ``websockets`` library's sans-I/O ``ClientProtocol`` and asyncio ``ClientConnection``,
driven here instead of through ``websockets.connect`` so that each step can be timed on its own (TCP
connect, TLS, upgrade), a Host header can replace the URL's, and redirects are reported rather than
followed (a gate must see what the target answers, not where it points).

Per connection: TCP connect → TLS (wss) → upgrade (the library checks the 101, ``Upgrade``,
``Connection``, ``Sec-WebSocket-Accept``, subprotocol and extensions) → optional app exchange →
N pings → a hold answering server pings → a clean close. On a refused upgrade the status, headers and
the first bytes of the body are kept, so a 403 from Cloud Armor, a 502 from the load balancer and a 200
from a proxy that dropped the upgrade read differently.

Everything measured goes into ``verdict.Observation`` values; ``verdict.decide`` judges them.
Credentials (bearer token, Google ID token, Authorization-like header values) never reach evidence or
logs: every string copied from the wire is scrubbed of them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidHeader,
    InvalidMessage,
    InvalidStatus,
    InvalidUpgrade,
    NegotiationError,
)
from websockets.extensions.permessage_deflate import enable_client_permessage_deflate
from websockets.http11 import USER_AGENT, Request
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from deployer.gate.spec import GateSpec
from deployer.gate.verdict import Kind, Observation, Verdict, decide
from deployer.logs import get_logger

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[Any]]
ProgressFn = Callable[["Progress"], None]

BODY_BYTES = 256  # first bytes of a refusal's body kept as evidence
TEXT_CHARS = 200  # longest wire string (reason, message) kept as evidence
_SECRETISH = re.compile(r"(authorization|token|secret|password|api[_-]?key|cookie|credential)", re.I)


class Progress:
    """Live counters for a progress line (the CLI renders them on a TTY)."""

    __slots__ = ("done", "failed", "holding", "open", "total")

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self.open = 0
        self.holding = 0


class _Protocol(ClientProtocol):
    """``ClientProtocol`` whose request can carry a Host header other than the URL's."""

    host_header: str | None = None

    def connect(self) -> Request:
        request = super().connect()
        if self.host_header is not None:
            del request.headers["Host"]
            request.headers["Host"] = self.host_header
        return request


def _fetch_id_token(audience: str) -> str:
    """A Google ID token for ``audience`` from the environment's credentials (blocking; run in a thread)."""
    import google.auth.transport.requests  # lazy: google-auth is only needed for IAM-protected targets
    import google.oauth2.id_token

    token = google.oauth2.id_token.fetch_id_token(google.auth.transport.requests.Request(), audience)
    return str(token)


class _Run:
    """One gate run's shared state: target, TLS context, headers, secrets, counters."""

    def __init__(
        self,
        spec: GateSpec,
        headers: Sequence[tuple[str, str]],
        secrets: Sequence[str],
        addrs: list[tuple[Any, ...]],
        clock: Clock,
        sleep: Sleep,
        progress: Progress,
        on_progress: ProgressFn | None,
    ) -> None:
        self.spec = spec
        self.ws_uri = parse_uri(spec.url)
        self.headers = Headers(headers) if headers else None
        self.secrets = [s for s in secrets if s]
        self.addrs = addrs
        self.clock = clock
        self.sleep = sleep
        self.progress = progress
        self.on_progress = on_progress
        self.loop = asyncio.get_running_loop()
        self.expect = re.compile(spec.expect) if spec.expect is not None else None
        self.subprotocols = [Subprotocol(p) for p in spec.subprotocols] or None
        self.extensions = enable_client_permessage_deflate(None) if spec.compression else None
        self.server_hostname = (spec.host.rsplit(":", 1)[0] if spec.host else self.ws_uri.host).strip("[]")
        self.ssl: ssl.SSLContext | None = None
        if spec.secure:
            self.ssl = ssl.create_default_context()
            if spec.ca_file:
                self.ssl.load_verify_locations(spec.ca_file)
        self.log = get_logger(gate_url=spec.url)

    # ---- helpers -------------------------------------------------------------------------------
    def scrub(self, text: str, limit: int = TEXT_CHARS) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text if len(text) <= limit else text[:limit] + "…"

    def _notify(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.progress)

    async def _tcp(self) -> socket.socket:
        """Connect to the first address that accepts; the last one that worked is tried first next time."""
        last: OSError | None = None
        for i, (family, type_, proto, _name, addr) in enumerate(self.addrs):
            sock = socket.socket(family, type_, proto)
            sock.setblocking(False)
            try:
                await self.loop.sock_connect(sock, addr)
            except OSError as exc:
                sock.close()
                last = exc
                continue
            except BaseException:
                sock.close()
                raise
            if i:
                self.addrs.insert(0, self.addrs.pop(i))
            return sock
        assert last is not None
        raise last

    # ---- one connection ------------------------------------------------------------------------
    async def probe(self, index: int) -> Observation:
        obs = Observation(index)
        conn: ClientConnection | None = None
        sock: socket.socket | None = None
        spec, clock = self.spec, self.clock
        phase = "connect"
        t0 = clock()
        try:
            try:
                async with asyncio.timeout(spec.open_timeout_s):
                    sock = await self._tcp()
                    t1 = clock()
                    obs.connect_ms = (t1 - t0) * 1000.0
                    phase = "tls"
                    protocol = _Protocol(
                        self.ws_uri,
                        origin=spec.origin,  # type: ignore[arg-type]
                        extensions=self.extensions,
                        subprotocols=self.subprotocols,
                    )
                    protocol.host_header = spec.host
                    conn = ClientConnection(
                        protocol,
                        ping_interval=None,
                        ping_timeout=None,
                        close_timeout=spec.close_timeout_s,
                        max_queue=None,  # never pause reading: pongs and closes must always be seen
                    )
                    made = conn
                    await self.loop.create_connection(
                        lambda: made,
                        sock=sock,
                        ssl=self.ssl,
                        server_hostname=self.server_hostname if self.ssl else None,
                    )
                    sock = None  # the transport owns it now
                    t2 = clock()
                    if self.ssl is not None:
                        obs.tls_ms = (t2 - t1) * 1000.0
                    phase = "upgrade"
                    await conn.handshake(self.headers, USER_AGENT)
            except TimeoutError:
                self._timed_out(obs, phase)
                return obs
            except Exception as exc:
                self._handshake_failed(obs, phase, exc, conn)
                return obs
            if conn.response is None:
                obs.failure, obs.detail = Kind.HANDSHAKE_EOF, "connection lost during the upgrade"
                return obs
            # The socket may already be closing (a server that closes right after its 101): the next step
            # sees it as a close with the server's code.
            t3 = clock()
            obs.upgrade_ms = (t3 - t2) * 1000.0
            obs.handshake_ms = (t3 - t0) * 1000.0
            obs.status = 101
            obs.accept_valid = True
            obs.subprotocol = conn.subprotocol
            if self.subprotocols and conn.subprotocol is None:
                # RFC 6455 lets a server pick none; a browser does not: the WebSocket constructor's "connection
                # will only be established if the server reports that it has selected one of these subprotocols"
                # (HTML spec; web-platform-tests websockets/constructor/012 "no protocol in response").
                obs.failure = Kind.SUBPROTOCOL
                obs.detail = f"the server selected none of the offered subprotocols ({', '.join(self.subprotocols)})"
                return obs
            self.progress.open += 1
            self._notify()
            try:
                await self._converse(obs, conn)
            finally:
                self.progress.open -= 1
            return obs
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in the probe: could not measure, never a pass
            obs.failure, obs.detail = Kind.PROBE, self.scrub(f"{type(exc).__name__}: {exc}")
            return obs
        finally:
            if sock is not None:
                sock.close()
            if conn is not None and conn.protocol.state is not State.CLOSED and hasattr(conn, "transport"):
                conn.transport.abort()
            self.progress.done += 1
            if obs.failure is not None or (obs.close_code not in (None, 1000, 1001)):
                self.progress.failed += 1
                self.log.debug(
                    "gate.connection_failed",
                    index=index,
                    kind=obs.failure.value if obs.failure else "unclean_close",
                    detail=obs.detail,
                    status=obs.status,
                    close_code=obs.close_code,
                )
            self._notify()

    def _timed_out(self, obs: Observation, phase: str) -> None:
        t = self.spec.open_timeout_s
        if phase == "connect":
            obs.failure, obs.detail = Kind.NETWORK, f"TCP connect did not finish within {t:g}s"
        elif phase == "tls":
            obs.failure, obs.detail = Kind.TLS, f"TLS handshake did not finish within {t:g}s"
        else:
            obs.failure, obs.detail = Kind.HANDSHAKE_TIMEOUT, f"no upgrade response within {t:g}s"

    def _handshake_failed(self, obs: Observation, phase: str, exc: Exception, conn: ClientConnection | None) -> None:
        text = self.scrub(f"{exc}")
        if phase == "connect":
            if isinstance(exc, ConnectionRefusedError):
                obs.failure, obs.detail = Kind.TCP_REFUSED, text
            elif isinstance(exc, OSError):
                obs.failure, obs.detail = Kind.NETWORK, text or type(exc).__name__
            else:
                obs.failure, obs.detail = Kind.PROBE, f"{type(exc).__name__}: {text}"
            return
        if phase == "tls":
            obs.failure = Kind.TLS if isinstance(exc, OSError) else Kind.PROBE  # ssl.SSLError is an OSError
            obs.detail = f"{type(exc).__name__}: {text}"
            return
        response = conn.response if conn is not None else None
        if response is not None:
            obs.status = response.status_code
            obs.headers = tuple((k, self.scrub(v)) for k, v in response.headers.raw_items())
            # Scrub the whole body before cutting it: a token straddling the cut must not leak in part.
            obs.body = self.scrub(bytes(response.body).decode("utf-8", "replace"), BODY_BYTES)
        if isinstance(exc, InvalidStatus):
            status = exc.response.status_code
            reason = self.scrub(exc.response.reason_phrase)
            if 200 <= status < 300:
                obs.failure = Kind.NO_UPGRADE
                obs.detail = f"HTTP {status} {reason}: the upgrade was answered as a plain request"
            elif 300 <= status < 400:
                obs.failure = Kind.REDIRECT
                obs.detail = f"HTTP {status} {reason} to {self.scrub(exc.response.headers.get('Location', '?'))}"
            else:
                obs.failure, obs.detail = Kind.UPGRADE_REFUSED, f"HTTP {status} {reason}"
        elif isinstance(exc, InvalidUpgrade):
            obs.failure, obs.detail = Kind.BAD_UPGRADE, text
        elif isinstance(exc, InvalidHeader) and exc.name.lower() == "sec-websocket-accept":
            obs.failure, obs.detail, obs.accept_valid = Kind.BAD_ACCEPT, text, False
        elif isinstance(exc, InvalidHeader) and exc.name.lower() == "sec-websocket-protocol":
            obs.failure, obs.detail = Kind.SUBPROTOCOL, text
        elif isinstance(exc, NegotiationError):
            obs.failure = Kind.SUBPROTOCOL if "subprotocol" in str(exc) else Kind.EXTENSION
            obs.detail = text
        elif isinstance(exc, InvalidMessage):
            cause = exc.__cause__
            if isinstance(cause, EOFError):
                obs.failure, obs.detail = Kind.HANDSHAKE_EOF, self.scrub(f"{exc}: {cause}")
            else:
                obs.failure, obs.detail = Kind.INVALID_RESPONSE, self.scrub(f"{exc}: {cause}")
        elif isinstance(exc, InvalidHandshake):
            obs.failure, obs.detail = Kind.INVALID_RESPONSE, f"{type(exc).__name__}: {text}"
        elif isinstance(exc, OSError):
            obs.failure, obs.detail = Kind.HANDSHAKE_EOF, f"{type(exc).__name__}: {text}"
        else:
            obs.failure, obs.detail = Kind.PROBE, f"{type(exc).__name__}: {text}"

    def _server_closed(self, obs: Observation, conn: ClientConnection, exc: ConnectionClosed, phase: str) -> None:
        rcvd = exc.rcvd
        obs.failure = Kind.CLOSED
        obs.closed_in = phase
        obs.close_code = rcvd.code if rcvd is not None else 1006
        obs.close_reason = self.scrub(rcvd.reason) if rcvd is not None else ""
        obs.detail = f"server closed with {obs.close_code}" + (f" ({obs.close_reason})" if obs.close_reason else "")

    async def _converse(self, obs: Observation, conn: ClientConnection) -> None:
        spec, clock = self.spec, self.clock
        phase = "app"
        try:
            if spec.send is not None and self.expect is not None:
                last = ""
                t = clock()
                await conn.send(spec.send)
                try:
                    async with asyncio.timeout(spec.app_timeout_s):
                        while True:
                            message = await conn.recv()
                            if isinstance(message, str) and self.expect.search(message):
                                break
                            last = message if isinstance(message, str) else f"<{len(message)} binary bytes>"
                except TimeoutError:
                    obs.failure = Kind.APP_TIMEOUT
                    obs.detail = f"no message matching /{spec.expect}/ within {spec.app_timeout_s:g}s" + (
                        f" (last: {self.scrub(last, 80)})" if last else " (nothing received)"
                    )
                    return
                obs.app_ms = (clock() - t) * 1000.0
            phase = "ping"
            for _ in range(spec.pings):
                t = clock()
                pong = await conn.ping()
                try:
                    async with asyncio.timeout(spec.ping_timeout_s):
                        await pong
                except TimeoutError:
                    obs.failure = Kind.PING_TIMEOUT
                    obs.detail = f"no pong within {spec.ping_timeout_s:g}s (after {len(obs.ping_ms)} pongs)"
                    return
                obs.ping_ms.append((clock() - t) * 1000.0)
            if spec.hold_s > 0:
                phase = "hold"
                await self._hold(obs, conn)
                if obs.failure is not None:
                    return
        except ConnectionClosed as exc:
            self._server_closed(obs, conn, exc, phase)
            return
        await conn.close()
        obs.close_code = conn.protocol.close_code
        if conn.protocol.close_rcvd is not None:
            obs.close_reason = self.scrub(conn.protocol.close_rcvd.reason)
        if obs.close_code not in (1000, 1001):
            obs.detail = (
                "the server did not answer the closing handshake"
                if conn.protocol.close_rcvd is None
                else f"the server answered our close with {obs.close_code}"
            )

    async def _hold(self, obs: Observation, conn: ClientConnection) -> None:
        """Stay connected ``hold_s`` (injected sleep), reading whatever the server sends; record any close."""
        start = self.clock()
        closed: list[ConnectionClosed] = []

        async def drain() -> None:
            try:
                while True:
                    await conn.recv()
            except ConnectionClosed as exc:
                closed.append(exc)

        self.progress.holding += 1
        reader = asyncio.ensure_future(drain())
        timer = asyncio.ensure_future(self.sleep(self.spec.hold_s))
        try:
            await asyncio.wait((reader, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.progress.holding -= 1
            timer.cancel()
            reader.cancel()
        obs.held_s = self.clock() - start
        if closed:
            self._server_closed(obs, conn, closed[0], "hold")
            obs.detail += f" after {obs.held_s:.1f}s of a {self.spec.hold_s:g}s hold"


async def _resolve(host: str, port: int) -> list[tuple[Any, ...]]:
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (str(ip), port))]
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(infos)


async def run_gate(
    spec: GateSpec,
    *,
    clock: Clock = time.perf_counter,
    sleep: Sleep = asyncio.sleep,
    on_progress: ProgressFn | None = None,
    env: Mapping[str, str] | None = None,
) -> Verdict:
    """Probe ``spec.url`` as ``spec`` says and judge it. Never raises for what the target or network does:
    those become a Failed or Error verdict. ``clock`` times every step, ``sleep`` paces the hold."""
    env = os.environ if env is None else env
    log = get_logger(gate_url=spec.url)
    started = datetime.now(UTC)
    context: dict[str, Any] = {"target": spec.describe(), "started_at": started.isoformat()}
    t_start = clock()
    log.info("gate.start", connections=spec.connections, concurrency=spec.concurrency, hold_s=spec.hold_s)

    def finish(observations: list[Observation], setup_error: str | None = None) -> Verdict:
        context["duration_s"] = round(clock() - t_start, 3)
        verdict = decide(observations, spec.thresholds, setup_error=setup_error, context=context)
        log.info(
            "gate.verdict",
            outcome=verdict.outcome.value,
            reasons=list(verdict.reasons),
            **verdict.counts.to_json(),
        )
        return verdict

    headers = list(spec.headers)
    secrets = [v for n, v in spec.headers if _SECRETISH.search(n)]
    if spec.bearer_env is not None:
        token = env.get(spec.bearer_env, "")
        if not token:
            return finish([], f"environment variable {spec.bearer_env} (--bearer-env) is empty or not set")
        headers.append(("Authorization", f"Bearer {token}"))
        secrets.append(token)
    if spec.id_token:
        parts = parse_uri(spec.url)
        audience = spec.audience or f"https://{spec.host or parts.host}"
        context["id_token_audience"] = audience
        try:
            token = await asyncio.to_thread(_fetch_id_token, audience)
        except Exception as exc:
            reason = f"no Google ID token for audience {audience}: {type(exc).__name__}: {exc}"
            return finish([], reason)
        headers.append(("Authorization", f"Bearer {token}"))
        secrets.append(token)

    ws_uri = parse_uri(spec.url)
    t = clock()
    try:
        addrs = await _resolve(ws_uri.host, ws_uri.port)
    except OSError as exc:
        context["dns_ms"] = round((clock() - t) * 1000.0, 3)
        detail = f"could not resolve {ws_uri.host}: {exc}"
        return finish([Observation(i, failure=Kind.DNS, detail=detail) for i in range(spec.connections)])
    context["dns_ms"] = round((clock() - t) * 1000.0, 3)
    context["addresses"] = sorted({str(a[4][0]) for a in addrs})

    progress = Progress(spec.connections)
    try:
        run = _Run(spec, headers, secrets, addrs, clock, sleep, progress, on_progress)
    except InvalidHeader as exc:  # never echo the value: it may be the token
        return finish([], f"header {exc.name} has characters HTTP does not allow")
    except (OSError, ssl.SSLError) as exc:
        return finish([], f"cannot load the CA file {spec.ca_file}: {exc}")
    observations: list[Observation | None] = [None] * spec.connections
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < spec.connections:
            i = next_index
            next_index += 1
            observations[i] = await run.probe(i)

    workers = [asyncio.ensure_future(worker()) for _ in range(min(spec.concurrency, spec.connections))]
    try:
        await asyncio.gather(*workers)
    except BaseException:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        raise
    return finish([o for o in observations if o is not None])
