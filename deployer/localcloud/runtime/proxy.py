"""Moving bytes: HTTP and WebSocket proxying from the load balancer to a revision's process.

Header rules (gcp-facts §2.3, §2.5):
- hop-by-hop headers are not forwarded: "the following hop-by-hop headers are not propagated by the
  target proxy: Connection, Keep-Alive, Proxy-Authenticate, Proxy-Authorization, TE, Trailers,
  Transfer-Encoding, and Upgrade" — nor any header the ``Connection`` header names (RFC 7230 §6.1).
  A WebSocket handshake is re-made towards the backend, so the backend still sees its own
  ``Upgrade``/``Connection`` pair.
- the backend service's ``customRequestHeaders`` are added: "Headers added by the load balancer
  overwrite any existing headers that have the same name. Header names are case insensitive."
  Variables in values (``{client_region}`` …) are passed through unexpanded (not emulated).
- ``X-Forwarded-For``: Google's LB appends "<client IP>, <load balancer IP>" to what the client sent
  (load-balancing/docs/https "X-Forwarded-For header"; not quoted in gcp-facts — [Inference] from
  Google's docs as remembered); ``X-Forwarded-Proto`` is the client's scheme; ``Via: 1.1 google``.

WebSockets are proxied frame by frame: the client side is an aiohttp ``WebSocketResponse``, the
backend side a ``websockets`` client (its failed handshakes keep the backend's status, headers and
body, which go back to the client unchanged). Close codes and reasons cross in both directions. A
connection that drops without a close frame is dropped on the other side too (1006 both ways).

At the revision's ``timeout`` (gcp-facts §1.1: a WebSocket is "subject to request timeouts … the
client will be disconnected when the request times out") both TCP connections are aborted, without a
close frame: the client sees 1006 (abnormal closure). DOUBT: Google does not say what a client sees;
"disconnected" and Google "ends the request" read as a dropped connection, and 1006 is what clients
report in the wild for Cloud Run timeouts, but no Google text confirms it.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog
import websockets
from aiohttp import WSMsgType, web
from multidict import CIMultiDict, CIMultiDictProxy
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.frames import Close

log = structlog.get_logger("localcloud.lb")

# gcp-facts §2.3 (target proxies) ∪ facts.HOP_BY_HOP_HEADERS (§2.5 custom-header rules).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Headers of a WebSocket handshake that each leg negotiates for itself.
WS_HANDSHAKE = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-accept",
        "sec-websocket-protocol",
    }
)

GFE_PAGE = (
    "<html><head>\n"
    '<meta http-equiv="content-type" content="text/html;charset=utf-8">\n'
    "<title>{status} Server Error</title>\n"
    "</head>\n"
    "<body text=#000000 bgcolor=#ffffff>\n"
    "<h1>Error: Server Error</h1>\n"
    "<h2>{text}</h2>\n"
    "<h2></h2>\n"
    "</body></html>\n"
)
# Google front end pages, as captured in many client logs: 502 "The server encountered a temporary error
# and could not complete your request.<p>Please try again in 30 seconds."; Cloud Run with no ready
# instance answers "The service you requested is not available yet.<p>Please try again in 30 seconds."
# (503, sometimes 500). DOUBT: the 504 text below is ours, modelled on the same page.
_RETRY = "Please try again in 30 seconds."
GFE_TEXT = {
    502: "The server encountered a temporary error and could not complete your request.<p>" + _RETRY,
    503: "The service you requested is not available yet.<p>" + _RETRY,
    504: "The server did not answer in time and could not complete your request.<p>" + _RETRY,
}
# Google's "That's an error" 400 page, shortened (the real one carries a logo and CSS).
BAD_REQUEST_PAGE = (
    "<!DOCTYPE html>\n<html lang=en>\n<meta charset=utf-8>\n<title>Error 400 (Bad Request)!!1</title>\n"
    "<p><b>400.</b> <ins>That’s an error.</ins>\n"
    "<p>Your client has issued a malformed or illegal request.  <ins>That’s all we know.</ins>\n"
)


def gfe_error(status: int) -> web.Response:
    text = GFE_TEXT.get(status, GFE_TEXT[502])
    return web.Response(
        status=status,
        text=GFE_PAGE.format(status=status, text=text),
        content_type="text/html",
        charset="UTF-8",
        headers={"Via": "1.1 google"},
    )


def bad_request() -> web.Response:
    return web.Response(status=400, text=BAD_REQUEST_PAGE, content_type="text/html", charset="UTF-8")


def connection_tokens(headers: Any) -> set[str]:
    tokens: set[str] = set()
    for value in headers.getall("Connection", []) if hasattr(headers, "getall") else [headers.get("Connection", "")]:
        tokens.update(t.strip().lower() for t in str(value).split(",") if t.strip())
    return tokens


def strip_hop_by_hop(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> CIMultiDict[str]:
    drop = HOP_BY_HOP | connection_tokens(headers)
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in headers.items():
        if key.lower() not in drop:
            out.add(key, value)
    return out


def parse_custom_headers(custom: list[str]) -> list[tuple[str, str]]:
    """``["Name: value", ...]`` (the API's form, §2.5: "header-name:header-value")."""
    out: list[tuple[str, str]] = []
    for item in custom:
        name, sep, value = str(item).partition(":")
        if sep and name.strip():
            out.append((name.strip(), value.strip()))
    return out


def upstream_request_headers(
    headers: CIMultiDictProxy[str],
    *,
    client_ip: str,
    lb_ip: str,
    scheme: str,
    custom: list[tuple[str, str]],
    websocket: bool,
) -> CIMultiDict[str]:
    out = strip_hop_by_hop(headers)
    if websocket:
        for key in list(out.keys()):
            if key.lower() in WS_HANDSHAKE:
                out.popall(key, None)
    prior = ", ".join(out.getall("X-Forwarded-For", []))
    out.popall("X-Forwarded-For", None)
    out["X-Forwarded-For"] = f"{prior}, {client_ip}, {lb_ip}" if prior else f"{client_ip}, {lb_ip}"
    out["X-Forwarded-Proto"] = scheme
    out.add("Via", "1.1 google")
    for name, value in custom:  # custom headers overwrite same-named ones (§2.5)
        out.popall(name, None)
        out[name] = value
    return out


# ---- HTTP ------------------------------------------------------------------------------------


async def proxy_http(
    request: web.Request,
    session: aiohttp.ClientSession,
    port: int,
    headers: CIMultiDict[str],
    timeout_s: float,
    extra_response_headers: dict[str, str],
) -> web.StreamResponse:
    """Forward one HTTP request; stream the answer back. Errors become Google's 502/504 pages."""
    url = f"http://127.0.0.1:{port}{request.raw_path}"
    data = request.content if request.body_exists else None
    try:
        async with session.request(
            request.method,
            url,
            headers=headers,
            data=data,
            allow_redirects=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in strip_hop_by_hop(upstream.headers).items():
                if key.lower() != "content-length" or "chunked" not in upstream.headers.get("Transfer-Encoding", ""):
                    response.headers.add(key, value)
            response.headers.add("Via", "1.1 google")
            for key, value in extra_response_headers.items():
                response.headers.add(key, value)
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
    except TimeoutError:
        return gfe_error(504)
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError):
        return gfe_error(502)


# ---- WebSocket -------------------------------------------------------------------------------


@dataclass
class WsOutcome:
    """What happened to one proxied WebSocket (for the LB request log)."""

    status: int = 101
    close_code: int | None = None
    close_reason: str = ""
    closed_by: str = ""  # client | backend | timeout | lb
    messages_up: int = 0
    messages_down: int = 0
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _requested_protocols(headers: CIMultiDictProxy[str]) -> list[str]:
    raw = ",".join(headers.getall("Sec-WebSocket-Protocol", []))
    return [p.strip() for p in raw.split(",") if p.strip()]


def _offers_deflate(headers: CIMultiDictProxy[str]) -> bool:
    return "permessage-deflate" in ",".join(headers.getall("Sec-WebSocket-Extensions", [])).lower()


def _abort(transport: Any) -> None:
    if transport is not None:
        with contextlib.suppress(Exception):
            transport.abort()


async def open_upstream(
    request: web.Request, port: int, headers: CIMultiDict[str], timeout_s: float
) -> ClientConnection | web.Response:
    """Handshake with the backend. A refused handshake comes back as the backend's own response."""
    host = request.host or f"127.0.0.1:{port}"
    uri = f"ws://{host}{request.raw_path}"
    protocols = _requested_protocols(request.headers)
    try:
        return await websockets.connect(
            uri,
            host="127.0.0.1",
            port=port,
            additional_headers=[(k, v) for k, v in headers.items() if k.lower() != "host"],
            user_agent_header=None,
            subprotocols=protocols or None,  # type: ignore[arg-type]
            compression="deflate" if _offers_deflate(request.headers) else None,
            open_timeout=timeout_s,
            ping_interval=None,
            close_timeout=2,
            max_size=None,
            max_queue=16,
            proxy=None,
        )
    except InvalidStatus as exc:
        resp = exc.response
        out = web.Response(status=resp.status_code, reason=resp.reason_phrase, body=resp.body or b"")
        for key, value in resp.headers.raw_items():
            if key.lower() not in HOP_BY_HOP and key.lower() not in ("content-length", "date", "server"):
                out.headers.add(key, value)
        out.headers.add("Via", "1.1 google")
        return out
    except TimeoutError:
        return gfe_error(504)
    except (OSError, InvalidHandshake, ValueError) as exc:
        log.info("lb.upstream_handshake_failed", error=repr(exc), port=port)
        return gfe_error(502)


async def proxy_websocket(
    request: web.Request,
    upstream: ClientConnection,
    deadline: float,
    extra_response_headers: dict[str, str],
    outcome: WsOutcome,
    registry: set[web.WebSocketResponse] | None = None,
) -> web.StreamResponse:
    """Relay frames both ways until a side closes or ``deadline`` (loop time: the revision's request
    timeout counted from the upgrade request) ends it."""
    loop = asyncio.get_running_loop()
    chosen = upstream.subprotocol
    client = web.WebSocketResponse(
        protocols=(chosen,) if chosen else (),
        autoping=True,
        autoclose=False,
        compress=bool(_offers_deflate(request.headers) and upstream.protocol.extensions),
        max_msg_size=0,
    )
    for key, value in upstream.response.headers.raw_items() if upstream.response else []:
        low = key.lower()
        if low not in HOP_BY_HOP and low not in WS_HANDSHAKE and low not in ("content-length", "date", "server"):
            client.headers.add(key, value)
    client.headers.add("Via", "1.1 google")
    for key, value in extra_response_headers.items():
        client.headers.add(key, value)
    transport = request.transport
    try:
        await client.prepare(request)
    except Exception as exc:
        outcome.error = f"client handshake failed: {exc!r}"
        await upstream.close(1001, "")
        return client
    if registry is not None:
        registry.add(client)

    async def client_to_backend() -> str:
        while True:
            msg = await client.receive()
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                try:
                    await upstream.send(msg.data)
                except ConnectionClosed:
                    return "backend"
                outcome.messages_up += 1
            elif msg.type == WSMsgType.CLOSE:
                outcome.close_code, outcome.close_reason = int(msg.data), str(msg.extra or "")
                return "client"
            else:  # CLOSING / CLOSED / ERROR: the client went away without a close frame
                return "client-gone"

    async def backend_to_client() -> str:
        try:
            async for data in upstream:
                try:
                    if isinstance(data, str):
                        await client.send_str(data)
                    else:
                        await client.send_bytes(data)
                except (ConnectionError, RuntimeError):
                    return "client-gone"
                outcome.messages_down += 1
        except ConnectionClosed:
            pass
        return "backend"

    up = asyncio.create_task(client_to_backend())
    down = asyncio.create_task(backend_to_client())
    try:
        remaining = max(0.0, deadline - loop.time())
        done, _pending = await asyncio.wait({up, down}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            # The request timeout (gcp-facts §1.1): drop both connections without a close frame.
            outcome.closed_by, outcome.close_code, outcome.close_reason = "timeout", 1006, ""
            _abort(transport)
            _abort(upstream.transport)
        else:
            first = down if down in done else up
            who = first.result() if first.exception() is None else "client-gone"
            if who == "backend":
                await _backend_closed(client, upstream, transport, outcome)
            elif who == "client":
                outcome.closed_by = "client"
                code = outcome.close_code if outcome.close_code not in (None, 1005, 1006, 1015) else 1000
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(upstream.close(code, outcome.close_reason), 5)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.close(code=code, message=outcome.close_reason.encode()), 5)
            else:
                outcome.closed_by, outcome.close_code = "client", 1006
                _abort(upstream.transport)
    except asyncio.CancelledError:
        outcome.closed_by = outcome.closed_by or "lb"
        _abort(transport)
        _abort(upstream.transport)
        raise
    finally:
        for task in (up, down):
            task.cancel()
        for task in (up, down):
            with contextlib.suppress(BaseException):
                await task
        if registry is not None:
            registry.discard(client)
    return client


async def _backend_closed(
    client: web.WebSocketResponse, upstream: ClientConnection, transport: Any, outcome: WsOutcome
) -> None:
    rcvd: Close | None = upstream.protocol.close_rcvd
    outcome.closed_by = "backend"
    if rcvd is None:  # the backend vanished without a close frame: so does the client's connection
        outcome.close_code = 1006
        _abort(transport)
        return
    outcome.close_code, outcome.close_reason = rcvd.code, rcvd.reason
    code = rcvd.code if rcvd.code not in (1005, 1006, 1015) else 1000
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.close(code=code, message=rcvd.reason.encode()), 5)
