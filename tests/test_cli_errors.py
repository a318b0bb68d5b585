"""Every bad input — a malformed config, a wrong flag, a cloud error, a dead process — gets one clear
line and an exit code, and loses nothing. Never a traceback for a user error.

Each case runs a real command (``deployer.cli.main``, or the installed ``deployer`` as a process where a
signal or the process's own stdout matters) against one API-only local cloud for the module, seeded with
``configs/local-world.yaml``, its faults injected on the control plane's rule list. Every case checks the
exit code, exactly one ``error:`` line (then at most one ``hint:``) and no traceback; and where the input
could have been refused offline, that nothing reached the cloud, and that no lock or journal was left.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import structlog

from deployer.cli import main
from deployer.gcp import retry
from deployer.localcloud.api.control import seed_world
from deployer.localcloud.server import LocalCloud, load_seed_file
from deployer.localcloud.world import FaultRule
from tests.orchestrator.deploy_support import (
    api_cloud_fixture,  # noqa: F401  (the module's cloud)
    api_world_fixture,  # noqa: F401  (world: the seed's world again)
)

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / "configs" / "local.yaml"
WORLD = ROOT / "configs" / "local-world.yaml"
# The installed console script (what a user runs), else the module.
_SCRIPT = Path(sys.executable).parent / "deployer"
DEPLOYER = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "deployer"]
KEY = "chat-staging/us-central1/chat-backend"
LOCK = f"locks/{KEY}.json"
JOURNALS = f"deploys/{KEY}"

NO_WAIT = retry.READ_POLICY.with_(sleep=lambda _s: None)


# ---- fixtures and helpers -------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A config without ``state:`` keeps ``.deployer/`` in the current directory: never the repository's."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """Commands configure structlog for their process (``deploy``: info, ``rollback``: warning); in this one
    test process, put it back so later tests' ``capture_logs`` see the levels they expect."""
    was_configured, config = structlog.is_configured(), structlog.get_config()
    yield
    if was_configured:
        structlog.configure(**config)
    else:
        structlog.reset_defaults()


@pytest.fixture
def fast_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Observe's reads retry as the policy says, without sleeping between attempts."""
    monkeypatch.setattr(retry, "READ_POLICY", NO_WAIT)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the block ends


def write_config(tmp_path: Path, endpoint: str, *, state: Path | str | None = None, name: str = "c.yaml") -> Path:
    text = LOCAL.read_text()
    assert "http://127.0.0.1:8480" in text and "path: .deployer/" in text
    text = text.replace("http://127.0.0.1:8480", endpoint).replace(
        "path: .deployer/", f"path: {state or tmp_path / 'state'}"
    )
    path = tmp_path / name
    path.write_text(text)
    return path


def one_error(err: str) -> str:
    """The single ``error:`` line of ``err`` (asserting its shape): at most one ``hint:`` right after it, no
    traceback, and any other line a structured log event (a retry, a rollback), never raw text."""
    assert "Traceback" not in err, err
    lines = err.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert len(errors) == 1, err
    i = errors[0]
    after = lines[i + 1 :]
    assert after == [] or (len(after) == 1 and after[0].startswith("hint: ")), err
    for line in lines[:i]:
        assert (line.startswith("{") and '"severity"' in line) or "[warning" in line or "[info" in line, err
    return lines[i]


def hint_of(err: str) -> str | None:
    hints = [line for line in err.splitlines() if line.startswith("hint: ")]
    return hints[0] if hints else None


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(argv)
    got = capsys.readouterr()
    return code, got.out, got.err


def state_files(state: Path) -> list[str]:
    if not state.exists():
        return []
    return sorted(str(p.relative_to(state)) for p in state.rglob("*") if p.is_file() and not p.name.startswith("."))


def calls_since(cloud: LocalCloud, mark: int) -> list[str]:
    return [f"{r.http_method} {r.method}" for r in cloud.world.requests[mark:] if r.method]


def mutating_since(cloud: LocalCloud, mark: int) -> list[str]:
    return [c for c in calls_since(cloud, mark) if not c.startswith("GET ")]


# ---- wrong flags: one line, exit 2, nothing read --------------------------------------------------------

