"""Where a config's local state lives: beside the config file, whatever the current directory; created by
the first write only; a ``state.path`` that can never be a directory is a config error.

Real parts: the CLI in process and as real processes from other directories, and the local cloud for the
commands that read what is live (``status``, ``plan``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deployer.config import load_config
from deployer.localcloud.server import LocalCloud
from deployer.orchestrator.lock import ServiceLock
from deployer.orchestrator.owner import Owner
from deployer.state.local import LocalStateStore
from tests.orchestrator.deploy_support import (
    api_cloud_fixture,  # noqa: F401  (the module's cloud)
    api_world_fixture,  # noqa: F401  (world: the seed's world again)
    run,
)
from tests.orchestrator.history_support import KEY, good_deploy

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / "configs" / "local.yaml"
WORLD = ROOT / "configs" / "local-world.yaml"
DISCARD = "http://127.0.0.1:9"  # nothing listens: a call would fail loudly
ENV = dict(os.environ, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")


def config_text(endpoint: str = DISCARD, state: str | None = ".deployer/") -> str:
    data = yaml.safe_load(LOCAL.read_text())
    data["endpoint"] = endpoint
    if state is None:
        del data["state"]
    else:
        data["state"] = {"backend": "local", "path": state}
    return yaml.safe_dump(data, sort_keys=False)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """``envs/`` holding ``c.yaml`` (state: .deployer/, relative), and ``elsewhere/``, the current directory."""
    envs, elsewhere = tmp_path / "envs", tmp_path / "elsewhere"
    envs.mkdir()
    elsewhere.mkdir()
    (envs / "c.yaml").write_text(config_text())
    return envs, elsewhere


def cli(args: list[str], cwd: Path, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deployer", *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        **kw,  # type: ignore[call-overload]
    )


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("error: ")]


# ---- 1. relative to the config file, not the current directory ------------------------------------------------


def test_a_relative_state_path_is_the_config_files_directory_from_any_cwd(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    envs, elsewhere = dirs
    monkeypatch.chdir(envs)
    here = load_config("c.yaml").state.path
    monkeypatch.chdir(elsewhere)
    there = load_config(envs / "c.yaml").state.path
    roundabout = load_config(Path("..") / "envs" / ".." / "envs" / "c.yaml").state.path
    assert here == there == roundabout == str(envs.resolve() / ".deployer")
    # without a state section, the default .deployer/ is beside the config too
    (envs / "bare.yaml").write_text(config_text(state=None))
    assert load_config(envs / "bare.yaml").state.path == str(envs.resolve() / ".deployer")
    # an absolute path stays what it says
    (envs / "abs.yaml").write_text(config_text(state=str(elsewhere / "st")))
    assert load_config(envs / "abs.yaml").state.path == str(elsewhere / "st")


def test_a_deploy_from_another_directory_meets_the_lock_of_one_from_the_config_directory(
    dirs: tuple[Path, Path],
) -> None:
    """Two deploys of one service from two directories: the second is refused by the first's lock (exit 4)
    before any call (the endpoint is a closed port: a deploy that took a lock of its own would fail there)."""
    envs, elsewhere = dirs
    holder = Owner.current()  # this test process: alive, so its lease holds
    ServiceLock(LocalStateStore(envs / ".deployer"), KEY).acquire("d-20260302-093000-a1b2", holder)
    got = cli(["deploy", "-c", str(envs / "c.yaml"), "--yes"], cwd=elsewhere)
    assert got.returncode == 4, got.stderr[-2000:]
    [line] = error_lines(got.stderr)
    assert f"{KEY} is locked by deploy d-20260302-093000-a1b2 by {holder.describe()}" in line
    assert not (elsewhere / ".deployer").exists()


def test_history_and_why_from_other_directories_read_the_same_journal(
    dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    envs, elsewhere = dirs
    good_deploy().write(LocalStateStore(envs / ".deployer"))
    for cwd, cfg in ((envs, "c.yaml"), (elsewhere, str(envs / "c.yaml")), (elsewhere, "../envs/c.yaml")):
        monkeypatch.chdir(cwd)
        code, out, err = run(capsys, "history", "-c", cfg)
        assert code == 0 and "d-20260302-093000-a1b2" in out, (cwd, out, err)
        code, out, err = run(capsys, "why", "last", "-c", cfg)
        assert code == 0 and "d-20260302-093000-a1b2" in out, (cwd, out, err)
    assert not (elsewhere / ".deployer").exists()


def test_a_config_on_stdin_keeps_its_state_in_the_current_directory(dirs: tuple[Path, Path]) -> None:
    """``-c /dev/stdin`` has no directory of its own: piped, or redirected from a file (then /dev/stdin
    names that file), the state is the current directory's."""
    envs, elsewhere = dirs
    good_deploy().write(LocalStateStore(elsewhere / ".deployer"))
    piped = cli(["history", "-c", "/dev/stdin"], cwd=elsewhere, input=config_text())
    assert piped.returncode == 0 and "d-20260302-093000-a1b2" in piped.stdout, piped.stderr
    with (envs / "c.yaml").open() as config:
        redirected = cli(["history", "-c", "/dev/stdin"], cwd=elsewhere, stdin=config)
    assert redirected.returncode == 0 and "d-20260302-093000-a1b2" in redirected.stdout, redirected.stderr
    assert not (envs / ".deployer").exists()


