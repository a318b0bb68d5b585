"""Replay recorded Google traffic against the local cloud and compare with what Google answered.

The recordings live in ``../shared/reference/gcp-http/`` (read at test time, never copied here; its
README says which responses are real). For each file, the requests are replayed in order against a
fresh local cloud, with ``${...}`` placeholders mapped to local values (client-chosen names fixed up
front, server-assigned ones such as operation names and fingerprints learned from each local answer).

- Files whose responses are REAL Google recordings: every replayed exchange must answer the recorded
  status, with the same fields present, the same JSON types and the same contract values (``kind``,
  ``@type``, error ``code``/``status``/``reason``); see ``recorded.compare``.
- The Cloud Run service files: genuine requests, but responses from another project's mock (README
  caveat), so they pin request shapes only: the local cloud must accept each request with the recorded
  status. Cloud Run response shapes come from ``compute-serverless-neg-cloudrun.http.log``.
- Calls to APIs the local cloud does not emulate are skipped, each host with its reason (``NOT_EMULATED``).
- Where the local cloud legitimately differs from a real answer, ``ALLOWED`` lists the field with the
  reason. Anything else that differs fails, with every difference listed.

Operations take ``OPERATION_SECONDS`` here, so the first answer to a mutation is the not-yet-done
operation Google answered; a recorded poll that found the operation done is re-sent until the local
operation is done too (what a client does).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests

from tests.conftest import SHARED
from tests.localcloud import recorded
from tests.localcloud.recorded import Bindings, Difference, Exchange

RECORDINGS = SHARED / "reference" / "gcp-http"
needs_recordings = pytest.mark.skipif(
    not RECORDINGS.is_dir(), reason=f"recorded Google traffic not found at {RECORDINGS} (../shared is absent)"
)

# file -> whether its responses are real Google recordings (README of gcp-http).
FILES: dict[str, bool] = {
    "compute-backendservice-crud.http.log": True,  # "real GCP recording via gcloud"
    "compute-securitypolicy-basic.http.log": True,  # "real GCP recording"
    "compute-serverless-neg-cloudrun.http.log": True,  # "real GCP recording" (Cloud Run + regional NEG)
    "run-service-basic.http.log": False,  # "responses look mock-generated"
    "run-service-secret.http.log": False,  # "Cloud Run responses look mock-generated"
}

NOT_EMULATED: dict[str, str] = {
    "cloudresourcemanager.googleapis.com": "project IAM policy (Resource Manager) is not emulated: deployer "
    "never calls it, and the local cloud has no identities",
    "secretmanager.googleapis.com": "Secret Manager is not emulated: deployer never calls it",
}

# (file, exchange index or 0 for every exchange, field path) -> why the local answer may differ.
ALLOWED: dict[tuple[str, int, str], str] = {}

OPERATION_SECONDS = 0.05
POLL_DEADLINE_S = 10.0

# Client-chosen placeholder values (names must be valid for the APIs: RFC 1035 labels).
FIXED = {
    "uniqueId": "rpl7x2",
    "backendServiceID": "bs-replay",
    "securityPolicyID": "sp-replay",
    "networkEndpointGroupID": "neg-replay",
    "projectNumber": "123456789012",
    "kccVersion": "0.0.0",
}


@dataclass
class Report:
    file: str
    replayed: list[str] = field(default_factory=list)
    compared: int = 0  # exchanges whose response shape was compared with a real recording
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)

    def text(self) -> str:
        lines = [f"{self.file}: {len(self.failures)} difference(s)"]
        lines += [f"  - {f}" for f in self.failures]
        return "\n".join(lines)


def _done(body: Any) -> bool:
    if not isinstance(body, dict):
        return False
    return body.get("done") is True or body.get("status") == "DONE"


def _is_operation_poll(ex: Exchange) -> bool:
    return "/operations/" in ex.path and ex.method in ("GET", "POST") and _done(ex.response.body)


def _excerpt(resp: requests.Response) -> str:
    return resp.text[:300].replace("\n", " ")


def _send(session: requests.Session, endpoint: str, ex: Exchange, bindings: Bindings) -> requests.Response:
    query = [(k, bindings.substitute_text(v)) for k, v in ex.query]
    url = endpoint + bindings.substitute_text(ex.path) + ("?" + urlencode(query) if query else "")
    body = bindings.substitute(ex.request.body) if ex.request.body is not None else None
    return session.request(ex.method, url, json=body, timeout=30)


def replay(endpoint: str, project: str, name: str) -> Report:
    """Replay one recorded file against a (fresh) local cloud at ``endpoint``."""
    real = FILES[name]
    report = Report(name)
    bindings = Bindings(fixed={**FIXED, "projectId": project})
    session = requests.Session()
    session.trust_env = False  # loopback, never through a proxy
    for ex in recorded.load(RECORDINGS / name):
        if ex.host in NOT_EMULATED:
            report.skipped.append((ex.describe(), NOT_EMULATED[ex.host]))
            continue
        resp = _send(session, endpoint, ex, bindings)
        if _is_operation_poll(ex):
            deadline = time.monotonic() + POLL_DEADLINE_S
            while resp.status_code == 200 and not _done(resp.json()) and time.monotonic() < deadline:
                time.sleep(0.01)
                resp = _send(session, endpoint, ex, bindings)
        report.replayed.append(ex.describe())
        if resp.status_code != ex.status:
            report.failures.append(
                f"{ex.describe()}: status {resp.status_code}, recorded {ex.status}: {_excerpt(resp)}"
            )
            continue
        try:
            actual = resp.json() if resp.content else None
        except ValueError:
            report.failures.append(f"{ex.describe()}: answer is not JSON: {_excerpt(resp)}")
            continue
        bindings.learn(ex.response.body, actual)
        if not real or ex.response.body is None:
            continue
        report.compared += 1
        for diff in recorded.compare(ex.response.body, actual):
            reason = _allowed(name, ex.index, diff)
            if reason is None:
                report.failures.append(f"{ex.describe()}: {diff}")
            else:
                report.allowed.append(f"{ex.describe()}: {diff} ({reason})")
    return report


def _allowed(name: str, index: int, diff: Difference) -> str | None:
    return ALLOWED.get((name, index, diff.path)) or ALLOWED.get((name, 0, diff.path))


# ---- the replay --------------------------------------------------------------------------------------
@needs_recordings
def test_every_recording_is_listed():
    """A new recording must be classified (real or requests-only) before it can be left out."""
    assert sorted(p.name for p in recorded.iter_files(RECORDINGS)) == sorted(FILES)


@needs_recordings
@pytest.mark.parametrize("name", sorted(FILES))
def test_replay_matches_the_recording(localcloud, name):
    localcloud.world.faults.operation_seconds.update({"run": OPERATION_SECONDS, "compute": OPERATION_SECONDS})
    report = replay(localcloud.endpoint, localcloud.world.project, name)
    assert report.replayed, "nothing was replayed"
    if FILES[name]:
        assert report.compared == len(report.replayed)  # every answer of a real recording was compared
    skipped_hosts = {d.split(" ")[2].split("/")[0] for d, _reason in report.skipped}
    assert skipped_hosts <= set(NOT_EMULATED)
    assert not report.failures, report.text()


# ---- the helpers, on their own (no recordings needed) -------------------------------------------------
SAMPLE = """POST https://compute.googleapis.com/compute/v1/projects/${projectId}/global/backendServices?alt=json
Content-Type: application/json

