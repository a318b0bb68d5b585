"""Where gates point (pure) and how a deploy reads (the live view and the final result, rendered)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from deployer.config import GateOptions
from deployer.errors import GateError
from deployer.orchestrator import gates
from deployer.orchestrator.report import DeployResult, LineReporter, LiveReporter, render_result


def test_a_tag_uri_under_localhost_is_reached_on_loopback_with_its_host_header():
    url, host = gates.ws_url("http://candidate---chat.localhost:41234", "/ws")
    assert (url, host) == ("ws://127.0.0.1:41234/ws", "candidate---chat.localhost:41234")
    assert gates.ws_url("https://candidate---chat-abc-uc.a.run.app", "/ws") == (
        "wss://candidate---chat-abc-uc.a.run.app/ws",
        None,
    )


def test_the_candidate_gate_reads_its_url_from_traffic_statuses():
    service = {"trafficStatuses": [{"tag": "candidate", "uri": "http://candidate---chat.localhost:9"}]}
    spec = gates.candidate_spec(GateOptions(connections=3, min_samples=3, hold=0.5), service, "candidate")
    assert (spec.url, spec.host, spec.connections, spec.hold_s) == (
        "ws://127.0.0.1:9/ws",
        "candidate---chat.localhost:9",
        3,
        0.5,
    )
    with pytest.raises(GateError, match="no URI for tag 'candidate'"):
        gates.candidate_spec(GateOptions(), {"trafficStatuses": []}, "candidate")


def test_the_public_gate_needs_a_url_or_the_service_uri():
    spec = gates.public_spec(GateOptions(url="wss://api.example.com/ws", p95_ms=800), {})
    assert (spec.url, spec.host, spec.thresholds.handshake_p95_ms) == ("wss://api.example.com/ws", None, 800)
    with pytest.raises(GateError, match=r"set gate\.public\.url"):
        gates.public_spec(GateOptions(), {})


def test_the_line_and_live_views_show_each_step():
    out = io.StringIO()
    lines = LineReporter(out)
    lines.step_finished("gate_candidate", False, 1.25, "candidate gate Failed: upgrade_refused HTTP 403 ×4")
    assert "  ✗ gate_candidate    1.2 s  candidate gate Failed: upgrade_refused HTTP 403 ×4" in out.getvalue()
    term = io.StringIO()
    live = LiveReporter(Console(file=term, force_terminal=True, width=100), "deploy chat")
    live.step_started("apply")
    live.step_finished("apply", True, 3.1, "candidate Ready")
    live.note("LATEST was pinned")
    live.close()
    live.close()  # idempotent
    shown = term.getvalue()
    assert "deploy chat" in shown and "apply" in shown and "candidate Ready" in shown


def test_the_result_says_why_what_remains_and_what_to_run():
    result = DeployResult(
        service="p/r/chat",
        status="rollback_incomplete",
        exit_code=3,
        deploy_id="d-20261126-150000-abcd",
        why="gate_candidate failed: Failed; the rollback left: armor.rule 50: HTTP 400",
        traffic_after=[
            {"revision": "chat-a", "percent": 100, "tag": ""},
            {"revision": "chat-b", "percent": 0, "tag": "candidate"},
        ],
        pins=["chat-a"],
        remaining=["armor.rule projects/p/global/securityPolicies/armor/rules/50: HTTP 400"],
        hints=["gcloud compute security-policies rules delete 50 --security-policy armor --project p"],
    )
    out = io.StringIO()
    render_result(result, Console(file=out, width=200))
    text = out.getvalue()
    assert text.splitlines()[0] == "ROLLBACK INCOMPLETE  p/r/chat  (d-20261126-150000-abcd)"
    assert "traffic now: chat-a 100%  (tags: candidate→chat-b)" in text
    assert "LATEST target was written as a pin to chat-a" in text
    assert "still changed:" in text and "what to run:" in text
    assert "gcloud compute security-policies rules delete 50" in text
    assert result.to_json()["what_to_run"] == result.hints
