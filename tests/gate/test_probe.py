"""The gate against real local servers, each broken on purpose: every one must yield Failed with the right
reason; healthy ones Passed; too few samples Inconclusive; an unresolvable host Error."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import structlog
from websockets.asyncio.server import ServerConnection, serve

from deployer.gate import GateSpec, Outcome, Thresholds, run_gate
from tests.gate.conftest import http_response, raw_server, read_request, upgrade_response

FAST = Thresholds(min_samples=3, handshake_p95_ms=2000.0)


def spec(url: str, **kw: Any) -> GateSpec:
    kw.setdefault("connections", 3)
    kw.setdefault("concurrency", 3)
    kw.setdefault("open_timeout_s", 3.0)
    kw.setdefault("ping_timeout_s", 1.0)
    kw.setdefault("close_timeout_s", 1.0)
    kw.setdefault("thresholds", FAST)
    return GateSpec(url, **kw)


@asynccontextmanager
async def ws_server(handler: Any, **kw: Any) -> AsyncIterator[int]:
    async with serve(handler, "127.0.0.1", 0, **kw) as server:
        yield next(iter(server.sockets)).getsockname()[1]


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


def answer_with(payload: bytes) -> Any:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(payload)
        await writer.drain()
        await reader.read()  # let the client close first

    return handler


def only_failure(verdict: Any) -> Any:
    assert verdict.outcome is Outcome.FAILED, verdict.reasons
    assert len(verdict.failures) == 1, [g.group for g in verdict.failures]
    return verdict.failures[0]


# ---- healthy ----------------------------------------------------------------------------------------


async def test_healthy_echo_server_passes_with_app_exchange_pings_and_hold():
    async with ws_server(echo) as port:
        v = await run_gate(spec(f"ws://127.0.0.1:{port}/ws", send="hello", expect="^hello$", pings=3, hold_s=0.2))
    assert v.outcome is Outcome.PASSED, v.reasons
    assert v.counts.ok == 3
    assert v.latency["handshake"].n == 3 and v.latency["ping"].n == 9 and v.latency["app"].n == 3
    assert v.close_codes == {"1000": 3}
    for o in v.samples:
        assert o.accept_valid is True and o.status == 101
        assert o.held_s is not None and o.held_s >= 0.2
        assert o.connect_ms is not None and o.upgrade_ms is not None and o.tls_ms is None


async def test_too_few_samples_is_inconclusive():
    async with ws_server(echo) as port:
        v = await run_gate(spec(f"ws://127.0.0.1:{port}/ws", connections=2, thresholds=Thresholds(min_samples=5)))
    assert v.outcome is Outcome.INCONCLUSIVE
    assert v.counts.ok == 2


async def test_unresolvable_host_is_error_not_failed():
    v = await run_gate(spec("ws://nonexistent.invalid/ws"))
    assert v.outcome is Outcome.ERROR
    assert v.errors[0].kind == "dns" and v.errors[0].count == 3
    assert "nonexistent.invalid" in v.errors[0].examples[0].detail


async def test_concurrency_is_respected_and_every_connection_is_made():
    open_now, peak, seen = 0, 0, 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal open_now, peak, seen
        open_now += 1
        seen += 1
        peak = max(peak, open_now)
        try:
            await ws.wait_closed()
        finally:
            open_now -= 1

    async with ws_server(handler) as port:
        v = await run_gate(spec(f"ws://127.0.0.1:{port}/ws", connections=12, concurrency=4, hold_s=0.05))
    assert v.outcome is Outcome.PASSED
    assert seen == 12
    assert 1 <= peak <= 4


# ---- refused or broken upgrades -------------------------------------------------------------------


async def test_200_without_upgrade_reads_as_a_dropped_upgrade():
    body = b"<html>Welcome to the proxy</html>"
    async with raw_server(answer_with(http_response("200 OK", {"Content-Type": "text/html"}, body))) as port:
        v = await run_gate(spec(f"ws://127.0.0.1:{port}/ws"))
    g = only_failure(v)
    assert g.group == "no_upgrade HTTP 200" and g.kind == "no_upgrade"
    assert g.examples[0].body == body.decode()
    assert ("Content-Type", "text/html") in g.examples[0].headers


@pytest.mark.parametrize(
    ("status", "body"),
    [
        ("403 Forbidden", b"<!doctype html><title>403</title>Your client does not have permission"),  # Cloud Armor
        ("404 Not Found", b"not found"),
        ("426 Upgrade Required", b"upgrade required"),
        ("502 Bad Gateway", b"<title>502 Server Error</title>The server encountered a temporary error"),  # LB
    ],
)
async def test_refused_upgrade_keeps_status_headers_and_body(status, body):
    payload = http_response(status, {"Content-Type": "text/html", "X-Served-By": "broken"}, body)
    async with raw_server(answer_with(payload)) as port:
        v = await run_gate(spec(f"ws://127.0.0.1:{port}/ws"))
    code = int(status.split()[0])
    g = only_failure(v)
    assert g.group == f"upgrade_refused HTTP {code}"
    ex = g.examples[0]
    assert ex.status == code
    assert ex.body == body.decode()
    assert ("X-Served-By", "broken") in ex.headers
    assert ex.handshake_ms is None


async def test_redirect_is_reported_not_followed():
    payload = http_response("301 Moved Permanently", {"Location": "wss://elsewhere.example/ws"})
    async with raw_server(answer_with(payload)) as port:
        v = await run_gate(spec(f"ws://127.0.0.1:{port}/ws"))
    g = only_failure(v)
    assert g.group == "redirect HTTP 301"
    assert "wss://elsewhere.example/ws" in g.examples[0].detail


async def test_wrong_sec_websocket_accept_is_caught():
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, headers = await read_request(reader)
        writer.write(upgrade_response(headers["sec-websocket-key"], accept="dGhlIHNhbXBsZSBub25jZQ=="))
        await writer.drain()
        await reader.read()

    async with raw_server(handler) as port:
        v = await run_gate(spec(f"ws://127.0.0.1:{port}/ws"))
    g = only_failure(v)
    assert g.kind == "bad_accept"
    assert g.examples[0].accept_valid is False
    assert g.examples[0].status == 101
    assert "Sec-WebSocket-Accept" in g.examples[0].detail


async def test_101_without_upgrade_header_is_a_bad_upgrade():
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, headers = await read_request(reader)
        writer.write(upgrade_response(headers["sec-websocket-key"], {"Upgrade": "h2c"}))
        await writer.drain()
        await reader.read()

    async with raw_server(handler) as port:
        v = await run_gate(spec(f"ws://127.0.0.1:{port}/ws"))
    assert only_failure(v).kind == "bad_upgrade"


async def test_unrequested_subprotocol_is_caught():
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, headers = await read_request(reader)
        assert "sec-websocket-protocol" not in headers
        writer.write(upgrade_response(headers["sec-websocket-key"], {"Sec-WebSocket-Protocol": "chat.v2"}))
        await writer.drain()
        await reader.read()

    async with raw_server(handler) as port:
        v = await run_gate(spec(f"ws://127.0.0.1:{port}/ws"))
    g = only_failure(v)
    assert g.kind == "subprotocol"
    assert "no subprotocols supported" in g.examples[0].detail


async def test_requested_subprotocol_and_origin_are_sent_and_recorded():
    seen: list[tuple[str | None, str | None]] = []

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        seen.append((ws.request.headers.get("Origin"), ws.request.headers.get("Sec-WebSocket-Protocol")))
        await ws.wait_closed()

    async with ws_server(handler, subprotocols=["chat.v2"]) as port:
        v = await run_gate(
            spec(f"ws://127.0.0.1:{port}/ws", subprotocols=("chat.v1", "chat.v2"), origin="https://app.example")
        )
    assert v.outcome is Outcome.PASSED, v.reasons
    assert {o.subprotocol for o in v.samples} == {"chat.v2"}
    assert seen[0] == ("https://app.example", "chat.v1, chat.v2")


async def test_offered_subprotocols_none_selected_fails_as_a_browser_would():
    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async with ws_server(handler) as port:  # a server that supports no subprotocol: selects none
        v = await run_gate(spec(f"ws://127.0.0.1:{port}/ws", subprotocols=("chat.v1",)))
    g = only_failure(v)
    assert g.kind == "subprotocol"
    assert g.examples[0].detail == "the server selected none of the offered subprotocols (chat.v1)"


async def test_server_hanging_up_before_answering():
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)  # then close without a word

    async with raw_server(handler) as port:
        v = await run_gate(spec(f"ws://127.0.0.1:{port}/ws"))
    assert only_failure(v).kind == "handshake_eof"


async def test_garbage_response_is_invalid():
    async with raw_server(answer_with(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")) as port:
        v = await run_gate(spec(f"ws://127.0.0.1:{port}/ws"))
    assert only_failure(v).kind == "invalid_response"


async def test_no_upgrade_response_before_the_open_timeout():
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(30)

    async with raw_server(handler) as port:
        v = await run_gate(spec(f"ws://127.0.0.1:{port}/ws", open_timeout_s=0.3))
    g = only_failure(v)
    assert g.kind == "handshake_timeout"
    assert "0.3s" in g.examples[0].detail


async def test_nothing_listening_is_a_measured_refusal():
    async with raw_server(answer_with(b"")) as port:
        pass  # the port is free again
    v = await run_gate(spec(f"ws://127.0.0.1:{port}/ws"))
    assert only_failure(v).kind == "tcp_refused"


async def test_handshake_slower_than_the_threshold_fails_on_latency():
    async def slow(connection: ServerConnection, request: Any) -> None:
        await asyncio.sleep(0.3)

    async with ws_server(echo, process_request=slow) as port:
        v = await run_gate(
            spec(f"ws://127.0.0.1:{port}/ws", thresholds=Thresholds(min_samples=3, handshake_p95_ms=150))
        )
    assert v.outcome is Outcome.FAILED
    assert v.counts.failed == 0  # every connection worked: the latency rule decides
    check = next(c for c in v.checks if c.name == "handshake_p95_ms")
    assert not check.ok and check.observed is not None and check.observed >= 300
    assert any(r.startswith("handshake p95") and "> 150 ms" in r for r in v.reasons)


# ---- after the upgrade -----------------------------------------------------------------------------


async def test_close_1011_after_a_while_is_caught_by_the_hold():
    async def flaky(ws: ServerConnection) -> None:
        await asyncio.sleep(1.0)
        await ws.close(1011, "internal error")

    async with ws_server(flaky) as port:
        v = await run_gate(spec(f"ws://127.0.0.1:{port}/ws", hold_s=2.0))
    g = only_failure(v)
    assert g.group == "closed 1011 (abnormal) during hold"
    ex = g.examples[0]
    assert ex.close_code == 1011 and ex.close_reason == "internal error" and ex.closed_in == "hold"
    assert ex.held_s is not None and 0.8 <= ex.held_s < 2.0
    assert v.close_codes == {"1011": 3}


async def test_the_same_server_passes_a_hold_shorter_than_its_fault():
    async def flaky(ws: ServerConnection) -> None:
        await asyncio.sleep(1.0)
        await ws.close(1011, "internal error")

    async with ws_server(flaky) as port:
        v = await run_gate(spec(f"ws://127.0.0.1:{port}/ws", hold_s=0.1))
    assert v.outcome is Outcome.PASSED, v.reasons


async def test_hold_uses_the_injected_sleep():
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    async with ws_server(echo) as port:
        v = await run_gate(spec(f"ws://127.0.0.1:{port}/ws", hold_s=3600.0), sleep=fake_sleep)
    assert v.outcome is Outcome.PASSED
    assert slept == [3600.0, 3600.0, 3600.0]


async def test_no_pong_is_a_ping_timeout():
    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, headers = await read_request(reader)
        writer.write(upgrade_response(headers["sec-websocket-key"]))
        await writer.drain()
        while await reader.read(4096):  # swallow pings, never answer
            pass

    async with raw_server(deaf) as port:
        v = await run_gate(spec(f"ws://127.0.0.1:{port}/ws", ping_timeout_s=0.3))
    g = only_failure(v)
    assert g.kind == "ping_timeout"
    assert v.latency["handshake"].n == 3  # the upgrade itself was fine


async def test_never_answering_the_app_message_is_an_app_timeout():
    async def mute(ws: ServerConnection) -> None:
        await ws.send('{"type":"heartbeat"}')  # chatter that must not count as the answer
        await ws.wait_closed()

    async with ws_server(mute) as port:
        v = await run_gate(
            spec(f"ws://127.0.0.1:{port}/ws", send='{"type":"ping"}', expect='"pong"', app_timeout_s=0.3)
        )
    g = only_failure(v)
    assert g.kind == "app_timeout"
    assert "heartbeat" in g.examples[0].detail  # the last thing it did say


async def test_server_closing_during_pings_is_recorded_with_its_code():
    async def closer(ws: ServerConnection) -> None:
        await ws.close(1013, "try again later")

    async with ws_server(closer) as port:
        v = await run_gate(spec(f"ws://127.0.0.1:{port}/ws", pings=2))
    g = only_failure(v)
    assert g.kind == "closed"
    assert g.examples[0].close_code == 1013 and g.examples[0].closed_in in ("ping", "app")


# ---- TLS -------------------------------------------------------------------------------------------


def server_tls(cert: Any, key: Any) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


async def test_tls_failure_with_an_untrusted_certificate(self_signed):
    cert, key = self_signed
    async with ws_server(echo, ssl=server_tls(cert, key)) as port:
        v = await run_gate(spec(f"wss://localhost:{port}/ws"))
    g = only_failure(v)
    assert g.kind == "tls"
    assert "certificate verify failed" in g.examples[0].detail
    assert g.examples[0].connect_ms is not None


async def test_tls_passes_when_the_ca_is_trusted_and_tls_time_is_measured(self_signed):
    cert, key = self_signed
    async with ws_server(echo, ssl=server_tls(cert, key)) as port:
        v = await run_gate(spec(f"wss://localhost:{port}/ws", ca_file=str(cert)))
    assert v.outcome is Outcome.PASSED, v.reasons
    assert v.latency["tls"].n == 3 and (v.latency["tls"].p50 or 0) > 0


async def test_plain_http_server_on_a_wss_url_is_a_tls_failure():
    async with raw_server(answer_with(http_response("400 Bad Request"))) as port:
        v = await run_gate(spec(f"wss://127.0.0.1:{port}/ws"))
    assert only_failure(v).kind == "tls"


# ---- headers, host, tokens, logs -------------------------------------------------------------------


async def test_host_header_reaches_a_tagged_revision_and_extra_headers_are_sent():
    seen: list[dict[str, str]] = []

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        seen.append({k.lower(): v for k, v in ws.request.headers.raw_items()})
        await ws.wait_closed()

    async with ws_server(handler) as port:
        v = await run_gate(
            spec(f"ws://127.0.0.1:{port}/ws", host="candidate---chat.localhost", headers=(("X-Canary", "yes"),))
        )
    assert v.outcome is Outcome.PASSED
    assert seen[0]["host"] == "candidate---chat.localhost"
    assert seen[0]["x-canary"] == "yes"
    assert v.context["target"]["host"] == "candidate---chat.localhost"


TOKEN = "s3cr3t-bearer-token-value"


@pytest.mark.parametrize("pad", [0, 245])  # 245: the token straddles the cut of the kept body
async def test_bearer_token_is_sent_and_never_appears_in_evidence_or_logs(pad):
    async def echo_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A proxy that drops the upgrade and echoes the request: the worst case for leaking the token.
        line, headers = await read_request(reader)
        body = ("." * pad + headers["authorization"] + "\n" + line + "\n" + json.dumps(headers)).encode()
        writer.write(http_response("200 OK", {"X-Echo-Auth": headers.get("authorization", "")}, body))
        await writer.drain()
        await reader.read()

    async with raw_server(echo_headers) as port:
        with structlog.testing.capture_logs() as logs:
            v = await run_gate(spec(f"ws://127.0.0.1:{port}/ws", bearer_env="GATE_TOKEN"), env={"GATE_TOKEN": TOKEN})
    g = only_failure(v)
    ex = g.examples[0]
    assert ex.body.startswith("." * pad + "Bearer ***")  # it was sent, and scrubbed from what we keep
    assert ("X-Echo-Auth", "Bearer ***") in ex.headers
    everything = json.dumps(v.to_json(include_samples=True)) + repr(logs)
    assert TOKEN not in everything and TOKEN[:8] not in everything
    assert v.context["target"]["auth"] == "bearer"


async def test_bearer_token_is_accepted_by_a_server_that_checks_it():
    async def check(connection: ServerConnection, request: Any) -> Any:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return connection.respond(401, "no\n")
        return None

    async with ws_server(echo, process_request=check) as port:
        good = await run_gate(spec(f"ws://127.0.0.1:{port}/ws", bearer_env="T"), env={"T": TOKEN})
        bad = await run_gate(spec(f"ws://127.0.0.1:{port}/ws", bearer_env="T"), env={"T": "wrong"})
    assert good.outcome is Outcome.PASSED
    assert only_failure(bad).group == "upgrade_refused HTTP 401"


async def test_missing_bearer_env_is_an_error_verdict():
    v = await run_gate(spec("ws://127.0.0.1:9/ws", bearer_env="NOT_SET_ANYWHERE"), env={})
    assert v.outcome is Outcome.ERROR
    assert "NOT_SET_ANYWHERE" in v.reasons[0]
    assert v.counts.attempted == 0


async def test_log_events_are_structured():
    async with raw_server(answer_with(http_response("403 Forbidden", body=b"denied"))) as port:
        with structlog.testing.capture_logs() as logs:
            await run_gate(spec(f"ws://127.0.0.1:{port}/ws", connections=2, concurrency=1))
    url = f"ws://127.0.0.1:{port}/ws"
    start = [e for e in logs if e["event"] == "gate.start"]
    failed = [e for e in logs if e["event"] == "gate.connection_failed"]
    verdict = [e for e in logs if e["event"] == "gate.verdict"]
    assert start == [
        {"event": "gate.start", "log_level": "info", "gate_url": url, "connections": 2, "concurrency": 1, "hold_s": 0.0}
    ]
    assert sorted(e["index"] for e in failed) == [0, 1]
    assert all(e["kind"] == "upgrade_refused" and e["status"] == 403 and e["gate_url"] == url for e in failed)
    assert len(verdict) == 1
    assert verdict[0]["outcome"] == "Failed" and verdict[0]["failed"] == 2 and verdict[0]["attempted"] == 2


# ---- Google ID token (google-auth against a local token endpoint) -----------------------------------


async def test_id_token_without_credentials_is_an_error_with_a_clear_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    v = await run_gate(spec("wss://chat-abc-uc.a.run.app/ws", id_token=True))
    assert v.outcome is Outcome.ERROR
    assert "no Google ID token for audience https://chat-abc-uc.a.run.app" in v.reasons[0]
    assert "DefaultCredentialsError" in v.reasons[0]


async def test_id_token_is_fetched_for_the_service_audience_and_sent(monkeypatch, tmp_path):
    from aiohttp import web
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from google.auth import crypt, jwt

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    signer = crypt.RSASigner.from_string(pem, "kid-1")
    audiences: list[str] = []
    issued: list[str] = []

    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        claims = jwt.decode(str(form["assertion"]), verify=False)
        audiences.append(claims["target_audience"])
        now = int(time.time())
        id_token = jwt.encode(signer, {"aud": claims["target_audience"], "iat": now, "exp": now + 3600}).decode()
        issued.append(id_token)
        return web.json_response({"id_token": id_token})

    app = web.Application()
    app.router.add_post("/token", token)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    token_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    creds = tmp_path / "sa.json"
    creds.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "p",
                "private_key_id": "kid-1",
                "private_key": pem,
                "client_email": "gate@p.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": f"http://127.0.0.1:{token_port}/token",
            }
        )
    )
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(creds))
    got: list[str | None] = []

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        got.append(ws.request.headers.get("Authorization"))
        await ws.wait_closed()

    try:
        async with ws_server(handler) as port:
            v = await run_gate(
                spec(f"ws://127.0.0.1:{port}/ws", id_token=True, host="chat-abc-uc.a.run.app", connections=3)
            )
    finally:
        await runner.cleanup()
    assert v.outcome is Outcome.PASSED, v.reasons
    assert audiences == ["https://chat-abc-uc.a.run.app"]  # fetched once per run, audience = service URL
    assert got == [f"Bearer {issued[0]}"] * 3
    assert issued[0] not in json.dumps(v.to_json(include_samples=True))
    assert v.context["id_token_audience"] == "https://chat-abc-uc.a.run.app"


# ---- extensions ------------------------------------------------------------------------------------


async def test_unknown_extension_is_an_extension_failure():
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, headers = await read_request(reader)
        writer.write(upgrade_response(headers["sec-websocket-key"], {"Sec-WebSocket-Extensions": "x-webkit-magic"}))
        await writer.drain()
        await reader.read()

    async with raw_server(handler) as port:
        v = await run_gate(spec(f"ws://127.0.0.1:{port}/ws"))
    assert only_failure(v).kind == "extension"