# (argv with CFG for a good config, the exit code, what the error line says)
USAGE: list[tuple[list[str], int, str]] = [
    (["--bogus"], 2, "No such option: --bogus"),
    (["check"], 2, "Missing option '--config'"),
    (["check", "-c"], 2, "'-c' requires an argument"),
    (["plan", "-c", "CFG", "extra"], 2, "unexpected extra argument"),
    (["plan", "-c", "CFG", "--out", ""], 2, "--out needs a file name"),
    (["plan", "-c", "CFG", "--out", "TMP"], 2, "is a directory"),
    (["plan", "-c", "CFG", "--out", "TMP/no/such/dir/plan.json"], 2, "/no/such/dir does not exist"),
    (["plan", "-c", "CFG", "--out", "TMP/c.yaml/plan.json"], 2, "c.yaml is not a directory"),
    (["unlock", "-c", "CFG", "--force"], 2, "--reason TEXT (it is journaled with the lock's removal)"),
    (["gate", "ws://127.0.0.1:9/ws", "-n", "abc"], 2, "'--connections'"),
    (["gate", "ws://127.0.0.1:9/ws", "-n", "0"], 2, "--connections must be at least 1"),
    (["gate", "ws://127.0.0.1:9/ws", "--hold", "-1"], 2, "--hold must be 0 or more"),
    (["gate", "ws://127.0.0.1:9/ws", "--open-timeout", "0"], 2, "--open-timeout must be a positive number"),
    (["gate", "ws://127.0.0.1:9/ws", "--max-failure-ratio", "2"], 2, "between 0 and 1"),
    (["gate", "ws://127.0.0.1:9/ws", "--ca-file", "TMP"], 2, "is a directory"),
    (["gate", "ws://127.0.0.1:9/ws", "--bearer-env", "DEPLOYER_TEST_UNSET_VAR"], 2, "is empty or not set"),
    (["gate", ""], 2, "ws://"),
    (["gate", "http://example.test/ws"], 2, "ws://"),
    (["localcloud", "up", "--api-port", "-5"], 2, "'--api-port'"),
    (["localcloud", "up", "--lb-port", "70000"], 2, "'--lb-port'"),
    (["deploy", "-c", "CFG"], 2, "pass --yes"),
    (["deploy", "-c", "CFG", "--yes", "--override-freeze"], 2, "--override-freeze needs --reason"),
    (["deploy", "-c", "CFG", "--if-changed", "--plan", "TMP/p.json"], 2, "--if-changed"),
    (["history", "-c", "CFG", "--limit", "0"], 2, "--limit must be at least 1"),
    (["rollback", "-c", "CFG"], 2, "--reason"),
    (["rollback", "-c", "CFG", "--reason", "  "], 2, "--reason"),
    (["rollback", "-c", "CFG", "--reason", "bad release", "--pin-for", "soon"], 2, "not a duration"),
    (["rollback", "-c", "CFG", "--reason", "bad release", "--to", ""], 2, "--to needs a revision name"),
    (["unlock", "-c", "CFG"], 2, "--force"),
    (["unpin", "-c", "CFG"], 2, "--reason"),
]


CLICK = {
    "No such option: --bogus",
    "Missing option '--config'",
    "'-c' requires an argument",
    "unexpected extra argument",
    "'--connections'",
    "'--api-port'",
    "'--lb-port'",
}


@pytest.mark.parametrize(("argv", "code", "says"), USAGE, ids=[" ".join(a[0]) or "''" for a in USAGE])
def test_a_wrong_flag_is_one_line_and_reads_nothing(
    world: LocalCloud, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, says: str
) -> None:
    cfg = write_config(tmp_path, world.endpoint)
    argv = [str(cfg) if a == "CFG" else a.replace("TMP", str(tmp_path)) for a in argv]
    mark = len(world.world.requests)
    got, _out, err = run(argv, capsys)
    line = one_error(err)
    assert (got, says in line) == (code, True), err
    assert calls_since(world, mark) == []  # refused before any call
    assert state_files(tmp_path / "state") == []
    if says in CLICK:  # click's own usage errors point at the command's --help
        assert (hint_of(err) or "").startswith(
            f"hint: see `deployer {argv[0] if argv[0] != '--bogus' else ''}".rstrip()
        ), err


# plan --detailed-exitcode: Terraform's 0 no changes, 1 error, 2 changes; an error must never read as "changes"
DETAILED_ERRORS: list[tuple[list[str], str]] = [
    (["plan", "-c", "TMP/nonexist.yaml", "--detailed-exitcode"], "no such file"),
    (["plan", "-c", "CFG", "--detailed-exitcode", "--bogus"], "No such option: --bogus"),
    (["plan", "--detailed-exitcode", "-c", "UNSET"], "DEPLOYER_TEST_UNSET_VAR is not set"),
    (["plan", "-c", "CFG", "--detailed-exitcode", "--out", "TMP"], "is a directory"),
]


@pytest.mark.parametrize(("argv", "says"), DETAILED_ERRORS, ids=[d[1] for d in DETAILED_ERRORS])
def test_plan_detailed_exitcode_errors_are_exit_1_never_2(
    world: LocalCloud, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    cfg = write_config(tmp_path, world.endpoint)
    unset = tmp_path / "unset.yaml"
    unset.write_text(cfg.read_text().replace("image: ", "image: ${DEPLOYER_TEST_UNSET_VAR}", 1))
    os.environ.pop("DEPLOYER_TEST_UNSET_VAR", None)
    swap = {"CFG": str(cfg), "UNSET": str(unset)}
    argv = [swap.get(a, a.replace("TMP", str(tmp_path))) for a in argv]
    assert argv != [a for a in argv if a != "--detailed-exitcode"]
    got, _out, err = run(argv, capsys)
    assert (got, says in one_error(err)) == (1, True), err
    # the same error without the flag keeps its usage/config exit code, 2
    got, _out, err = run([a for a in argv if a != "--detailed-exitcode"], capsys)
    assert (got, says in one_error(err)) == (2, True), err


@pytest.mark.parametrize(
    ("args", "says", "hint"),
    [
        (["--api-port", "BUSY"], "cannot listen on 127.0.0.1:BUSY: Address already in use", "--api-port"),
        (["--api-port", "0", "--lb-port", "BUSY"], "for the load balancer: Address already in use", "--lb-port"),
        (["--host", "192.0.2.1", "--api-port", "0"], "this machine has no address 192.0.2.1", "--host 127.0.0.1"),
        (["--host", "no-such-host.invalid", "--api-port", "0"], "cannot resolve no-such-host.invalid", "--host"),
        (["--api-port", "0", "--seed", "TMP/nope.yaml"], "cannot read seed file", None),
        (["--api-port", "0", "--seed", sys.executable], "is not UTF-8 text", None),
        (["--api-port", "0", "--seed", "/dev/zero"], "is larger than 16 MiB", None),
    ],
    ids=["busy api port", "busy lb port", "foreign address", "unresolvable host", "missing seed", "binary", "endless"],
)
def test_localcloud_up_that_cannot_start_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], says: str, hint: str | None
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        argv = ["localcloud", "up", *(a.replace("BUSY", port).replace("TMP", str(tmp_path)) for a in args)]
        code, out, err = run(argv, capsys)
    assert code == 1 and says.replace("BUSY", port) in one_error(err), err
    assert hint is None or hint in (hint_of(err) or ""), err
    assert "local cloud stopped" not in out  # it never started


