"""What a reviewer must read is never cut: a plan's values, status drift in JSON, check's fixes and URLs.

A plan shows the whole value it will write (a Cloud Armor expression, an env value); the human renderer
folds a long line, it never drops the end. ``check``'s table folds long words (URLs, fixes) in narrow
terminals and CI logs instead of ending them with ``…``.
"""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.console import Console

from deployer.check import render_table, run_check
from deployer.config import load_config
from deployer.orchestrator.command import render_plan
from deployer.orchestrator.status import config_drift
from deployer.plan import ARMOR_RULE, Action, Change, Plan
from deployer.preflight import run_rules

ROOT = Path(__file__).resolve().parent.parent
SEED_PROPOSAL = ROOT / "configs" / "examples" / "seed-proposal.yaml"

EXPR = (
    "has(request.headers['upgrade']) && request.headers['upgrade'].lower().contains('websocket') "
    "&& request.path.matches('^/ws(?:/|$)') && origin.region_code != 'XX' && request.method == 'GET'"
)
POLICY = "projects/p/global/securityPolicies/api-armor"


def _rule(expression: str) -> dict[str, object]:
    return {"priority": 50, "action": "throttle", "match": {"expr": {"expression": expression}}}


def _plan() -> Plan:
    return Plan(
        service="api",
        created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        config_digest="sha256:c0ffee",
        changes=(
            Change(
                kind=ARMOR_RULE,
                id=f"{POLICY}/rules/50",
                action=Action.UPDATE,
                before=_rule("request.path.matches('/ws.*')"),
                after=_rule(EXPR),
                precondition="fp1",
            ),
        ),
    )


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def test_a_long_expression_in_the_plan_is_shown_whole() -> None:
    assert len(EXPR) > 150
    summary = _plan().summary()
    assert "…" not in summary
    assert f'"{EXPR}"' in summary  # one line per field, the whole JSON value


def test_the_human_plan_folds_a_long_value_in_a_narrow_terminal_and_keeps_all_of_it() -> None:
    out = io.StringIO()
    render_plan(_plan(), Console(file=out, width=60, highlight=False, color_system=None))
    text = out.getvalue()
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 60  # folded, not one endless line
    assert _squash(EXPR) in _squash(text)


def test_status_drift_fields_in_json_are_never_abbreviated() -> None:
    (drift,) = config_drift(_plan())
    doc = drift.to_json()
    assert any(EXPR in field for field in doc["fields"])
    assert not any("…" in field for field in doc["fields"])


def _last_cells(text: str) -> str:
    """The 'finding and fix' column of every table row, joined: the text a reader sees there."""
    return "".join(line.split("│")[-2] for line in text.splitlines() if line.count("│") >= 5)


def _render(width_env: str | None, monkeypatch: pytest.MonkeyPatch) -> str:
    if width_env is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", width_env)
    out = io.StringIO()  # not a TTY: what `deployer check | cat` and a CI log get
    assert run_check(str(SEED_PROPOSAL), out=out) == 1
    return out.getvalue()


def test_check_in_a_ci_log_prints_every_url_and_fix_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(str(SEED_PROPOSAL))
    findings = run_rules(config, None)
    long_urls = [f.doc_url for f in findings if len(f.doc_url) > 70]
    assert long_urls  # the case the reviewer hit: serverless-neg-concepts, custom-headers-global
    for columns in (None, "80", "100"):
        text = _render(columns, monkeypatch)
        lines = text.splitlines()
        for f in findings:
            assert any(f.doc_url in line for line in lines), (columns, f.doc_url)  # on one line, copyable
        cells = _squash(_last_cells(text))
        for f in findings:
            assert _squash(f.fix) in cells, (columns, f.code, f.fix)
            assert _squash(f.message) in cells, (columns, f.code)


def test_check_in_a_narrow_terminal_folds_urls_instead_of_cutting_them() -> None:
    config = load_config(str(SEED_PROPOSAL))
    findings = run_rules(config, None)

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    render_table(str(SEED_PROPOSAL), findings, live=False, stream=tty, width=70)
    text = re.sub(r"\x1b\[[0-9;]*m", "", tty.getvalue())  # a terminal gets colours
    assert max(len(line) for line in text.splitlines()) <= 70
    cells = _squash(_last_cells(text))
    for f in findings:
        assert _squash(f.doc_url) in cells, f.doc_url
        assert _squash(f.fix) in cells, f.fix
