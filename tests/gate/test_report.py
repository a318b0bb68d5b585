"""How a verdict reads for humans, and the progress line's on/off switch."""

from __future__ import annotations

import io
import json

from rich.console import Console

from deployer.gate.probe import Progress
from deployer.gate.report import progress_line, render, to_json_text
from deployer.gate.verdict import Kind, Observation, Thresholds, decide


def console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=140, highlight=False, color_system=None), buf


def sample_verdict():
    obs = [
        Observation(i, handshake_ms=12.0, connect_ms=1.0, upgrade_ms=11.0, ping_ms=[0.5], close_code=1000)
        for i in range(8)
    ]
    obs.append(
        Observation(8, failure=Kind.UPGRADE_REFUSED, status=403, detail="HTTP 403 Forbidden", body="blocked by policy")
    )
    obs.append(Observation(9, failure=Kind.NETWORK, detail="TCP connect did not finish within 10s"))
    return decide(
        obs,
        Thresholds(min_samples=5),
        context={"target": {"url": "wss://chat.example/ws", "host": "c---chat.localhost"}},
    )


def test_render_shows_verdict_counts_percentiles_and_grouped_failures():
    con, buf = console()
    render(sample_verdict(), con)
    out = buf.getvalue()
    lines = out.splitlines()
    assert lines[0] == "Failed  wss://chat.example/ws (Host: c---chat.localhost)"
    assert "1/9 measured connections failed (budget 0): upgrade_refused HTTP 403 ×1" in out
    assert "10 attempted, 8 ok, 1 failed, 1 could not measure" in out
    assert "close codes: 1000 ×8" in out
    handshake = next(line for line in lines if line.startswith("handshake"))
    assert handshake.split() == ["handshake", "8", "12.0", "12.0", "12.0"]
    assert "upgrade_refused HTTP 403" in out and "blocked by policy" in out
    assert "network" in out and "TCP connect did not finish" in out


def test_json_text_round_trips_with_samples():
    data = json.loads(to_json_text(sample_verdict()))
    assert data["verdict"] == "Failed" and len(data["samples"]) == 10


def test_progress_line_is_off_unless_enabled():
    con, buf = console()
    with progress_line(con, 10, enabled=False) as cb:
        assert cb is None
    assert buf.getvalue() == ""


def test_progress_line_renders_counters_on_a_terminal():
    buf = io.StringIO()
    con = Console(file=buf, force_terminal=True, width=100, color_system=None)
    with progress_line(con, 10, enabled=True) as cb:
        p = Progress(10)
        p.done, p.failed, p.open, p.holding = 4, 1, 3, 2
        cb(p)
    assert "gate: 4/10 done, 1 failed, 3 open, 2 holding" in buf.getvalue()