# ---- configs that cannot be loaded: exit 2 naming the file, for every command, before any call -----------

BAD_CONFIGS: dict[str, tuple[bytes | None, str]] = {
    "missing": (None, "no such file"),
    "empty name": (b"<empty-name>", "no config file named (-c is empty)"),
    "directory": (b"<dir>", "is a directory"),
    "empty": (b"", "got an empty file"),
    "binary": (b"\xff\xfe\x00\x01 config", "not UTF-8 text"),
    "endless": (b"<device>", "is a device, not a config file"),
    "huge": (b"a: 1\n" * 300_000, "is larger than 1024 KiB"),
    "a list": (b"- project\n- region\n", "got a list"),
    "wrong types": (b"project: [1, 2]\nregion: us-central1\nservice: {name: s, image: x}\n", "project:"),
    "broken YAML": (b"project: [\n", "not valid YAML"),
    "unset variable": (
        b"project: p\nregion: us-central1\nservice: {name: s, image: 'img:${DEPLOYER_TEST_UNSET_VAR}'}\n",
        "DEPLOYER_TEST_UNSET_VAR is not set",
    ),
}

COMMANDS: list[list[str]] = [
    ["check"],
    ["check", "--live"],
    ["plan"],
    ["deploy", "--yes"],
    ["deploy", "--plan", "/nonexistent/plan.json"],
    ["status"],
    ["history"],
    ["why", "last"],
    ["rollback", "--reason", "bad release"],
    ["resume"],
    ["unpin", "--reason", "done"],
    ["unlock", "--force", "--reason", "stuck"],
]


# rollback, resume, unpin and unlock read an unset ${VAR} as a placeholder on purpose (recovery.py: an
# emergency must not stop because IMAGE is not set); every other bad config stops them too.
RECOVERY = {"rollback", "resume", "unpin", "unlock"}
CONFIG_CASES = [
    pytest.param(kind, command, id=f"{kind}-{' '.join(command)}")
    for kind in BAD_CONFIGS
    for command in COMMANDS
    if not (kind == "unset variable" and command[0] in RECOVERY)
]


@pytest.mark.parametrize(("kind", "command"), CONFIG_CASES)
def test_a_config_that_cannot_be_loaded_is_exit_2_naming_the_file(
    world: LocalCloud, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str], kind: str
) -> None:
    content, says = BAD_CONFIGS[kind]
    path = tmp_path / "bad.yaml"
    if content == b"<device>":
        path = Path("/dev/zero")  # reading it would never end
    elif content == b"<empty-name>":
        path = Path("")
    elif content == b"<dir>":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    os.environ.pop("DEPLOYER_TEST_UNSET_VAR", None)
    mark = len(world.world.requests)
    shown = "" if content == b"<empty-name>" else str(path)
    code, _out, err = run([command[0], "-c", shown, *command[1:]], capsys)
    line = one_error(err)
    assert code == 2 and line.startswith(f"error: {shown or '<config>'}") and says in line, err
    assert calls_since(world, mark) == []


# ---- a saved plan that cannot be applied: exit 2 before the lock, the journal or any call ----------------