{
  "name": "${backendServiceID}"
}

200 OK
Content-Type: application/json; charset=UTF-8

{
  "kind": "compute#operation",
  "name": "${operationID}",
  "status": "RUNNING"
}

---

GET https://compute.googleapis.com/compute/v1/projects/${projectId}/global/backendServices/${backendServiceID}?alt=json

404 Not Found
Content-Type: application/json; charset=UTF-8

{
  "error": {"code": 404, "errors": [{"domain": "global", "reason": "notFound", "message": "m"}], "message": "m"}
}"""


def test_parse_reads_requests_statuses_and_bodies():
    first, second = recorded.parse(SAMPLE)
    assert (first.index, first.method, first.host) == (1, "POST", "compute.googleapis.com")
    assert first.path == "/compute/v1/projects/${projectId}/global/backendServices"
    assert first.query == [("alt", "json")]
    assert first.request.body == {"name": "${backendServiceID}"}
    assert first.request.header("content-type") == "application/json"
    assert (first.status, first.reason) == (200, "OK")
    assert first.response.body["name"] == "${operationID}"
    assert (second.method, second.status, second.request.body) == ("GET", 404, None)
    assert recorded.placeholders([first, second]) == {"projectId", "backendServiceID", "operationID"}


def test_parse_rejects_a_chunk_without_a_status_line():
    with pytest.raises(recorded.ParseError):
        recorded.parse("GET https://x/y\nA: b\n\n{}\n")


def test_bindings_substitute_fixed_and_learn_server_assigned_values():
    b = Bindings(fixed={"projectId": "p", "backendServiceID": "bs"})
    assert b.substitute({"name": "${backendServiceID}", "l": ["projects/${projectId}"]}) == {
        "name": "bs",
        "l": ["projects/p"],
    }
    b.learn(
        {"name": "projects/${projectId}/locations/l/operations/${operationID}", "fingerprint": recorded.TOKEN},
        {"name": "projects/p/locations/l/operations/op-42", "fingerprint": "Zm9v"},
    )
    assert b.substitute_text("/ops/${operationID}") == "/ops/op-42"
    assert b.substitute({"fingerprint": recorded.TOKEN}) == {"fingerprint": "Zm9v"}
    # fixed values are never relearned, and an unmatched string teaches nothing
    b.learn({"targetId": "${backendServiceID}"}, {"targetId": "12345"})
    assert b.value("backendServiceID") == "bs"
    with pytest.raises(KeyError):
        b.substitute_text("${unknown}")


def test_compare_reports_missing_extra_type_and_contract_values():
    rec = {"kind": "compute#operation", "id": "1", "progress": 0, "items": [{"a": 1}, {"b": "x"}]}
    act = {"kind": "compute#op", "id": 1, "extra": True, "items": [{"a": 2, "b": "y"}]}
    diffs = {(d.path, d.kind) for d in recorded.compare(rec, act)}
    assert diffs == {("kind", "value"), ("id", "type"), ("progress", "missing"), ("extra", "extra")}


def test_compare_checks_error_contract_values_but_not_ordinary_values():
    rec = {"error": {"code": 404, "status": "NOT_FOUND", "message": "x"}, "status": "RUNNING"}
    act = {"error": {"code": 404, "status": "FAILED_PRECONDITION", "message": "y"}, "status": "DONE"}
    assert [(d.path, d.kind) for d in recorded.compare(rec, act)] == [("error.status", "value")]
    assert [d.kind for d in recorded.compare({"l": [1]}, {"l": []})] == ["empty"]
    assert recorded.compare({"n": 1}, {"n": 2.5}) == []  # both JSON numbers


def test_compare_pins_operation_and_condition_values_outside_lists_only():
    rec = {"operationType": "compute.regionNetworkEndpointGroups.insert", "terminalCondition": {"state": "P"}}
    act = {"operationType": "insert", "terminalCondition": {"state": "S"}}
    assert {d.path for d in recorded.compare(rec, act)} == {"operationType", "terminalCondition.state"}
    conditions = {"conditions": [{"type": "RoutesReady"}, {"type": "ConfigurationsReady"}]}
    reordered = {"conditions": [{"type": "ConfigurationsReady"}, {"type": "RoutesReady"}]}
    assert recorded.compare(conditions, reordered) == []


def test_operation_poll_detection():
    (ex,) = recorded.parse(
        'GET https://c/compute/v1/projects/p/global/operations/op\n\n200 OK\n\n{"status": "DONE", "name": "op"}'
    )
    assert _is_operation_poll(ex)


def test_recordings_path_points_at_shared():
    assert Path(RECORDINGS).parts[-3:] == ("shared", "reference", "gcp-http")
