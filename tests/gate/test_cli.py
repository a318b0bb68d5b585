"""``deployer gate`` and ``scripts/validate_websocket.py``: exit codes, human and JSON output, usage errors,
and a bearer token that never reaches the output."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from deployer.cli import main
from tests.gate.conftest import ROOT, run_backend

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def backend():
    with run_backend(AUTH_TOKEN="", WEBSOCKET_HEARTBEAT_INTERVAL="0.2") as b:
        yield b


@pytest.fixture(scope="module")
def guarded():
    with run_backend(AUTH_TOKEN="tok-VERY-secret-123") as b:
        yield b


def test_passed_exits_0_with_a_human_table(backend, capsys):
    code = main(["gate", backend.ws, "--connections", "12", "--hold", "0.3", "--ping", "2"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("Passed")
    assert "12/12 connections passed every step" in out
    assert "handshake" in out and "p95" in out
    assert "1000 ×12" in out


def test_a_localhost_subdomain_is_reached_on_loopback_with_its_name_as_host(backend, capsys):
    """RFC 6761 §6.3: `chat.localhost` is the loopback address, whatever this machine's resolver says."""
    url = backend.ws.replace("127.0.0.1", "chat-backend.localhost")
    code = main(["gate", url, "--connections", "3", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["verdict"] == "Passed", doc


def test_failed_exits_1_with_failures_grouped_by_reason(capsys):
    with run_backend("refuse-upgrade") as b:
        code = main(["gate", b.ws, "--connections", "4"])
    out = capsys.readouterr().out
    assert code == 1
    assert out.startswith("Failed")
    assert "upgrade_refused HTTP 403" in out
    assert "websocket upgrades are refused by this release" in out  # the body's first bytes


def test_inconclusive_exits_3(capsys):
    # Every connection "could not measure" (the prober's DNS) within an error budget of all of them:
    # nothing measured bad, nothing measured at all. (`-n 2` alone now needs 2 samples and can pass.)
    argv = ["gate", "ws://nonexistent.invalid/ws", "--connections", "2", "--max-error-ratio", "1"]
    assert main(argv) == 3
    out = capsys.readouterr().out
    assert out.startswith("Inconclusive") and "only 0 measured connections, fewer than the 2 required" in out


def test_unresolvable_host_exits_3_as_error(capsys):
    assert main(["gate", "ws://nonexistent.invalid/ws", "--connections", "2"]) == 3
    out = capsys.readouterr().out
    assert out.startswith("Error") and "dns" in out


def test_json_gives_the_full_evidence(backend, capsys):
    code = main(["gate", backend.ws, "--connections", "10", "--send", '{"type":"ping"}', "--expect", "pong", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert data["verdict"] == "Passed"
    assert data["counts"]["ok"] == 10
    assert len(data["samples"]) == 10 and all(s["status"] == 101 for s in data["samples"])
    assert data["latency_ms"]["app"]["n"] == 10
    assert data["context"]["target"]["url"] == backend.ws


def test_p95_and_min_samples_flags_reach_the_thresholds(backend, capsys):
    code = main(["gate", backend.ws, "--connections", "3", "--min-samples", "3", "--p95-ms", "0.001", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 1
    assert data["thresholds"]["handshake_p95_ms"] == 0.001 and data["thresholds"]["min_samples"] == 3
    assert any(r.startswith("handshake p95") for r in data["reasons"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["gate", "http://127.0.0.1/ws"], "URL must start with ws:// or wss://"),
        (["gate", "ws://127.0.0.1/ws", "--header", "no-colon"], "is not 'Name: value'"),
        (["gate", "ws://127.0.0.1/ws", "--header", "Upgrade: h2c"], "set by the WebSocket handshake"),
        (["gate", "ws://127.0.0.1/ws", "--send", "hi"], "--send and --expect go together"),
        (["gate", "ws://127.0.0.1/ws", "--send", "hi", "--expect", "("], "not a valid regex"),
        (["gate", "ws://127.0.0.1/ws", "--bearer-env", "GATE_TEST_UNSET_VAR"], "GATE_TEST_UNSET_VAR"),
        (["gate", "ws://127.0.0.1/ws", "--connections", "0"], "--connections must be at least 1"),
        (["gate", "ws://127.0.0.1/ws", "--max-failure-ratio", "2"], "between 0 and 1"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in captured.err + captured.out


def test_unknown_flag_exits_2(capsys):
    assert main(["gate", "ws://127.0.0.1/ws", "--nope"]) == 2
    assert "No such option" in capsys.readouterr().err


def test_bearer_token_is_used_and_never_printed(guarded, capsys, monkeypatch):
    token = "tok-VERY-secret-123"
    monkeypatch.setenv("GATE_TEST_TOKEN", token)
    code = main(["gate", guarded.ws, "--connections", "10", "--bearer-env", "GATE_TEST_TOKEN", "--json", "-v"])
    captured = capsys.readouterr()
    assert code == 0, captured.out
    assert token not in captured.out + captured.err
    assert json.loads(captured.out)["context"]["target"]["auth"] == "bearer"

    monkeypatch.setenv("GATE_TEST_TOKEN", token + "-but-wrong")
    code = main(["gate", guarded.ws, "--connections", "3", "--bearer-env", "GATE_TEST_TOKEN", "-v"])
    captured = capsys.readouterr()
    assert code == 1
    assert "upgrade_refused HTTP 403" in captured.out
    assert token not in captured.out + captured.err


def test_authorization_header_value_is_never_printed(guarded, capsys):
    token = "tok-VERY-secret-123"
    code = main(["gate", guarded.ws, "-n", "10", "-H", f"Authorization: Bearer {token}", "--json", "-v"])
    captured = capsys.readouterr()
    assert code == 0
    assert token not in captured.out + captured.err
    assert json.loads(captured.out)["context"]["target"]["header_names"] == ["Authorization"]


def test_validate_websocket_script_keeps_the_seed_defaults(backend):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "validate_websocket.py"), backend.ws],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Testing WebSocket connection to {backend.ws}..." in proc.stdout
    assert "Passed" in proc.stdout and "1/1 connections passed" in proc.stdout


def test_validate_websocket_script_takes_the_gate_options():
    with run_backend("refuse-upgrade") as b:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "validate_websocket.py"), b.ws, "--connections", "3", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert data["counts"]["attempted"] == 3
    assert data["context"]["target"]["open_timeout_s"] == 30.0  # the seed's open timeout
    assert data["failures"][0]["group"] == "upgrade_refused HTTP 403"


def test_validate_websocket_script_unresolvable_host_exits_3():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "validate_websocket.py"), "wss://nonexistent.invalid/ws"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 3
    assert "could not resolve" in proc.stdout
