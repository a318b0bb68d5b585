"""The WebSocket handshake gate: probe a target with real connections and decide Passed, Failed,
Inconclusive or Error with evidence.

    from deployer.gate import GateSpec, run_gate
    verdict = await run_gate(GateSpec("wss://example.com/ws", connections=50, hold_s=30))
    verdict.outcome, verdict.to_json()

``verdict.py`` decides (pure), ``probe.py`` measures (asyncio + websockets), ``report.py`` renders.
"""

from __future__ import annotations

from deployer.gate.probe import Progress, run_gate
from deployer.gate.spec import GateSpec, parse_header
from deployer.gate.verdict import Kind, Observation, Outcome, Thresholds, Verdict, classify_close, decide

__all__ = [
    "GateSpec",
    "Kind",
    "Observation",
    "Outcome",
    "Progress",
    "Thresholds",
    "Verdict",
    "classify_close",
    "decide",
    "parse_header",
    "run_gate",
]
