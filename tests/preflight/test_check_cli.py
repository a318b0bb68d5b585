"""`deployer check`: the seed's proposal refused claim by claim, staging passes, JSON, errors, no Google offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deployer.cli import main

ROOT = Path(__file__).resolve().parent.parent.parent
SEED = str(ROOT / "configs" / "examples" / "seed-proposal.yaml")
STAGING = str(ROOT / "configs" / "staging.yaml")
LOCAL = str(ROOT / "configs" / "local.yaml")

# ../shared/seed/README.md, its seven claims → the finding that answers each, and its severity.
# Severities follow Google's text (gcp-facts §6): the API rejects b/f (400), hop-by-hop headers "must not be
# used" (a), no configuration can give a 24-hour WebSocket (d), and --cpu-throttling written for "CPU always
# allocated" contradicts itself (c: the seed's config states both, CR023). Cookie affinity with a serverless
# NEG does nothing (e) and concurrency 1000 is valid (g).
CLAIMS = {
    "a: Connection/Upgrade custom headers enable WebSocket upgrades":
        ("LB002", "error", "load_balancer.custom_request_headers[1]", ["hop-by-hop", "Connection"]),
    "b: backend service timeout_sec = 86400":
        ("LB001", "error", "load_balancer.timeout_sec", ["Timeout sec is not supported", "86400"]),
    "c: --cpu-throttling disables CPU throttling":
        ("CR023", "error", "service.cpu_throttling", ["ENABLES throttling", "--no-cpu-throttling", "instance-based"]),
    "d: WEBSOCKET_TIMEOUT=86400":
        ("CR003", "error", "service.env.WEBSOCKET_TIMEOUT", ["3600 seconds", "WEBSOCKET_TIMEOUT"]),
    "e: GENERATED_COOKIE affinity breaks upgrades":
        ("LB006", "warning", "load_balancer.session_affinity", ["won't work", "does not break"]),
    "f: serverless NEGs are limited to 30 seconds":
        ("LB001", "error", "load_balancer.timeout_sec", ["60 minutes", "not configurable", "not 30 s"]),
    "g: --concurrency 1000":
        ("CR017", "info", "service.concurrency", ["valid", "maximum of 1,000"]),
}  # fmt: skip


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def seed_report() -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-m", "deployer", "check", "-c", SEED, "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    report: dict[str, object] = json.loads(proc.stdout)
    return report


@pytest.mark.parametrize("claim", list(CLAIMS))
def test_seed_proposal_reports_each_claim(claim: str, seed_report: dict[str, object]) -> None:
    code, severity, field, words = CLAIMS[claim]
    findings = [f for f in seed_report["findings"] if f["code"] == code and f["field"] == field]  # type: ignore[attr-defined]
    assert findings, f"{claim}: no {code} on {field}"
    f = findings[0]
    assert f["severity"] == severity
    assert f["line"] is not None and f["doc_url"].startswith("https://cloud.google.com/")
    for word in words:
        assert word in f["message"], (word, f["message"])


def test_seed_proposal_is_refused_with_the_wrong_claims_as_errors(seed_report: dict[str, object]) -> None:
    assert seed_report["ok"] is False
    findings: list[dict[str, str]] = seed_report["findings"]  # type: ignore[assignment]
    errors = {
        claim
        for claim, (code, _, field, _) in CLAIMS.items()
        if any(f["code"] == code and f["field"] == field and f["severity"] == "error" for f in findings)
    }
    # The five the seed README calls wrong about the platform; e (does nothing) and g (valid) are not errors.
    assert {claim[0] for claim in errors} == {"a", "b", "c", "d", "f"}
    both_headers = [f for f in seed_report["findings"] if f["code"] == "LB002"]  # type: ignore[attr-defined]
    assert {f["field"] for f in both_headers} == {
        "load_balancer.custom_request_headers[1]",
        "load_balancer.custom_request_headers[2]",
    }
    # and the priority-50 blanket allow for /ws
    assert any(f["code"] == "AR005" for f in seed_report["findings"])  # type: ignore[attr-defined]


def test_seed_proposal_human_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["check", "-c", SEED], capsys)
    assert code == 1
    for resource in ("service/netra-backend-staging", "backendService/staging-api-backend", "securityPolicy/"):
        assert resource in out
    for c in ("LB001", "LB002", "CR003", "CR023", "LB006", "CR017", "AR005"):
        assert c in out
    assert "refused" in out and "errors" in out


def test_staging_passes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["check", "-c", STAGING], capsys)
    assert code == 0, out + err
    assert "ok" in out and "0 errors" in out


def test_local_config_passes_offline(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["check", "-c", LOCAL], capsys)
    assert code == 0, out + err


def test_json_shape(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["check", "-c", STAGING, "--json"], capsys)
    assert code == 0
    report = json.loads(out)
    assert set(report) == {"config", "project", "service", "live", "ok", "summary", "findings"}
    assert report["ok"] is True and report["live"] is False
    assert report["summary"] == {"error": 0, "warning": 1, "info": 1}
    by_code = {f["code"]: f for f in report["findings"]}
    assert set(by_code) == {"CR022", "CR017"}  # the tag URL behind restricted ingress; concurrency 1000
    for finding in report["findings"]:
        assert set(finding) == {"code", "severity", "resource", "field", "line", "message", "fix", "doc_url"}
    assert by_code["CR017"]["line"] == 16 and by_code["CR017"]["severity"] == "info"


def test_config_error_is_one_line_with_file_line_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("project: p\nregion: r\nservice:\n  name: s\n  image: i:v1\n  concurrency: lots\n")
    code, out, err = run(["check", "-c", str(bad)], capsys)
    assert code == 2 and out == ""
    first = err.splitlines()[0]
    assert first == f"error: {bad}:6: service.concurrency: expected an integer, got a string ('lots')"
    assert "Traceback" not in err


def test_missing_config_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["check", "-c", "/nonexistent/x.yaml"], capsys)
    assert code == 2 and err.startswith("error: /nonexistent/x.yaml: no such file")


def test_missing_substitution_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("project: p\nregion: r\nservice:\n  name: s\n  image: r/s:${DEPLOYER_TEST_UNSET_TAG}\n")
    os.environ.pop("DEPLOYER_TEST_UNSET_TAG", None)
    code, _, err = run(["check", "-c", str(cfg)], capsys)
    assert code == 2 and f"{cfg}:5: service.image:" in err and "DEPLOYER_TEST_UNSET_TAG" in err


def test_offline_check_imports_no_google_library() -> None:
    probe = (
        "import sys\n"
        "from deployer.cli import main\n"
        f"code = main(['check', '-c', {SEED!r}, '--json'])\n"
        "loaded = sorted(m for m in sys.modules if m == 'google' or m.startswith(('google.', 'grpc')))\n"
        "print(code, loaded, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.stderr.strip().splitlines()[-1] == "1 []", proc.stderr


def test_help_lists_check() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "deployer", "check", "--help"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0
    for flag in ("--config", "--live", "--json", "--allow-env-removal"):
        assert flag in proc.stdout


def test_the_per_resource_titles_are_not_padded(capsys: pytest.CaptureFixture[str]) -> None:
    # rich padded a Table title to the table's width: ~100 trailing spaces after each resource name
    assert main(["check", "-c", SEED]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert "backendService/staging-api-backend" in lines and "service/netra-backend-staging" in lines
    assert [line for line in lines if line != line.rstrip()] == []
