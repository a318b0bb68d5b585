"""``deployer localcloud up`` as a real foreground process: ready line, health, request logs, signals, errors."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

READY = re.compile(r"local cloud ready: API on (http://127\.0\.0\.1:(\d+))")


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "deployer", "localcloud", "up", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "PYTHONUNBUFFERED": "1"}


class Running:
    def __init__(self, proc: subprocess.Popen[str], endpoint: str) -> None:
        self.proc = proc
        self.endpoint = endpoint


def _start(*args: str) -> Running:
    proc = subprocess.Popen(
        _cmd(*args), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the ready line (or EOF if it died)
    match = READY.search(line)
    if match is None:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        pytest.fail(f"no ready line; stdout={line + out!r} stderr={err!r}")
    return Running(proc, match.group(1))


def _get(url: str) -> tuple[int, dict]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, json.loads(resp.read())


def _wait_healthy(endpoint: str, deadline_s: float = 20) -> dict:
    deadline = time.monotonic() + deadline_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            status, body = _get(endpoint + "/_localcloud/health")
            if status == 200:
                return body
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"health never answered 200: {last!r}")


@pytest.fixture
def running() -> Iterator[Running]:
    r = _start("--api-port", "0")
    yield r
    if r.proc.poll() is None:
        r.proc.kill()
        r.proc.communicate(timeout=10)


@pytest.mark.e2e
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_up_answers_health_logs_requests_and_stops_cleanly(running, sig):
    port = int(running.endpoint.rsplit(":", 1)[1])
    assert port != 0  # --api-port 0 prints the port it really got
    body = _wait_healthy(running.endpoint)
    assert body["status"] == "ok"
    # a Google API call through the same server, so the log has a non-control request too
    status, listing = _get(running.endpoint + "/storage/v1/b?project=local-project")
    assert (status, listing["kind"]) == (200, "storage#buckets")
    running.proc.send_signal(sig)
    out, err = running.proc.communicate(timeout=20)
    assert running.proc.returncode == 0
    assert out.strip().endswith("local cloud stopped")
    assert "Traceback" not in err
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    requests = [e for e in events if e["message"] == "localcloud.request"]
    assert {"method": "control.health", "http_method": "GET", "path": "/_localcloud/health", "status": 200}.items() <= (
        requests[0].items()
    )
    assert any(e["method"] == "storage.buckets.list" and e["status"] == 200 for e in requests)
    assert all(isinstance(e["duration_ms"], float) for e in requests)
    assert any(e["message"] == "localcloud.ready" for e in events)


@pytest.mark.e2e
def test_up_with_a_seed_file_serves_the_seeded_world(tmp_path):
    seed = tmp_path / "world.yaml"
    seed.write_text("project: seeded-project\nregion: europe-west1\nbuckets:\n  - name: deployer-state\n")
    r = _start("--api-port", "0", "--seed", str(seed))
    try:
        body = _wait_healthy(r.endpoint)
        assert (body["project"], body["region"]) == ("seeded-project", "europe-west1")
        _status, listing = _get(r.endpoint + "/storage/v1/b?project=seeded-project")
        assert [b["name"] for b in listing["items"]] == ["deployer-state"]
        # the "done when": an upload with if_generation_match=0 succeeds once, then fails
        from google.api_core import exceptions as gexc

        from deployer.gcp.clients import Clients

        bucket = Clients(endpoint=r.endpoint, project="seeded-project").storage().bucket("deployer-state")
        bucket.blob("deploy.lock").upload_from_string(b"first", if_generation_match=0)
        with pytest.raises(gexc.PreconditionFailed):
            bucket.blob("deploy.lock").upload_from_string(b"second", if_generation_match=0)
        assert bucket.blob("deploy.lock").download_as_bytes() == b"first"
    finally:
        r.proc.send_signal(signal.SIGTERM)
        r.proc.communicate(timeout=20)
    assert r.proc.returncode == 0


@pytest.mark.e2e
def test_real_clients_round_trip_against_the_running_process(running):
    """The issue's "done when": with `deployer localcloud up` running, the real clients' create → update →
    `.result()` round trips work for Cloud Run and for Compute."""
    from google.api_core.future import polling
    from google.cloud import compute_v1, run_v2

    from deployer.gcp.clients import Clients

    _wait_healthy(running.endpoint)
    clients = Clients(endpoint=running.endpoint, project="local-project")
    fast = polling.DEFAULT_POLLING.with_delay(initial=0.02, maximum=0.1, multiplier=1.5).with_timeout(30)

    parent = "projects/local-project/locations/us-central1"
    svc = run_v2.Service(template=run_v2.RevisionTemplate(containers=[run_v2.Container(image="gcr.io/p/app:1")]))
    services = clients.services()
    created = services.create_service(parent=parent, service=svc, service_id="round-trip").result(polling=fast)
    assert created.generation == 1
    assert created.latest_ready_revision.startswith(f"{created.name}/revisions/round-trip-00001-")
    current = services.get_service(name=created.name)
    current.template.containers[0].image = "gcr.io/p/app:2"
    updated = services.update_service(service=current).result(polling=fast)
    assert updated.generation == 2
    assert updated.template.containers[0].image == "gcr.io/p/app:2"
    assert updated.latest_ready_revision != created.latest_ready_revision

    backends = clients.backend_services()
    body = compute_v1.BackendService(name="round-trip-bs", protocol="HTTPS", load_balancing_scheme="EXTERNAL_MANAGED")
    assert backends.insert(project="local-project", backend_service_resource=body).result(timeout=30) is None
    before = backends.get(project="local-project", backend_service="round-trip-bs")
    patch = compute_v1.BackendService(description="patched", fingerprint=before.fingerprint)
    assert (
        backends.patch(project="local-project", backend_service="round-trip-bs", backend_service_resource=patch).result(
            timeout=30
        )
        is None
    )
    after = backends.get(project="local-project", backend_service="round-trip-bs")
    assert after.description == "patched" and after.fingerprint != before.fingerprint

    running.proc.send_signal(signal.SIGTERM)
    running.proc.communicate(timeout=20)
    assert running.proc.returncode == 0


def _run_fails(*args: str) -> tuple[int, str, str]:
    proc = subprocess.run(_cmd(*args), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout, proc.stderr


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.mark.e2e
def test_busy_port_is_one_error_line_and_exit_1():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        code, out, err = _run_fails("--api-port", str(port))
    assert code == 1
    assert "Traceback" not in err
    lines = _error_lines(err)
    assert lines[0] == f"error: local cloud failed to start: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert [line.split(":")[0] for line in lines] == ["error", "hint"]
    assert "local cloud stopped" not in out  # it never started


@pytest.mark.e2e
def test_missing_seed_file_is_one_error_line(tmp_path):
    missing = tmp_path / "nope.yaml"
    code, out, err = _run_fails("--api-port", "0", "--seed", str(missing))
    assert code == 1
    assert _error_lines(err) == [f"error: cannot read seed file {missing}: No such file or directory"]
    assert out == ""


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("project: [unclosed\n", "is not valid YAML: expected ',' or ']', but got '<stream end>' (line 2, column 1)"),
        ("- a\n- list\n", "must hold a mapping at the top level"),
        ("buckets: [{name: UPPER}]\n", "Invalid bucket name: 'UPPER'"),
        ("service:\n  - name: chat\n", "unknown top-level key 'service'; did you mean 'services'?"),
    ],
)
def test_bad_seed_file_is_one_error_line(tmp_path: Path, text, expected):
    seed = tmp_path / "bad.yaml"
    seed.write_text(text)
    code, _out, err = _run_fails("--api-port", "0", "--seed", str(seed))
    assert code == 1
    lines = _error_lines(err)
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    assert expected in lines[0]