@pytest.fixture(scope="module")
def saved_plan(cloud: LocalCloud, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real applyable plan (``plan --out``), as JSON."""
    seed_world(cloud.world, load_seed_file(WORLD))
    tmp = tmp_path_factory.mktemp("plan")
    out = tmp / "plan.json"
    assert main(["plan", "-c", str(write_config(tmp, cloud.endpoint)), "--out", str(out)]) == 0
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


PLAN_FILES: dict[str, tuple[str, str]] = {
    "missing": ("<missing>", "cannot read: No such file"),
    "empty name": ("<empty>", "--plan needs a file name"),
    "directory": ("<dir>", "is a directory"),
    "binary": ("<binary>", "not UTF-8 text"),
    "endless": ("<device>", "larger than 16 MiB"),
    "not JSON": ("{{{", "not JSON"),
    "not a plan": ("{}", "not a deployer plan"),
    "another format": ('{"format": 99}', "plan format 99 is not supported"),
    "masked (plan --json)": ("<masked>", "a masked plan"),
    "another service": ("<other-service>", "is a plan for projects/chat-staging/locations/us-central1/services/x"),
}


@pytest.mark.parametrize("kind", list(PLAN_FILES))
def test_a_bad_saved_plan_is_refused_before_any_lock_or_call(
    world: LocalCloud, tmp_path: Path, capsys: pytest.CaptureFixture[str], saved_plan: dict[str, Any], kind: str
) -> None:
    content, says = PLAN_FILES[kind]
    plan = tmp_path / "plan.json"
    if content == "<missing>":
        pass
    elif content == "<empty>":
        plan = Path("")
    elif content == "<dir>":
        plan.mkdir()
    elif content == "<device>":
        plan = Path("/dev/zero")
    elif content == "<binary>":
        plan.write_bytes(b"\x7fELF\x02\x01\x01\x00\xd0\xff")
    elif content == "<masked>":
        plan.write_text(json.dumps({**saved_plan, "masked": True}))
    elif content == "<other-service>":
        other = saved_plan["service"].rsplit("/", 1)[0] + "/x"
        plan.write_text(json.dumps({**saved_plan, "service": other}))
    else:
        plan.write_text(content)
    cfg = write_config(tmp_path, world.endpoint)
    mark = len(world.world.requests)
    code, _out, err = run(["deploy", "-c", str(cfg), "--plan", "" if content == "<empty>" else str(plan)], capsys)
    line = one_error(err)
    assert code == 2 and says in line, err
    assert calls_since(world, mark) == []  # not even a read: the plan file is checked first
    assert state_files(tmp_path / "state") == []  # no lock taken, no journal begun


# ---- the endpoint is dead: what could not be reached, and how to start it ---------------------------------


@pytest.mark.e2e  # a real process: imports, signals and its own stdout
def test_plan_against_a_dead_endpoint_names_it_and_how_to_start_it(tmp_path: Path) -> None:
    """The lead's case, as a user runs it: a real process, a closed port (a real refusal)."""
    port = closed_port()
    cfg = write_config(tmp_path, f"http://127.0.0.1:{port}")
    proc = subprocess.run([*DEPLOYER, "plan", "-c", str(cfg)], capture_output=True, text=True, timeout=120)
    line = one_error(proc.stderr)
    assert proc.returncode == 1
    assert line == (
        f"error: cannot reach the local cloud at http://127.0.0.1:{port} (connection refused, 4 attempts) "
        "for run.services.get"
    )
    assert hint_of(proc.stderr) == (
        f"hint: start it with: deployer localcloud up --api-port {port} --seed configs/local-world.yaml --lb-port 8080"
    )
    assert proc.stdout == ""


class _NotAnApi(BaseHTTPRequestHandler):
    """A web server that is not a Google API: 404 with an empty body for every path (a proxy, a wrong port)."""

    def _answer(self) -> None:
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PATCH = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def not_an_api() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _NotAnApi)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("command", [["plan"], ["status"], ["deploy", "--yes"]], ids=lambda c: " ".join(c))
def test_an_endpoint_that_is_not_a_google_api_is_not_an_empty_project(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], not_an_api: str, command: list[str]
) -> None:
    """Its 404s say nothing about the resources: not "5 to create", not "the service does not exist"."""
    cfg = write_config(tmp_path, not_an_api)
    code, out, err = run([command[0], "-c", str(cfg), *command[1:]], capsys)
    line = one_error(err)
    assert code == 1 and out == "", out
    assert "HTTP 404 with an empty body — no Google API answered at that address" in line
    assert "endpoint" in (hint_of(err) or "")
    assert state_files(tmp_path / "state") == []


@pytest.mark.parametrize(
    "command",
    [["check", "--live"], ["plan"], ["plan", "--json"], ["status"], ["deploy", "--if-changed"]],
    ids=lambda c: " ".join(c),
)
def test_reads_against_a_dead_endpoint_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fast_reads: None, command: list[str]
) -> None:
    port = closed_port()
    cfg = write_config(tmp_path, f"http://127.0.0.1:{port}")
    code, out, err = run([command[0], "-c", str(cfg), *command[1:]], capsys)
    line = one_error(err)
    assert code == 1 and out == ""
    assert line.startswith(f"error: cannot reach the local cloud at http://127.0.0.1:{port} (connection refused")
    assert "HTTPConnectionPool" not in err and "still failing" not in err


def test_a_deploy_against_a_dead_endpoint_changes_nothing_and_releases_its_lock(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, f"http://127.0.0.1:{closed_port()}")
    code, _out, err = run(["deploy", "-c", str(cfg), "--yes"], capsys)
    assert code == 1 and "cannot reach the local cloud" in one_error(err)
    assert state_files(tmp_path / "state") == []  # the lock released, no journal begun (it failed observing)


