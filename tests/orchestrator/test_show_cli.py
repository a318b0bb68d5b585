"""``deployer history`` and ``deployer why`` through the CLI over hand-built journals in a local state
directory: they read the state store only, so no cloud is needed (the config's endpoint is never
contacted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deployer.state.local import LocalStateStore
from tests.orchestrator.deploy_support import run
from tests.orchestrator.history_support import KEY, good_deploy, offline_config, rolled_back_deploy


@pytest.fixture
def cfg(tmp_path: Path) -> str:
    store = LocalStateStore(tmp_path / "state")
    good_deploy().write(store)
    rolled_back_deploy().write(store)
    return str(offline_config(tmp_path, tmp_path / "state"))


def test_history_lists_the_journals_newest_first(cfg, capsys) -> None:
    code, out, err = run(capsys, "history", "-c", cfg, "--json")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc["service"] == KEY
    assert [(d["deploy_id"], d["status"]) for d in doc["deploys"]] == [
        ("d-20260302-100000-c3d4", "rolled_back"),
        ("d-20260302-093000-a1b2", "succeeded"),
    ]
    code, out, _ = run(capsys, "history", "-c", cfg, "-n", "1")
    assert code == 0 and "d-20260302-100000-c3d4" in out and "d-20260302-093000-a1b2" not in out


def test_history_limit_must_be_positive(cfg, capsys) -> None:
    code, out, err = run(capsys, "history", "-c", cfg, "--limit", "0")
    assert (code, out) == (2, "") and err == "error: --limit must be at least 1 (got 0)\n"


def test_why_by_id_and_last(cfg, capsys) -> None:
    code, out, _ = run(capsys, "why", "d-20260302-093000-a1b2", "-c", cfg)
    assert code == 0 and "decision  kept: 3/3 gates Passed" in out and "✓ gate_public 100%" in out
    code, out, _ = run(capsys, "why", "last", "-c", cfg, "--json")
    assert code == 0 and json.loads(out)["deploy_id"] == "d-20260302-100000-c3d4"


def test_why_an_unknown_id_is_one_line_and_exit_2(cfg, capsys) -> None:
    code, out, err = run(capsys, "why", "d-20260302-093000-ffff", "-c", cfg)
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"error: no deploy d-20260302-093000-ffff of {KEY} in the journal",
        "hint: `deployer history -c CONFIG` lists them; the newest: d-20260302-100000-c3d4, d-20260302-093000-a1b2",
    ]


def test_why_a_corrupt_journal_is_a_state_error(cfg, tmp_path, capsys) -> None:
    store = LocalStateStore(tmp_path / "state")
    store.write(f"deploys/{KEY}/d-20260302-130000-dead.json", b"{not json", if_generation=None)
    code, out, err = run(capsys, "why", "d-20260302-130000-dead", "-c", cfg)
    assert (code, out) == (1, "")
    assert err.startswith("error: ") and "d-20260302-130000-dead.json is not valid JSON" in err
    code, out, _ = run(capsys, "history", "-c", cfg, "--json")
    assert json.loads(out)["deploys"][0]["status"] == "unreadable"


def test_a_missing_config_is_exit_2(tmp_path, capsys) -> None:
    code, _, err = run(capsys, "history", "-c", str(tmp_path / "nope.yaml"))
    assert code == 2 and "no such file" in err
