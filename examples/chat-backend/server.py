#!/usr/bin/env python3
"""The sample chat backend: the WebSocket service the demo deploys (the local twin of the seed's ``/ws``).

It follows Cloud Run's container contract: it listens on ``PORT`` (default 8080) on all interfaces,
logs one JSON object per line on stdout (``severity`` + ``message``), and on SIGTERM closes every open
WebSocket with 1001 (going away) and exits 0.

Routes
    GET /         plain HTTP: what this is, its revision and mode, where the WebSocket lives
    GET /health   200 JSON ``{"status": "ok", ...}`` (also in the failure modes: liveness checks pass
                  broken releases, which is the point of the WebSocket gate)
    GET /headers  the request headers as the backend saw them (Authorization masked); lets load-balancer
                  tests check custom headers, X-Forwarded-* and hop-by-hop stripping
    GET /ws       the WebSocket. If ``AUTH_TOKEN`` is set, the upgrade needs ``Authorization: Bearer
                  <token>``: missing → 401, wrong → 403, both before the upgrade.

Messages on /ws (text JSON)
    server → client every WEBSOCKET_HEARTBEAT_INTERVAL s: {"type": "heartbeat", "seq": n, "ts": unix}
    {"type": "ping"}     → {"type": "pong"}            ("id" is echoed when given)
    {"type": "whoami"}   → {"type": "whoami", "revision": ..., "service": ..., "version": ..., "mode": ...}
    {"type": "headers"}  → {"type": "headers", "headers": {...}}   (the upgrade request's headers)
    any other text       → {"type": "echo", "data": <the text>};  binary frames are echoed as binary

Failure modes (env ``CHAT_MODE``; the local cloud's image map sets it per image tag)
    ok                 the healthy service (default)
    refuse-upgrade     answers the WebSocket upgrade with 403 (plain HTTP still works)
    never-listen       runs, logs, never binds PORT (a revision that never becomes ready)
    exit-after         serves, then exits with code 1 after CHAT_FAIL_AFTER s (a crash)
    slow-handshake     delays the 101 response by CHAT_SLOW_SECONDS
    close-1011-after   closes each socket with 1011 CHAT_FAIL_AFTER s after it opened
    mute               accepts sockets, then never sends an application message (no heartbeat,
                       no pong, no echo); WebSocket-level pings are still answered by aiohttp

Standard library + aiohttp only, like a small real service would be.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import signal
import sys
import time
from typing import Any

from aiohttp import WSMsgType, web

MODES = ("ok", "refuse-upgrade", "never-listen", "exit-after", "slow-handshake", "close-1011-after", "mute")


def log(severity: str, message: str, **fields: Any) -> None:
    """One Cloud Logging-shaped JSON line on stdout."""
    print(json.dumps({"severity": severity, "message": message, **fields}), flush=True)


class Settings:
    def __init__(self, env: dict[str, str]) -> None:
        self.port = int(env.get("PORT", "8080"))
        self.host = env.get("HOST", "0.0.0.0")
        self.mode = env.get("CHAT_MODE", "ok")
        if self.mode not in MODES:
            raise SystemExit(f"CHAT_MODE={self.mode!r} is not one of {', '.join(MODES)}")
        self.heartbeat_s = float(env.get("WEBSOCKET_HEARTBEAT_INTERVAL", "25"))
        self.fail_after_s = float(env.get("CHAT_FAIL_AFTER", "5"))
        self.slow_s = float(env.get("CHAT_SLOW_SECONDS", "6"))
        self.auth_token = env.get("AUTH_TOKEN") or None
        self.revision = env.get("K_REVISION", "local")
        self.service = env.get("K_SERVICE", "chat-backend")
        self.version = env.get("CHAT_VERSION", "dev")


SETTINGS = web.AppKey("settings", Settings)
SOCKETS = web.AppKey("sockets", set)


def identity(s: Settings) -> dict[str, Any]:
    return {"service": s.service, "revision": s.revision, "version": s.version, "mode": s.mode}


def visible_headers(request: web.Request) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in request.headers.items():
        low = key.lower()
        shown = "***" if low in ("authorization", "proxy-authorization", "cookie") else value
        out[low] = f"{out[low]}, {shown}" if low in out else shown
    return out


async def index(request: web.Request) -> web.Response:
    s = request.app[SETTINGS]
    body = {
        **identity(s),
        "message": "chat backend: open a WebSocket at /ws; health at /health",
        "websocket": "/ws",
        "auth": "bearer" if s.auth_token else "none",
    }
    return web.json_response(body, headers={"X-Chat-Revision": s.revision})


async def health(request: web.Request) -> web.Response:
    s = request.app[SETTINGS]
    return web.json_response({"status": "ok", **identity(s)}, headers={"X-Chat-Revision": s.revision})


async def headers(request: web.Request) -> web.Response:
    return web.json_response({"headers": visible_headers(request), "remote": request.remote})


def check_auth(request: web.Request, s: Settings) -> web.Response | None:
    if s.auth_token is None:
        return None
    given = request.headers.get("Authorization", "")
    if not given:
        return web.json_response(
            {"error": "missing bearer token"}, status=401, headers={"WWW-Authenticate": 'Bearer realm="chat"'}
        )
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), s.auth_token.encode()):
        return web.json_response({"error": "invalid bearer token"}, status=403)
    return None


async def websocket(request: web.Request) -> web.StreamResponse:
    s = request.app[SETTINGS]
    denied = check_auth(request, s)
    if denied is not None:
        log("WARNING", "websocket upgrade denied", status=denied.status, remote=request.remote)
        return denied
    if s.mode == "refuse-upgrade":
        log("WARNING", "websocket upgrade refused (mode refuse-upgrade)", remote=request.remote)
        return web.json_response({"error": "websocket upgrades are refused by this release"}, status=403)
    if s.mode == "slow-handshake":
        await asyncio.sleep(s.slow_s)

    ws = web.WebSocketResponse(autoping=True)
    ws.headers["X-Chat-Revision"] = s.revision
    await ws.prepare(request)
    sockets: set[web.WebSocketResponse] = request.app[SOCKETS]
    sockets.add(ws)
    upgrade_headers = visible_headers(request)
    background: list[asyncio.Task[None]] = []
    if s.mode != "mute" and s.heartbeat_s > 0:
        background.append(asyncio.create_task(heartbeat(ws, s.heartbeat_s)))
    if s.mode == "close-1011-after":
        background.append(asyncio.create_task(close_later(ws, s.fail_after_s)))
    try:
        async for msg in ws:
            if s.mode == "mute":
                continue
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(json.dumps(answer(msg.data, s, upgrade_headers)))
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        for task in background:
            task.cancel()
        sockets.discard(ws)
    return ws


def answer(text: str, s: Settings, upgrade_headers: dict[str, str]) -> dict[str, Any]:
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    kind = parsed.get("type") if isinstance(parsed, dict) else None
    if kind == "ping":
        reply: dict[str, Any] = {"type": "pong"}
        if "id" in parsed:
            reply["id"] = parsed["id"]
        return reply
    if kind == "whoami":
        return {"type": "whoami", **identity(s)}
    if kind == "headers":
        return {"type": "headers", "headers": upgrade_headers}
    return {"type": "echo", "data": text}


async def heartbeat(ws: web.WebSocketResponse, every_s: float) -> None:
    seq = 0
    try:
        while not ws.closed:
            await asyncio.sleep(every_s)
            seq += 1
            await ws.send_str(json.dumps({"type": "heartbeat", "seq": seq, "ts": time.time()}))
    except (ConnectionResetError, RuntimeError):
        return


async def close_later(ws: web.WebSocketResponse, after_s: float) -> None:
    await asyncio.sleep(after_s)
    if not ws.closed:
        log("ERROR", "closing websocket with 1011 (mode close-1011-after)")
        await ws.close(code=1011, message=b"internal error (simulated)")


async def main() -> int:
    s = Settings(dict(os.environ))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    if s.mode == "never-listen":
        log("INFO", "starting without listening (mode never-listen)", port=s.port, **identity(s))
        await stop.wait()
        return 0

    app = web.Application()
    app[SETTINGS] = s
    app[SOCKETS] = set()
    app.add_routes(
        [web.get("/", index), web.get("/health", health), web.get("/headers", headers), web.get("/ws", websocket)]
    )
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, s.host, s.port, backlog=1024)
    await site.start()
    log("INFO", "listening", port=s.port, **identity(s))

    if s.mode == "exit-after":
        loop.call_later(s.fail_after_s, crash, s.fail_after_s)

    await stop.wait()
    sockets: set[web.WebSocketResponse] = app[SOCKETS]
    log("INFO", "SIGTERM: closing websockets with 1001", open=len(sockets))
    await asyncio.gather(
        *(ws.close(code=1001, message=b"server shutting down") for ws in list(sockets)), return_exceptions=True
    )
    await runner.cleanup()
    log("INFO", "stopped")
    return 0


def crash(after_s: float) -> None:
    log("ERROR", f"exiting with code 1 after {after_s:g}s (mode exit-after)")
    sys.stdout.flush()
    os._exit(1)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
