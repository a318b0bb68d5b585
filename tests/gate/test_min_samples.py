"""``--min-samples`` against ``--connections``, the same in ``deployer gate`` and the config's gate options,
and threshold flags refused under their own names.

The default (10) asks for every connection when fewer are run (``-n 3`` needs 3 and can pass); a value
given on purpose above ``--connections`` could never be met, so it is a usage error (exit 2), and in a
config a ``ConfigError`` naming file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployer.cli import main
from deployer.config import GateOptions, load_config
from deployer.errors import ConfigError, UsageError
from deployer.gate.command import resolve_min_samples
from deployer.gate.verdict import DEFAULT_MIN_SAMPLES, Thresholds
from tests.gate.conftest import run_backend

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "configs" / "local.yaml"
URL = "ws://127.0.0.1:9/ws"


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    got = capsys.readouterr()
    lines = [line for line in got.err.splitlines() if line.strip()]
    assert "Traceback" not in got.err + got.out
    assert len(lines) == 1 and lines[0].startswith("error: "), got.err
    return lines[0]


# ---- the rule, pure ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("connections", "expected"), [(1, 1), (3, 3), (10, 10), (11, 10), (500, 10)])
def test_the_default_is_ten_or_every_connection_when_fewer(connections: int, expected: int) -> None:
    assert resolve_min_samples(None, connections) == expected


def test_an_explicit_value_up_to_connections_is_kept() -> None:
    assert resolve_min_samples(3, 3) == 3
    assert resolve_min_samples(1, 50) == 1


def test_an_explicit_value_above_connections_is_refused() -> None:
    with pytest.raises(UsageError, match=r"^--min-samples: 10 is more than --connections 3"):
        resolve_min_samples(10, 3)


def test_the_defaults_agree() -> None:
    assert Thresholds().min_samples == DEFAULT_MIN_SAMPLES == GateOptions().min_samples


# ---- the command line ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "start"),
    [
        (["-n", "3", "--min-samples", "10"], "error: --min-samples: 10 is more than --connections 3"),
        (["--min-samples", "0"], "error: --min-samples: must be at least 1 (got 0)"),
        (["--p95-ms", "-1"], "error: --p95-ms: must be a positive number of milliseconds (got -1)"),
        (["--p95-ms", "0"], "error: --p95-ms: must be a positive number"),
        (["--max-failure-ratio", "2"], "error: --max-failure-ratio: must be a fraction between 0 and 1 (got 2)"),
        (["--max-error-ratio", "-0.5"], "error: --max-error-ratio: must be a fraction between 0 and 1 (got -0.5)"),
    ],
)
def test_threshold_flags_are_refused_under_their_own_name(
    argv: list[str], start: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["gate", URL, *argv]) == 2
    assert one_error_line(capsys).startswith(start)


def test_zero_connections_is_still_the_connections_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gate", URL, "-n", "0"]) == 2
    assert one_error_line(capsys) == "error: --connections must be at least 1 (got 0)"


@pytest.mark.e2e
def test_three_connections_to_a_healthy_backend_pass(capsys: pytest.CaptureFixture[str]) -> None:
    """The reviewer's case: `deployer gate URL -n 3` was always Inconclusive (exit 3)."""
    with run_backend(AUTH_TOKEN="") as b:
        code = main(["gate", b.ws, "-n", "3"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.startswith("Passed") and "3/3 connections passed every step" in out


# ---- the config ------------------------------------------------------------------------------------------


def _config(tmp_path: Path, candidate: str) -> Path:
    text = LOCAL.read_text()
    lines = text.splitlines()
    (i,) = [n for n, line in enumerate(lines) if line.startswith("  candidate: {")]
    lines[i] = f"  candidate: {candidate}"
    path = tmp_path / "c.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_config_gate_with_few_connections_defaults_to_all_of_them(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, "{path: /ws, connections: 3}"))
    assert config.gate.candidate.min_samples == 3
    assert load_config(_config(tmp_path, "{path: /ws, connections: 30}")).gate.candidate.min_samples == 10


def test_config_min_samples_above_connections_is_a_config_error_naming_file_and_line(tmp_path: Path) -> None:
    path = _config(tmp_path, "{path: /ws, connections: 3, min_samples: 5}")
    line = 1 + path.read_text().splitlines().index("  candidate: {path: /ws, connections: 3, min_samples: 5}")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value.message)
    assert text.startswith(f"{path}:{line}: gate.candidate")
    assert "min_samples (5) is more than connections (3)" in text
