"""The load balancer end to end: real processes (the sample chat backend), real HTTP and WebSockets
through the LB, Cloud Armor on the way, and Cloud Run state read through the real run_v2 client.

One local cloud serves the whole module (``env``); each test deploys the services it needs.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
import websockets
from google.api_core import exceptions as gexc
from google.cloud import run_v2

from deployer.gcp.clients import Clients
from deployer.localcloud.server import LocalCloud
from tests.localcloud.runtime.support import (
    PROJECT,
    Deploy,
    FakeClock,
    ask,
    create,
    get,
    get_json,
    no_process_left_behind,
    service_name,
    until,
    update,
    world,
    ws_connect,
)

pytestmark = pytest.mark.e2e

CHAT = {
    "name": "chat",
    "template": {
        "revision": "chat-a",
        "timeout": "60s",
        "containers": [{"image": "local/chat-backend:v1"}],
    },
}


@dataclass
class Env:
    cloud: LocalCloud
    services: Any
    revisions: Any
    port: int
    clock: FakeClock

    def lb_log(self) -> list[dict[str, Any]]:
        return list(self.control("/_localcloud/lb/requests")[1]["requests"])

    def sweep(self, later_s: float) -> None:
        """One idle/min-instances sweep as if ``later_s`` seconds had passed (on the cloud's loop)."""

        async def run() -> None:
            self.cloud.runtime.sweep(time.monotonic() + later_s)

        self.cloud.call(run())

    def last(self, **match: Any) -> dict[str, Any]:
        for entry in reversed(self.lb_log()):
            if all(entry.get(k) == v for k, v in match.items()):
                return entry
        raise AssertionError(f"no LB log entry with {match}")

    def record(self, revision: str) -> dict[str, Any]:
        found = self.cloud.runtime.find(revision)
        assert found is not None, revision
        return dict(found.describe())

    def control(self, path: str) -> tuple[int, Any]:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(self.cloud.endpoint + path, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def env():
    clock = FakeClock()
    doc = world([CHAT]) | {"secrets": {"chat-version": "from-secret"}}
    with no_process_left_behind():
        cloud = LocalCloud(
            lb_port=0,
            seed_doc=doc,
            runtime_options={
                "startup_timeout": 4.0,
                "idle_stop": 60.0,  # tests sweep by hand with a later clock (Env.sweep)
                "stop_grace": 2.0,
                "armor_clock": clock,
                "lb_seed": 1234,
            },
        )
        cloud.start()
        try:
            clients = Clients(endpoint=cloud.endpoint, project=PROJECT)
            e = Env(cloud, clients.services(), clients.revisions(), int(cloud.lb_port or 0), clock)
            until(lambda: get(e.port, "/health")[0] == 200)
            yield e
        finally:
            cloud.stop()


def whoami_http(env: Env, host: str, **kw: Any) -> str:
    status, body = get_json(env.port, "/", host=host, **kw)
    assert status == 200, body
    return str(body["revision"])


# ---- WebSockets ---------------------------------------------------------------------------------


async def test_websocket_handshake_echo_and_client_close_through_the_lb(env):
    ws = await ws_connect(env.port)
    assert (await ask(ws, {"type": "ping", "id": 7})) == {"type": "pong", "id": 7}
    assert (await ask(ws, {"type": "whoami"}))["revision"] == "chat-a"
    await ws.send("plain text")
    assert json.loads(await ws.recv()) == {"type": "echo", "data": "plain text"}
    await ws.send(b"\x00\x01binary")
    assert await ws.recv() == b"\x00\x01binary"
    await ws.close(4000, "done here")
    entry = until(lambda: env.last(path="/ws", closed_by="client"))
    assert entry["close_code"] == 4000 and entry["close_reason"] == "done here"
    assert entry["status"] == 101 and entry["revision"] == "chat-a" and entry["websocket"] is True
    assert entry["armor"]["outcome"] == "allow" and entry["armor"]["priority"] == 2147483647


async def test_the_backends_close_code_and_reason_reach_the_client(env):
    create(env.services, "flaky", Deploy(image="local/chat-backend:flaky-1011", env={"CHAT_FAIL_AFTER": "0.5"}))
    ws = await ws_connect(env.port, host="flaky.test")
    with pytest.raises(websockets.ConnectionClosedError) as info:
        await asyncio.wait_for(ws.recv(), 10)
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (1011, "internal error (simulated)")
    svc = env.services.get_service(name=service_name("flaky"))
    assert svc.terminal_condition.state == run_v2.Condition.State.CONDITION_SUCCEEDED  # Cloud Run cannot tell


async def test_a_websocket_ends_at_the_revisions_request_timeout(env):
    create(env.services, "short", Deploy(timeout_s=2))
    started = time.monotonic()
    ws = await ws_connect(env.port, host="short.test")
    assert (await ask(ws, {"type": "ping"}))["type"] == "pong"
    with pytest.raises(websockets.ConnectionClosedError) as info:
        await asyncio.wait_for(ws.recv(), 15)
    elapsed = time.monotonic() - started
    assert 1.8 <= elapsed < 8, elapsed
    assert info.value.rcvd is None and ws.close_code == 1006  # dropped, no close frame
    entry = until(lambda: env.last(service="short", closed_by="timeout"))
    assert entry["close_code"] == 1006


# ---- headers --------------------------------------------------------------------------------------


def test_custom_headers_forwarding_headers_and_hop_by_hop_stripping(env):
    status, body = get_json(
        env.port,
        "/headers",
        headers={
            "Connection": "keep-alive, X-Hop-Secret",
            "X-Hop-Secret": "must not pass",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "X-Custom-Test": "from the client",
            "X-Forwarded-Proto": "http",
            "X-End-To-End": "kept",
        },
    )
    assert status == 200
    seen = body["headers"]
    for hop in ("x-hop-secret", "keep-alive", "te", "proxy-authorization", "upgrade"):
        assert hop not in seen, hop
    assert seen.get("connection", "").lower() != "keep-alive, x-hop-secret"
    assert seen["x-custom-test"] == "hello"  # the backend service's header overwrites the client's
    assert seen["x-forwarded-proto"] == "https"  # custom header wins over the LB's own value
    assert seen["x-forwarded-for"] == "127.0.0.1, 127.0.0.1"
    assert seen["via"] == "1.1 google"
    assert seen["x-end-to-end"] == "kept"


def test_a_non_websocket_upgrade_is_refused_with_400(env):
    status, _headers, body = get(env.port, "/", headers={"Upgrade": "h2c", "Connection": "Upgrade, HTTP2-Settings"})
    assert status == 400
    assert b"Your client has issued a malformed or illegal request" in body
    entry = env.last(status=400)
    assert "revision" not in entry and "h2c" in entry["error"]


# ---- traffic, tags, affinity ----------------------------------------------------------------------


def test_traffic_split_10_90_over_1000_new_requests(env):
    create(env.services, "split", Deploy())
    update(env.services, "split", Deploy(image="local/chat-backend:v2"), "b", [("a", 10, ""), (None, 90, "")])
    counts = collections.Counter(whoami_http(env, "split.test") for _ in range(1000))
    assert set(counts) == {"split-a", "split-b"}
    sd = math.sqrt(1000 * 0.1 * 0.9)
    assert abs(counts["split-a"] - 100) < 5 * sd, counts


async def test_tags_reach_their_revision_by_host_and_through_a_tagged_neg(env):
    green = [("a", 100, ""), (None, 0, "green")]
    svc = update(env.services, "chat", Deploy(image="local/chat-backend:v2"), "green", green)
    tagged = [s for s in svc.traffic_statuses if s.tag == "green"]
    assert tagged and tagged[0].uri == f"http://green---chat.localhost:{env.port}"
    assert whoami_http(env, f"green---chat.localhost:{env.port}") == "chat-green"
    assert whoami_http(env, "green---chat.localhost") == "chat-green"  # any port
    assert {whoami_http(env, f"127.0.0.1:{env.port}") for _ in range(20)} == {"chat-a"}  # 0 % stays 0 %
    assert whoami_http(env, "green.example") == "chat-green"  # NEG cloudRun.tag
    ws = await ws_connect(env.port, host=f"green---chat.localhost:{env.port}")
    assert (await ask(ws, {"type": "whoami"}))["revision"] == "chat-green"
    await ws.close()
    status, _ = get_json(env.port, "/", host="blue---chat.localhost")
    assert status == 404


async def test_session_affinity_cookie_keeps_a_client_on_its_revision(env):
    create(env.services, "sticky", Deploy(session_affinity=True))
    v2 = Deploy(session_affinity=True, image="local/chat-backend:v2")
    update(env.services, "sticky", v2, "b", [("a", 50, ""), (None, 50, "")])
    assert {whoami_http(env, "sticky.test") for _ in range(40)} == {"sticky-a", "sticky-b"}
    status, headers, body = get(env.port, "/", host="sticky.test")
    assert status == 200
    cookie = headers["set-cookie"]
    name_value, *attributes = [part.strip() for part in cookie.split(";")]
    assert name_value.startswith("GAESA=") and "Path=/" in attributes and "HttpOnly" in attributes
    expires = parsedate_to_datetime(next(a for a in attributes if a.startswith("Expires="))[8:])
    assert 29 <= (expires.timestamp() - time.time()) / 86400 <= 30.01  # gcp-facts §1.3: 30 days
    first = json.loads(body)["revision"]
    sticky = {whoami_http(env, "sticky.test", headers={"Cookie": name_value}) for _ in range(30)}
    assert sticky == {first}
    ws = await ws_connect(env.port, host="sticky.test", additional_headers={"Cookie": name_value})
    assert (await ask(ws, {"type": "whoami"}))["revision"] == first
    await ws.close()


# ---- Cloud Armor ----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [404, 502])  # deny(429) is only an exceedAction (throttle below)
def test_armor_deny_actions(env, status):
    got, _headers, body = get(env.port, "/health", headers={"X-Test": f"deny{status}"})
    assert got == status
    assert body.decode().endswith(f"<title>{status}</title>{status} " + {404: "Not Found", 502: "Bad Gateway"}[status])
    entry = env.last(status=status)
    assert entry["armor"]["priority"] == {404: 100, 502: 110}[status]
    assert "revision" not in entry  # never reached Cloud Run


def test_armor_priority_not_position_decides(env):
    assert get(env.port, "/health", headers={"X-Test": "order"})[0] == 200
    assert env.last(path="/health")["armor"]["priority"] == 500


def test_armor_source_ip_rule_and_the_run_url_bypass(env):
    status, _h, _b = get(env.port, "/health", source="127.0.0.3")
    assert status == 403 and env.last(client="127.0.0.3")["armor"]["priority"] == 50
    assert get(env.port, "/health", source="127.0.0.2")[0] == 200
    # The service's own URL does not go through the load balancer, so Cloud Armor never sees it (§3.5).
    assert get(env.port, "/health", host="chat.localhost", source="127.0.0.3")[0] == 200
    assert "armor" not in env.last(client="127.0.0.3", via="run")


def test_armor_preview_is_logged_not_enforced(env):
    assert get(env.port, "/health", headers={"X-Test": "preview"})[0] == 200
    armor = env.last(path="/health")["armor"]
    assert armor["priority"] == 2147483647
    assert armor["preview"] == [{"priority": 400, "action": "deny(403)", "outcome": "deny(403)"}]


def test_armor_throttle_per_key_and_interval(env):
    headers = {"X-Test": "throttle", "X-Client": "throttled-1"}
    assert [get(env.port, "/health", headers=headers)[0] for _ in range(4)] == [200, 200, 200, 429]
    assert env.last(status=429)["armor"]["rate_state"] == "exceed"
    assert get(env.port, "/health", headers={**headers, "X-Client": "throttled-2"})[0] == 200  # its own key
    env.clock.advance(10)
    assert get(env.port, "/health", headers=headers)[0] == 200


def test_armor_rate_based_ban_outlasts_the_interval(env):
    headers = {"X-Test": "ban", "X-Client": "banned-1"}
    assert [get(env.port, "/health", headers=headers)[0] for _ in range(3)] == [200, 200, 403]
    env.clock.advance(10)  # a throttle would let it through again here
    assert get(env.port, "/health", headers=headers)[0] == 403
    assert env.last(status=403)["armor"]["rate_state"] == "banned"
    env.clock.advance(61)
    assert get(env.port, "/health", headers=headers)[0] == 200


async def test_a_websocket_counts_as_one_request_its_upgrade(env):
    headers = {"X-Test": "ws-throttle", "X-Client": "ws-1"}
    first = await ws_connect(env.port, additional_headers=headers)
    for i in range(20):  # messages inside the socket are never seen by Cloud Armor (§3.3)
        assert (await ask(first, {"type": "ping", "id": i}))["id"] == i
    second = await ws_connect(env.port, additional_headers=headers)
    with pytest.raises(websockets.InvalidStatus) as info:
        await ws_connect(env.port, additional_headers=headers)
    assert info.value.response.status_code == 429
    with pytest.raises(websockets.InvalidStatus) as info:
        await ws_connect(env.port, local_addr=("127.0.0.3", 0))
    assert info.value.response.status_code == 403
    await first.close()
    await second.close()


# ---- the sample backend's failure modes, as Cloud Run reports them ---------------------------------


def _failed_update(env: Env, service_id: str, d: Deploy, suffix: str) -> tuple[str, Any, Any]:
    with pytest.raises(gexc.GoogleAPICallError) as info:
        update(env.services, service_id, d, suffix, None)
    revision = env.revisions.get_revision(name=f"{service_name(service_id)}/revisions/{service_id}-{suffix}")
    svc = env.services.get_service(name=service_name(service_id))
    return str(info.value), revision, svc


def _assert_traffic_kept(env: Env, svc: Any, service_id: str, host: str, suffix: str) -> None:
    latest = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
    assert [(s.type_, s.percent) for s in svc.traffic_statuses] == [(latest, 100)]
    assert svc.latest_ready_revision.endswith(f"/revisions/{service_id}-a")  # LATEST still means -a
    assert svc.latest_created_revision.endswith(f"/revisions/{service_id}-{suffix}")
    assert svc.terminal_condition.state == run_v2.Condition.State.CONDITION_FAILED
    assert whoami_http(env, host) == f"{service_id}-a"


@pytest.fixture(scope="module")
def fm(env):
    create(env.services, "fm", Deploy())
    return "fm"


def test_an_unknown_image_fails_the_revision_and_keeps_traffic(env, fm):
    error, revision, svc = _failed_update(env, fm, Deploy(image="local/no-such-image:1"), "img")
    assert "Image 'local/no-such-image:1' not found." in error
    ready = revision.conditions[0]
    assert ready.type_ == "Ready" and ready.state == run_v2.Condition.State.CONDITION_FAILED
    assert ready.reason == run_v2.Condition.CommonReason.CONTAINER_MISSING
    _assert_traffic_kept(env, svc, fm, "fm.test", "img")


def test_a_revision_that_never_listens_fails_with_cloud_runs_message(env, fm):
    error, revision, svc = _failed_update(env, fm, Deploy(image="local/chat-backend:never-listen"), "deaf")
    expected = "failed to start and listen on the port defined provided by the PORT=8080 environment variable"
    assert expected in error and expected in revision.conditions[0].message
    assert revision.conditions[0].revision_reason == run_v2.Condition.RevisionReason.HEALTH_CHECK_CONTAINER_ERROR
    assert f"/_localcloud/revisions/{fm}-deaf/logs" in revision.conditions[0].message
    _assert_traffic_kept(env, svc, fm, "fm.test", "deaf")
    status, logs = env.control(f"/_localcloud/revisions/{fm}-deaf/logs")
    assert status == 200
    assert any("starting without listening" in line["text"] for line in logs["lines"])
    assert not env.record(f"{fm}-deaf")["running"]


def test_a_failing_http_startup_probe(env, fm):
    probe = {"http_get": {"path": "/no-such-path"}, "period_seconds": 1, "failure_threshold": 2, "timeout_seconds": 1}
    error, revision, svc = _failed_update(env, fm, Deploy(probe=probe), "probe")
    assert "The user-provided container failed the configured startup probe checks." in error
    assert revision.conditions[0].revision_reason == run_v2.Condition.RevisionReason.HEALTH_CHECK_CONTAINER_ERROR
    _assert_traffic_kept(env, svc, fm, "fm.test", "probe")


def test_a_missing_secret_fails_and_a_known_one_reaches_the_env(env, fm):
    error, revision, svc = _failed_update(env, fm, Deploy(secret_env={"CHAT_VERSION": "no-such-secret"}), "nosecret")
    line = (
        "env[0].value_from.secret_key_ref.name: "
        "Secret projects/lb-test/secrets/no-such-secret/versions/latest was not found"
    )
    assert line in error
    assert revision.conditions[0].reason == run_v2.Condition.CommonReason.SECRETS_ACCESS_CHECK_FAILED
    _assert_traffic_kept(env, svc, fm, "fm.test", "nosecret")
    create(env.services, "secret", Deploy(secret_env={"CHAT_VERSION": "chat-version"}))
    assert get_json(env.port, "/", host="secret.test")[1]["version"] == "from-secret"


async def test_a_crashing_revision_is_ready_then_drops_sockets_and_cold_starts(env):
    create(env.services, "crash", Deploy(image="local/chat-backend:crash", env={"CHAT_FAIL_AFTER": "3"}))
    ws = await ws_connect(env.port, host="crash.test")
    with pytest.raises(websockets.ConnectionClosedError) as info:
        await asyncio.wait_for(ws.recv(), 15)
    assert info.value.rcvd is None  # the process died: no close frame
    until(lambda: not env.record("crash-a")["running"])
    _status, logs = env.control("/_localcloud/revisions/crash-a/logs")
    assert any(line["text"] == "Container called exit(1)." for line in logs["lines"])
    assert whoami_http(env, "crash.test") == "crash-a"  # a new instance (a cold start)
    assert env.record("crash-a")["boots"] == 2
    revision = env.revisions.get_revision(name=f"{service_name('crash')}/revisions/crash-a")
    assert revision.conditions[0].state == run_v2.Condition.State.CONDITION_SUCCEEDED


async def test_a_refused_upgrade_passes_the_backends_answer_through(env):
    create(env.services, "refuse", Deploy(image="local/chat-backend:broken-upgrade"))
    with pytest.raises(websockets.InvalidStatus) as info:
        await ws_connect(env.port, host="refuse.test")
    assert info.value.response.status_code == 403
    assert b"websocket upgrades are refused" in info.value.response.body
    assert whoami_http(env, "refuse.test") == "refuse-a"  # plain HTTP still works: Ready


async def test_a_slow_handshake_is_waited_for(env):
    create(env.services, "slow", Deploy(image="local/chat-backend:slow-handshake", env={"CHAT_SLOW_SECONDS": "1.5"}))
    started = time.monotonic()
    ws = await ws_connect(env.port, host="slow.test")
    assert time.monotonic() - started >= 1.5
    assert (await ask(ws, {"type": "ping"}))["type"] == "pong"
    await ws.close()


async def test_a_mute_revision_accepts_but_never_answers(env):
    create(env.services, "mute", Deploy(image="local/chat-backend:mute"))
    ws = await ws_connect(env.port, host="mute.test")
    with pytest.raises(TimeoutError):
        await ask(ws, {"type": "ping"}, timeout=1.5)
    await ws.close()


# ---- lifecycle: idle stop, cold start, min instances, logs ------------------------------------------


def test_an_unserved_revision_stops_when_idle_and_cold_starts_on_rollback(env):
    create(env.services, "idle", Deploy())
    update(env.services, "idle", Deploy(image="local/chat-backend:v2"), "b", [(None, 100, "")])
    env.sweep(later_s=30)
    assert env.record("idle-a")["running"]  # not idle long enough yet
    env.sweep(later_s=61)
    until(lambda: not env.record("idle-a")["running"], deadline_s=15)
    assert env.record("idle-b")["running"]
    update(env.services, "idle", None, "a", [("a", 100, "")])  # roll back: traffic to the stopped one
    assert whoami_http(env, "idle.test") == "idle-a"
    assert env.record("idle-a")["boots"] == 2


def test_min_instances_keep_a_tagged_revision_running_and_let_an_unaddressable_one_go(env):
    import os
    import signal

    create(env.services, "warm", Deploy(min_instances=1))
    # 0% but tagged: addressable, so its min instance is kept
    update(env.services, "warm", Deploy(image="local/chat-backend:v2"), "b", [(None, 100, ""), ("a", 0, "prev")])
    first_pid = env.record("warm-a")["pid"]
    env.sweep(later_s=3600)
    assert env.record("warm-a")["running"] and env.record("warm-a")["pid"] == first_pid
    os.killpg(first_pid, signal.SIGKILL)  # the instance dies: min instances bring one back
    until(lambda: not env.record("warm-a")["running"] or env.record("warm-a")["pid"] != first_pid)
    env.sweep(later_s=0)
    until(lambda: env.record("warm-a")["ready"] and env.record("warm-a")["pid"] != first_pid, deadline_s=15)
    # the tag removed: no traffic, no tag — scaled to zero when idle, min instances or not
    update(env.services, "warm", None, "b", [("b", 100, "")])
    env.sweep(later_s=61)
    until(lambda: not env.record("warm-a")["running"], deadline_s=15)
    assert env.record("warm-b")["running"]


def test_revision_logs_and_runtime_listing(env):
    status, logs = env.control("/_localcloud/revisions/chat-a/logs")
    assert status == 200 and logs["revision"] == f"{service_name('chat')}/revisions/chat-a"
    streams = {line["stream"] for line in logs["lines"]}
    assert {"system", "stdout"} <= streams
    assert any('"message": "listening"' in line["text"] for line in logs["lines"])
    assert len(env.control("/_localcloud/revisions/chat-a/logs?tail=1")[1]["lines"]) == 1
    assert env.control("/_localcloud/revisions/nope-00001/logs")[0] == 404
    listing = env.control("/_localcloud/revisions")[1]["revisions"]
    assert {"chat-a", "fm-img"} <= {r["revision"] for r in listing}
