"""The sample chat backend as a real process on a real port, in every CHAT_MODE, and the gate against it."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from deployer.gate import GateSpec, Outcome, Thresholds, run_gate
from tests.gate.conftest import CHAT_BACKEND, ROOT, run_backend

pytestmark = pytest.mark.e2e


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def recv_json(ws: ClientConnection, timeout: float = 2.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


# ---- ok ---------------------------------------------------------------------------------------------


async def test_ok_mode_http_routes():
    with run_backend(K_REVISION="chat-00001-abc", CHAT_VERSION="v1") as b:
        status, body = get(b.http + "/health")
        assert status == 200 and body["status"] == "ok" and body["revision"] == "chat-00001-abc"
        status, body = get(b.http + "/")
        assert status == 200 and body["websocket"] == "/ws" and body["version"] == "v1"
        status, body = get(b.http + "/headers", {"X-Custom": "seen", "Authorization": "Bearer hidden"})
        assert body["headers"]["x-custom"] == "seen"
        assert body["headers"]["authorization"] == "***"


async def test_ok_mode_websocket_ping_echo_heartbeat_and_identity():
    with run_backend(WEBSOCKET_HEARTBEAT_INTERVAL="0.2", K_REVISION="rev-a") as b:
        async with connect(b.ws) as ws:
            await ws.send(json.dumps({"type": "ping", "id": 7}))
            assert await recv_json(ws) == {"type": "pong", "id": 7}
            await ws.send("hello there")
            assert await recv_json(ws) == {"type": "echo", "data": "hello there"}
            await ws.send(json.dumps({"type": "whoami"}))
            assert (await recv_json(ws))["revision"] == "rev-a"
            await ws.send(b"\x00\x01")
            assert await asyncio.wait_for(ws.recv(), 2) == b"\x00\x01"
            beat = await recv_json(ws)
            assert beat["type"] == "heartbeat" and beat["seq"] == 1
            assert (await recv_json(ws))["seq"] == 2


async def test_sigterm_closes_sockets_with_1001_and_exits_0():
    with run_backend() as b:
        async with connect(b.ws) as ws:
            await ws.send(json.dumps({"type": "ping"}))
            await recv_json(ws)
            b.proc.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert b.proc.wait(timeout=5) == 0


async def test_bearer_token_check_happens_before_the_upgrade():
    with run_backend(AUTH_TOKEN="tok-123") as b:
        with pytest.raises(InvalidStatus) as missing:
            await connect(b.ws)
        assert missing.value.response.status_code == 401
        with pytest.raises(InvalidStatus) as wrong:
            await connect(b.ws, additional_headers={"Authorization": "Bearer nope"})
        assert wrong.value.response.status_code == 403
        async with connect(b.ws, additional_headers={"Authorization": "Bearer tok-123"}) as ws:
            await ws.send(json.dumps({"type": "ping"}))
            assert (await recv_json(ws))["type"] == "pong"
        assert get(b.http + "/health")[0] == 200  # health stays open


# ---- failure modes ----------------------------------------------------------------------------------


async def test_refuse_upgrade_answers_403_but_health_is_200():
    with run_backend("refuse-upgrade") as b:
        with pytest.raises(InvalidStatus) as refused:
            await connect(b.ws)
        assert refused.value.response.status_code == 403
        status, body = get(b.http + "/health")
        assert status == 200 and body["mode"] == "refuse-upgrade"


def test_never_listen_runs_but_never_binds():
    with run_backend("never-listen", wait=False) as b:
        assert b.proc.stdout is not None
        line = b.proc.stdout.readline()  # the process says it started
        assert "without listening" in json.loads(line)["message"]
        assert b.proc.poll() is None
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", b.port), timeout=1):
            pass
        b.proc.send_signal(signal.SIGTERM)
        assert b.proc.wait(timeout=5) == 0


def test_exit_after_exits_with_code_1():
    with run_backend("exit-after", CHAT_FAIL_AFTER="0.5") as b:
        assert b.proc.wait(timeout=10) == 1
        assert "exiting with code 1" in b.output()


async def test_slow_handshake_delays_the_101():
    with run_backend("slow-handshake", CHAT_SLOW_SECONDS="0.6") as b:
        t = time.monotonic()
        async with connect(b.ws) as ws:
            elapsed = time.monotonic() - t
            await ws.send(json.dumps({"type": "ping"}))
            assert (await recv_json(ws))["type"] == "pong"
        assert elapsed >= 0.6


async def test_close_1011_after_closes_each_socket():
    with run_backend("close-1011-after", CHAT_FAIL_AFTER="0.3") as b:
        async with connect(b.ws) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011


async def test_mute_accepts_but_never_answers_app_messages():
    with run_backend("mute", WEBSOCKET_HEARTBEAT_INTERVAL="0.1") as b:
        async with connect(b.ws) as ws:
            await ws.send(json.dumps({"type": "ping"}))
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.5)  # no pong, and no heartbeat either
            latency = await asyncio.wait_for(await ws.ping(), 2)  # the transport is alive
            assert latency >= 0


# ---- the gate against the backend -------------------------------------------------------------------


def gate_spec(url: str, **kw: object) -> GateSpec:
    kw.setdefault("connections", 10)
    kw.setdefault("concurrency", 5)
    kw.setdefault("thresholds", Thresholds(min_samples=10, handshake_p95_ms=400.0))
    kw.setdefault("send", '{"type":"ping"}')
    kw.setdefault("expect", '"pong"')
    kw.setdefault("app_timeout_s", 0.5)
    return GateSpec(url, **kw)  # type: ignore[arg-type]


async def test_gate_passes_the_healthy_backend_with_heartbeats_during_the_hold():
    with run_backend(WEBSOCKET_HEARTBEAT_INTERVAL="0.1") as b:
        v = await run_gate(gate_spec(b.ws, hold_s=0.5, pings=2))
    assert v.outcome is Outcome.PASSED, v.reasons
    assert v.close_codes == {"1000": 10}


@pytest.mark.parametrize(
    ("mode", "env", "group"),
    [
        ("refuse-upgrade", {}, "upgrade_refused HTTP 403"),
        ("mute", {}, "app_timeout"),
        ("close-1011-after", {"CHAT_FAIL_AFTER": "0.3"}, "closed 1011 (abnormal) during hold"),
    ],
)
async def test_gate_fails_each_broken_release_with_the_right_reason(mode, env, group):
    with run_backend(mode, **env) as b:
        v = await run_gate(gate_spec(b.ws, hold_s=1.0))
    assert v.outcome is Outcome.FAILED
    assert [g.group for g in v.failures] == [group]


async def test_gate_fails_the_slow_handshake_release_on_latency():
    with run_backend("slow-handshake", CHAT_SLOW_SECONDS="0.5") as b:
        v = await run_gate(gate_spec(b.ws))
    assert v.outcome is Outcome.FAILED
    assert v.counts.failed == 0
    assert any(r.startswith("handshake p95") for r in v.reasons)


async def test_gate_fails_a_release_that_never_listens():
    with run_backend("never-listen", wait=False) as b:
        v = await run_gate(gate_spec(b.ws))
    assert v.outcome is Outcome.FAILED
    assert [g.group for g in v.failures] == ["tcp_refused"]


# ---- the image map ----------------------------------------------------------------------------------


def test_local_images_map_every_chat_mode_to_a_runnable_command():
    images = yaml.safe_load((ROOT / "configs" / "local-images.yaml").read_text())["images"]
    server_source = CHAT_BACKEND.read_text()
    modes = set()
    for ref, entry in images.items():
        assert set(entry) == {"command", "workdir", "env"}, ref
        assert isinstance(entry["command"], list) and all(isinstance(a, str) for a in entry["command"])
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in entry["env"].items()), ref
        workdir = (ROOT / entry["workdir"]).resolve()
        assert workdir.is_dir()
        assert (workdir / entry["command"][1]).resolve() == CHAT_BACKEND
        modes.add(entry["env"]["CHAT_MODE"])
    assert {"local/chat-backend:v1", "local/chat-backend:v2", "local/chat-backend:broken-upgrade"} <= set(images)
    expected = {"ok", "refuse-upgrade", "never-listen", "exit-after", "slow-handshake", "close-1011-after", "mute"}
    assert modes == expected
    assert all(f'"{m}"' in server_source for m in expected)


def test_unknown_mode_refuses_to_start():
    proc = subprocess.run(
        [sys.executable, str(CHAT_BACKEND)],
        env={"CHAT_MODE": "sideways"},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(ROOT),
    )
    assert proc.returncode != 0
    assert "CHAT_MODE='sideways'" in proc.stderr