def test_https_to_the_plain_http_local_cloud_says_to_write_http(
    world: LocalCloud, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    https = world.endpoint.replace("http://", "https://")
    cfg = write_config(tmp_path, https)
    code, _out, err = run(["plan", "-c", str(cfg)], capsys)
    assert code == 1 and one_error(err) == f"error: run.services.get: TLS with {https} failed (wrong version number)"
    assert hint_of(err) == f"hint: the local cloud speaks plain HTTP: write the endpoint as {world.endpoint}"


@pytest.mark.parametrize("endpoint", ["127.0.0.1:8480", "http://127.0.0.1:99999", "ftp://127.0.0.1"])
def test_a_malformed_endpoint_is_a_config_error(
    world: LocalCloud, tmp_path: Path, capsys: pytest.CaptureFixture[str], endpoint: str
) -> None:
    cfg = write_config(tmp_path, endpoint)
    mark = len(world.world.requests)
    code, _out, err = run(["plan", "-c", str(cfg)], capsys)
    assert code == 2 and one_error(err).startswith(f"error: {cfg}:") and "endpoint" in err, err
    assert calls_since(world, mark) == []


def test_no_google_credentials_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-such-key.json"))
    cfg = tmp_path / "google.yaml"
    cfg.write_text(
        LOCAL.read_text().replace("endpoint: http://127.0.0.1:8480\n", "").replace(".deployer/", str(tmp_path / "s"))
    )
    code, _out, err = run(["plan", "-c", str(cfg)], capsys)
    line = one_error(err)
    assert code == 1 and line.startswith("error: no usable Google credentials for the services client")
    assert "application-default login" in (hint_of(err) or "")


# ---- the cloud answers with an error --------------------------------------------------------------------

# (method, status, [command], exit code, what the error line says)
FAULTS: list[tuple[str, int, list[str], int, str]] = [
    ("run.services.get", 403, ["plan"], 1, "run.services.get: HTTP 403"),
    ("run.services.get", 403, ["check", "--live"], 1, "run.services.get: HTTP 403"),
    ("run.services.get", 403, ["status"], 1, "run.services.get: HTTP 403"),
    ("run.services.get", 500, ["plan"], 1, "run.services.get still failing after 4 attempts: HTTP 500"),
    ("run.services.get", 429, ["check", "--live"], 1, "run.services.get still failing after 4 attempts: HTTP 429"),
    ("compute.backendServices.get", 500, ["plan"], 1, "compute.backendServices.get still failing after 4"),
    ("compute.securityPolicies.get", 403, ["plan"], 1, "compute.securityPolicies.get: HTTP 403"),
    ("compute.urlMaps.get", 429, ["status"], 1, "compute.urlMaps.get still failing after 4 attempts: HTTP 429"),
    ("run.services.get", 403, ["deploy", "--yes"], 1, "run.services.get: HTTP 403"),
    ("compute.backendServices.get", 403, ["deploy", "--yes"], 1, "compute.backendServices.get: HTTP 403"),
    ("run.services.get", 403, ["rollback", "--reason", "bad release"], 1, "run.services.get: HTTP 403"),
    # a 404 on a read means "absent": a deploy refuses to create, a rollback has nothing to roll back
    ("run.services.get", 404, ["deploy", "--yes"], 1, "does not exist; deployer deploys to existing resources"),
    ("compute.backendServices.get", 404, ["deploy", "--yes"], 1, "chat-backend-bs does not exist"),
    ("run.services.get", 404, ["rollback", "--reason", "bad release"], 1, "does not exist: there is nothing to roll"),
]


@pytest.mark.parametrize(
    ("method", "status", "command", "code", "says"), FAULTS, ids=[f"{f[0]}-{f[1]}-{' '.join(f[2])}" for f in FAULTS]
)
def test_a_cloud_error_is_one_line_and_leaves_no_lock_and_no_open_journal(
    world: LocalCloud,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    fast_reads: None,
    method: str,
    status: int,
    command: list[str],
    code: int,
    says: str,
) -> None:
    from deployer.orchestrator.journal import list_deploys, load
    from deployer.state.local import LocalStateStore

    world.world.faults.add(FaultRule(method=method, status=status, count=100))
    cfg = write_config(tmp_path, world.endpoint)
    mark = len(world.world.requests)
    got, _out, err = run([command[0], "-c", str(cfg), *command[1:]], capsys)
    line = one_error(err)
    assert got == code and says in line, err
    if status == 403:
        assert hint_of(err) == "hint: the account running deployer lacks a permission for this call.", err
        assert line.endswith("HTTP 403: The caller does not have permission"), err  # Google's words, no URL
    assert mutating_since(world, mark) == []
    files = state_files(tmp_path / "state")
    assert LOCK not in files
    store = LocalStateStore(tmp_path / "state")
    for deploy_id in list_deploys(store, KEY):  # a journal begun is a journal finished: nothing to resume
        assert load(store, KEY, deploy_id).is_finished
    if command[0] != "rollback":
        return
    # the rollback's journal says it failed with nothing changed, and a deploy is not told to resume it
    (only,) = list_deploys(store, KEY)
    assert load(store, KEY, only).status == "failed"


@pytest.mark.parametrize("status", [403, 404])
def test_a_refused_candidate_update_is_a_rollback_that_says_why_without_the_url(
    world: LocalCloud, tmp_path: Path, capsys: pytest.CaptureFixture[str], status: int
) -> None:
    from deployer.orchestrator.journal import list_deploys, load
    from deployer.state.local import LocalStateStore

    world.world.faults.add(FaultRule(method="run.services.patch", status=status, count=100))
    cfg = write_config(tmp_path, world.endpoint)
    code, out, err = run(["deploy", "-c", str(cfg), "--yes"], capsys)
    assert code == 1 and "Traceback" not in err and "error:" not in err, err
    why = next(line for line in out.splitlines() if line.strip().startswith("why:"))
    assert "could not be created: run.services.patch: HTTP" in why and "http://" not in why, out
    store = LocalStateStore(tmp_path / "state")
    assert LOCK not in state_files(tmp_path / "state")
    (deploy_id,) = list_deploys(store, KEY)
    assert load(store, KEY, deploy_id).status in ("failed", "rolled_back")


@pytest.mark.e2e  # a real process: imports, signals and its own stdout
def test_a_transient_retry_never_lands_in_plan_json_on_stdout(world: LocalCloud, tmp_path: Path) -> None:
    """Logs go to stderr: a retried 500 must not corrupt the JSON a pipeline reads (a real process: its
    logging is configured as a user's is)."""
    world.world.faults.add(FaultRule(method="run.services.get", status=500, count=1))
    cfg = write_config(tmp_path, world.endpoint)
    proc = subprocess.run([*DEPLOYER, "plan", "-c", str(cfg), "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["service"].endswith("/services/chat-backend")
    events = [json.loads(line) for line in proc.stderr.splitlines()]
    assert [(e["message"], e["method"], e["status"]) for e in events] == [("gcp.retry", "run.services.get", 500)]


# ---- the state store: unwritable, a corrupt lock, a corrupt journal ---------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["plan"],
        ["deploy", "--yes"],
        ["status"],
        ["history"],
        ["why", "last"],
        ["rollback", "--reason", "bad release"],
        ["resume"],
        ["unpin", "--reason", "done"],
        ["unlock", "--force", "--reason", "stuck"],
    ],
    ids=lambda c: " ".join(c),
)
def test_a_state_directory_that_cannot_be_created_is_one_line_and_changes_nothing(
    world: LocalCloud, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    cfg = write_config(tmp_path, world.endpoint, state=blocker / "state")  # root can write anywhere else
    mark = len(world.world.requests)
    code, _out, err = run([command[0], "-c", str(cfg), *command[1:]], capsys)
    line = one_error(err)
    # known from the config alone: a config error at state.path's line, before any call
    where = f"{cfg}:{cfg.read_text().splitlines().index('state:') + 3}: state.path"
    assert code == 2 and line.startswith(
        f"error: {where}: '{blocker}/state' ({blocker}/state) cannot be a directory: "
    ), err
    assert mutating_since(world, mark) == []
    assert calls_since(world, mark) == [], calls_since(world, mark)
    assert blocker.read_text() == "not a directory\n"


def gcs_config(tmp_path: Path, endpoint: str, bucket: str) -> Path:
    cfg = write_config(tmp_path, endpoint)
    text = cfg.read_text()
    local = f"state:\n  backend: local\n  path: {tmp_path / 'state'}"
    assert local in text
    cfg.write_text(text.replace(local, f"state: {{backend: gcs, bucket: {bucket}, prefix: team}}"))
    return cfg


@pytest.mark.parametrize(
    "command", [["deploy", "--yes"], ["status"], ["history"], ["unlock", "--force", "--reason", "stuck"]], ids=" ".join
)
def test_a_missing_state_bucket_is_one_line_with_how_to_create_it(
    world: LocalCloud, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    cfg = gcs_config(tmp_path, world.endpoint, "no-such-bucket")
    mark = len(world.world.requests)
    code, _out, err = run([command[0], "-c", str(cfg), *command[1:]], capsys)
    assert (
        code == 1 and one_error(err) == "error: state bucket no-such-bucket does not exist (gs://no-such-bucket/team/)"
    )
    assert "gcloud storage buckets create gs://no-such-bucket" in (hint_of(err) or "")
    assert mutating_since(world, mark) == []


def test_a_forbidden_state_bucket_quotes_google_not_the_json_body(
    world: LocalCloud, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world.world.faults.add(FaultRule(method="storage.*", status=403, count=100))
    cfg = gcs_config(tmp_path, world.endpoint, "deployer-state")
    code, _out, err = run(["deploy", "-c", str(cfg), "--yes"], capsys)
    line = one_error(err)
    assert code == 1 and line.startswith(f"error: cannot read state gs://deployer-state/team/{LOCK}: "), err
    assert line.endswith("storage.objects.get: HTTP 403: The caller does not have permission"), err
    assert hint_of(err) == "hint: the account running deployer lacks a permission for this call."


CORRUPT_LOCKS = {
    "no header": b"garbage\n",
    "not JSON": b'{"generation": 5}\n{{{',
    "wrong shape": b'{"generation": 5}\n{"holder": 1}',
}


@pytest.mark.parametrize("kind", list(CORRUPT_LOCKS))
def test_a_corrupt_lock_is_kept_refuses_deploys_and_unlock_force_removes_it(
    world: LocalCloud, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    from deployer.orchestrator.journal import list_deploys, load
    from deployer.state.local import LocalStateStore

    state = tmp_path / "state"
    lock = state / LOCK
    lock.parent.mkdir(parents=True)
    lock.write_bytes(CORRUPT_LOCKS[kind])
    cfg = write_config(tmp_path, world.endpoint)
    mark = len(world.world.requests)
    code, _out, err = run(["deploy", "-c", str(cfg), "--yes"], capsys)
    # named where it is (the file, absolute), not by its key in the store
    assert code == 1 and one_error(err).startswith(f"error: the lock {lock} is unreadable"), err
    assert (hint_of(err) or "").startswith("hint: inspect it; `deployer unlock --force --reason ...` removes it")
    assert lock.read_bytes() == CORRUPT_LOCKS[kind]  # never overwritten, never deleted on its own
    assert calls_since(world, mark) == []
    # the way out the hint names works
    code, out, err = run(["unlock", "-c", str(cfg), "--force", "--reason", "a damaged lock"], capsys)
    assert code == 0 and out.startswith(f"removed the unreadable lease of {KEY}"), out + err
    assert "error:" not in err and "Traceback" not in err
    assert not lock.exists()
    store = LocalStateStore(state)
    (journal_id,) = list_deploys(store, KEY)
    journal = load(store, KEY, journal_id)
    assert journal.started.operation == "unlock" and journal.status == "succeeded"


def test_state_objects_in_a_gcs_store_are_named_by_their_gs_url(
    world: LocalCloud, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A damaged lock, a deploy's report and a rollback's JSON name the object as ``gs://bucket/prefix/key``:
    what `gcloud storage cat` takes, with nothing to work out from the config at 3 a.m."""
    from deployer.gcp.clients import Clients

    bucket = Clients(endpoint=world.endpoint, project=world.world.project).storage().bucket("deployer-state")
    lock = f"gs://deployer-state/team/{LOCK}"
    bucket.blob(f"team/{LOCK}").upload_from_string(b'{"holder": "a shell script"}')
    cfg = gcs_config(tmp_path, world.endpoint, "deployer-state")
    code, _out, err = run(["deploy", "-c", str(cfg), "--yes"], capsys)
    assert code == 1 and one_error(err) == f"error: the lock {lock} is unreadable", err
    assert (hint_of(err) or "").startswith("hint: inspect it; `deployer unlock --force --reason ...` removes it")
    assert run(["unlock", "-c", str(cfg), "--force", "--reason", "a damaged lock"], capsys)[0] == 0

    world.world.faults.add(FaultRule(method="run.services.patch", status=403, count=100))
    code, out, err = run(["deploy", "-c", str(cfg), "--yes"], capsys)
    assert code == 1 and "error:" not in err, out + err
    (journal,) = [line.strip() for line in out.splitlines() if line.strip().startswith("journal: ")]
    assert journal.startswith(f"journal: gs://deployer-state/team/{JOURNALS}/d-") and journal.endswith(".json"), out

    code, out, _err = run(
        ["rollback", "-c", str(cfg), "--reason", "typo", "--to", "chat-backend-nosuch", "--json"], capsys
    )
    doc = json.loads(out)
    assert (code, doc["status"]) == (1, "failed")
    assert doc["journal"].startswith(f"{JOURNALS}/d-")  # the key, as before
    assert doc["journal_location"] == f"gs://deployer-state/team/{doc['journal']}"
    assert bucket.blob(f"team/{doc['journal']}").exists()  # and it is really there


def test_a_corrupt_journal_is_kept_and_named(
    world: LocalCloud, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = tmp_path / "state" / JOURNALS / "d-20261126-100000-abcd.json"
    journal.parent.mkdir(parents=True)
    journal.write_bytes(b'{"generation": 5}\n{"format": 1, "records": [')
    cfg = write_config(tmp_path, world.endpoint)
    code, _out, err = run(["why", "d-20261126-100000-abcd", "-c", str(cfg)], capsys)
    assert code == 1 and "d-20261126-100000-abcd" in one_error(err) and "not valid JSON" in err, err
    code, out, err = run(["history", "-c", str(cfg)], capsys)
    assert code == 0 and "unreadable" in out and err == ""
    assert journal.read_bytes() == b'{"generation": 5}\n{"format": 1, "records": ['


@pytest.mark.parametrize("command", [["deploy", "--yes"], ["resume"]], ids=lambda c: " ".join(c))
def test_an_unreadable_newest_journal_stops_deploy_and_resume_and_is_kept(
    world: LocalCloud, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    """Whether that operation finished is unknown: acting over it could build on a half-changed service."""
    journal = tmp_path / "state" / JOURNALS / "d-20261126-100000-abcd.json"
    journal.parent.mkdir(parents=True)
    damaged = b'{"generation": 5}\n{"format": 1, "records": ['
    journal.write_bytes(damaged)
    cfg = write_config(tmp_path, world.endpoint)
    mark = len(world.world.requests)
    code, _out, err = run([command[0], "-c", str(cfg), *command[1:]], capsys)
    line = one_error(err)
    assert code == 1 and "the newest journal d-20261126-100000-abcd cannot be read" in line, err
    assert "move it out of the state store" in (hint_of(err) or "")
    assert journal.read_bytes() == damaged and LOCK not in state_files(tmp_path / "state")
    assert mutating_since(world, mark) == []


def test_an_older_unreadable_journal_does_not_block(
    world: LocalCloud, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    old = state / JOURNALS / "d-20261126-100000-abcd.json"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"damaged")
    cfg = write_config(tmp_path, world.endpoint)
    # a newer, finished operation (an unlock --force of a stale lease) is what resume looks at
    (state / LOCK).parent.mkdir(parents=True)
    (state / LOCK).write_bytes(b"garbage")
    assert run(["unlock", "-c", str(cfg), "--force", "--reason", "stale"], capsys)[0] == 0
    code, out, err = run(["resume", "-c", str(cfg)], capsys)
    assert code == 0 and "nothing to resume" in out and "error:" not in err, out + err


@pytest.mark.e2e  # a real local cloud process, SIGKILLed mid-deploy
def test_the_cloud_dying_mid_deploy_ends_as_rollback_incomplete_with_what_remains(tmp_path: Path) -> None:
    """The local cloud dies at the bake after the first traffic step: the rollback cannot reach it either.
    The deploy must still end as a result — exit 3, what remains changed, the journal finished — never as
    a bare "cannot reach" error that hides the half-changed service."""
    import types

    import yaml

    from deployer.gcp.clients import Clients
    from deployer.orchestrator.deploy import deploy
    from deployer.orchestrator.journal import list_deploys, load
    from deployer.state.local import LocalStateStore
    from tests.orchestrator.deploy_support import PROJECT, config_data, make_config, options, wait_settled, world_doc

    seed = tmp_path / "world.yaml"
    seed.write_text(yaml.safe_dump(world_doc()))
    proc = subprocess.Popen(
        [*DEPLOYER, "localcloud", "up", "--api-port", "0", "--lb-port", "0", "--seed", str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        ready = line_on("stdout", "local cloud ready")(proc)  # "... API on URL, load balancer on URL  (Ctrl-C ...)"
        api, lb = (word.rstrip(",") for word in ready.split() if word.startswith("http://"))
        wait_settled(Clients(endpoint=api, project=PROJECT))  # the seeded revision is up before deploying
        data = config_data(types.SimpleNamespace(endpoint=api, lb_url=lb), tmp_path / "state")
        data["rollout"]["bake_seconds"] = 1

        async def die_at_the_bake(_seconds: float) -> None:
            proc.kill()  # SIGKILL: the revisions die with it (their watchdog)
            proc.wait()

        result = deploy(make_config(data), options(sleep=die_at_the_bake))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (result.status, result.exit_code) == ("rollback_incomplete", 3), result.why
    assert result.remaining and all("cannot reach the local cloud" in r for r in result.remaining)
    assert any("the traffic shown is the last known" in h for h in result.hints)
    store = LocalStateStore(tmp_path / "state")
    (deploy_id,) = list_deploys(store, KEY)
    assert load(store, KEY, deploy_id).status == "rollback_incomplete"  # finished, with what remains
    assert LOCK not in state_files(tmp_path / "state")


# ---- Ctrl-C and SIGTERM: one line, the shell's exit codes, nothing left behind -----------------------------


@pytest.fixture
def silent_server() -> Iterator[socket.socket]:
    """A TCP port that accepts connections and never answers: a WebSocket upgrade there just waits."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(64)
        srv.settimeout(60)
        yield srv


Ready = Callable[["subprocess.Popen[str]"], str]


def line_on(stream: str, text: str) -> Ready:
    """Ready once the process writes a line containing ``text`` on ``stream`` (returns what it read)."""

    def wait(proc: subprocess.Popen[str]) -> str:
        seen = []
        for line in iter(getattr(proc, stream).readline, ""):
            seen.append(line)
            if text in line:
                return "".join(seen)
        raise AssertionError(f"{text!r} never came on {stream}: {''.join(seen)}")

    return wait


def _signal_when(argv: list[str], sig: int, ready: Ready, *, read_from: str = "") -> tuple[int, str, str]:
    """Start ``deployer argv``, wait until ``ready`` says it is inside the command, send ``sig``."""
    proc = subprocess.Popen([*DEPLOYER, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        before = ready(proc)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if read_from == "stdout":
        out = before + out
    elif read_from == "stderr":
        err = before + err
    return proc.returncode, out, err


@pytest.mark.e2e  # a real process: imports, signals and its own stdout
@pytest.mark.parametrize(
    ("sig", "code", "says"),
    [
        (signal.SIGINT, 130, "error: interrupted by Ctrl-C (SIGINT)"),
        (signal.SIGTERM, 143, "error: terminated by SIGTERM"),
    ],
    ids=["SIGINT", "SIGTERM"],
)
def test_a_signal_during_a_long_gate_is_one_line_and_no_verdict(
    silent_server: socket.socket, sig: int, code: int, says: str
) -> None:
    url = f"ws://127.0.0.1:{silent_server.getsockname()[1]}/ws"
    held: list[socket.socket] = []

    def connected(_proc: subprocess.Popen[str]) -> str:
        held.append(silent_server.accept()[0])  # the gate is mid-upgrade: inside the command
        return ""

    try:
        got, out, err = _signal_when(["gate", url, "-n", "4", "--hold", "30", "--open-timeout", "30"], sig, connected)
    finally:
        for conn in held:
            conn.close()
    assert (got, out) == (code, "")  # no "Passed": an interrupted gate measured nothing
    assert one_error(err).startswith(says), err


@pytest.mark.e2e  # a real process: imports, signals and its own stdout
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_localcloud_up_stops_cleanly_on_a_signal(sig: int) -> None:
    got, out, err = _signal_when(
        ["localcloud", "up", "--api-port", "0"], sig, line_on("stdout", "local cloud ready"), read_from="stdout"
    )
    assert got == 0 and "Traceback" not in err
    assert out.strip().endswith("local cloud stopped")


@pytest.mark.e2e  # a real process: imports, signals and its own stdout
def test_sigterm_while_retrying_a_dead_endpoint_is_one_line(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, f"http://127.0.0.1:{closed_port()}")
    # SIGTERM while it waits between retries of a refused connection
    got, out, err = _signal_when(["plan", "-c", str(cfg)], signal.SIGTERM, line_on("stderr", '"gcp.retry"'))
    assert (got, out) == (143, "")
    assert one_error(err) == "error: terminated by SIGTERM before the command finished"
