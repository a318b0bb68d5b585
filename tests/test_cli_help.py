"""``--help`` tells the truth about each option: a boolean flag takes no value (no ``<bool>`` after it, as
if ``--yes true`` were the way to write it), a value option shows its type, a required ``--reason`` says so."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from typer.core import TyperOption
from typer.main import get_command

from deployer.cli import app, main


def _commands() -> Iterator[tuple[list[str], object]]:
    root = get_command(app)
    for name, cmd in getattr(root, "commands", {}).items():
        subs = getattr(cmd, "commands", None)
        if subs:
            for sub_name, sub in subs.items():
                yield [name, sub_name], sub
        else:
            yield [name], cmd


COMMANDS = sorted((path for path, _ in _commands()), key=" ".join)


def _help(argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("COLUMNS", "200")  # one row per option
    capsys.readouterr()
    assert main([*argv, "--help"]) == 0
    return capsys.readouterr().out


def _row(text: str, flag: str) -> str:
    (row,) = [line for line in text.splitlines() if re.search(rf"│\s*\*?\s*{re.escape(flag)}\s", line)]
    return row


def test_every_command_is_covered() -> None:
    assert ["deploy"] in COMMANDS and ["gate"] in COMMANDS and ["localcloud", "up"] in COMMANDS


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_flags_show_no_value_and_value_options_show_their_type(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = _help(argv, capsys, monkeypatch)
    assert "<bool>" not in text
    command = {tuple(path): cmd for path, cmd in _commands()}[tuple(argv)]
    options = [p for p in getattr(command, "params", []) if isinstance(p, TyperOption)]
    assert options
    for option in options:
        long = next(o for o in option.opts if o.startswith("--"))
        row = _row(text, long)
        if option.is_flag:
            assert not re.search(r"<[\w \[\]|]+>", row), row
        else:
            assert re.search(r"<[\w \[\]|]+>", row), row  # --config <str>, --connections <int>: the type stays
    assert _row(text, "--help")  # typer's own flag too


def test_the_yes_flag_row_of_deploy(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    row = _row(_help(["deploy"], capsys, monkeypatch), "--yes")
    assert re.match(r"^│\s+--yes\s+-y\s+Do not ask for confirmation\.", row), row


@pytest.mark.parametrize("command", ["unpin", "rollback"])
def test_a_required_reason_says_so(
    command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "Required." in _row(_help([command], capsys, monkeypatch), "--reason")


def test_unlock_says_reason_is_required_with_force(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "Required with --force." in _row(_help(["unlock"], capsys, monkeypatch), "--reason")


@pytest.mark.parametrize("command", ["unpin", "rollback"])
def test_without_reason_they_exit_2_naming_it(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """What the help promises is what the command does (before reading the config)."""
    assert main([command, "-c", "no-such-config.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--reason" in err.splitlines()[0]