# ---- 2. read-only commands create nothing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "code"),
    [(["status"], 0), (["plan"], 0), (["history"], 0), (["why", "last"], 2)],
    ids=["status", "plan", "history", "why last"],
)
def test_read_only_commands_create_no_state_directory(
    world: LocalCloud,
    dirs: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
    code: int,
) -> None:
    envs, elsewhere = dirs
    (envs / "c.yaml").write_text(config_text(world.endpoint))
    monkeypatch.chdir(elsewhere)
    got, _out, err = run(capsys, command[0], "-c", str(envs / "c.yaml"), *command[1:])
    assert got == code, err
    assert not (envs / ".deployer").exists() and not (elsewhere / ".deployer").exists()


# ---- 3. a state path that cannot be a directory ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "what"),
    [
        ("README.md", "'README.md' ({envs}/README.md) is a file"),
        (
            "README.md/state",
            "'README.md/state' ({envs}/README.md/state) cannot be a directory: {envs}/README.md is a file",
        ),
    ],
)
@pytest.mark.parametrize("command", [["status"], ["history"], ["deploy", "--yes"], ["check"]], ids=" ".join)
def test_a_state_path_naming_a_file_is_a_config_error_at_its_line(
    dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str], state: str, what: str, command: list[str]
) -> None:
    envs, _elsewhere = dirs
    (envs / "README.md").write_text("not a directory\n")
    cfg = envs / "c.yaml"
    cfg.write_text(config_text(state=state))
    lines = cfg.read_text().splitlines()
    line = lines.index("state:") + 3
    assert lines[line - 1] == f"  path: {state}"
    code, _out, err = run(capsys, command[0], "-c", str(cfg), *command[1:])
    [error] = error_lines(err)
    assert code == 2, err
    tail = "; it names the directory for the journal and the lock"
    assert error == f"error: {cfg}:{line}: state.path: {what.format(envs=envs.resolve())}{tail}"
    assert (envs / "README.md").read_text() == "not a directory\n"


def test_a_state_directory_the_system_refuses_is_a_runtime_error_at_the_first_write(
    dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    envs, _elsewhere = dirs
    cfg = envs / "c.yaml"
    cfg.write_text(config_text(state="/proc/deployer-nope/state"))  # /proc refuses even root
    code, out, err = run(capsys, "history", "-c", str(cfg))  # reads: nothing there, nothing created
    assert code == 0 and "no deploys" in out, err
    code, _out, err = run(capsys, "deploy", "-c", str(cfg), "--yes")
    assert code == 1
    assert error_lines(err) == [
        "error: cannot create the state directory /proc/deployer-nope/state: No such file or directory"
    ]


def test_status_shows_what_is_live_when_the_state_store_cannot_be_read(
    world: LocalCloud, dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    envs, _elsewhere = dirs
    cfg = envs / "c.yaml"
    text = config_text(world.endpoint).replace(
        "state:\n  backend: local\n  path: .deployer/\n", "state: {backend: gcs, bucket: no-such-bucket, prefix: t}\n"
    )
    assert "no-such-bucket" in text
    cfg.write_text(text)
    code, out, err = run(capsys, "status", "-c", str(cfg))
    assert code == 1
    assert error_lines(err) == ["error: state bucket no-such-bucket does not exist (gs://no-such-bucket/t/)"]
    assert "chat-backend-00001" in out  # the live traffic is shown all the same
    assert "not shown: the state store cannot be read: state bucket no-such-bucket does not exist" in out
