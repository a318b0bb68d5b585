"""Every preflight rule: a minimal config (and live state) that triggers it, and one that does not."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from deployer.config import DeployConfig, config_from_data
from deployer.model import Observed
from deployer.preflight import Finding, Severity, rules, run_rules
from deployer.preflight.base import mask


class _Delete:
    """Removes a key in ``merge`` (survives deep copies)."""

    def __deepcopy__(self, memo: dict[int, Any]) -> _Delete:
        return self


DELETE = _Delete()

# A config no rule has anything to say about.
BASE: dict[str, Any] = {
    "project": "p",
    "region": "us-central1",
    "service": {
        "name": "chat",
        "image": "r/chat:v1",
        "timeout": 3600,
        "concurrency": 100,
        "cpu_throttling": False,
        "min_instances": 1,
        "session_affinity": True,
        "ingress": "internal-and-cloud-load-balancing",
        "startup_probe": {"type": "http", "path": "/health"},
    },
    "load_balancer": {"backend_service": "bs"},
    "armor": {"policy": "pol", "rules": []},
    "gate": {
        "candidate": {"url": "wss://candidate.api.example.com/ws"},  # an LB route to the tag (CR022)
        "public": {"url": "wss://api.example.com/ws"},  # the load balancer's host (CR024)
    },
}

WS_THROTTLE = {
    "priority": 50,
    "action": "throttle",
    "expression": "has(request.headers['upgrade']) && request.headers['upgrade'].lower().contains('websocket')",
    "rate_limit": {"count": 60, "interval_sec": 60, "enforce_on_key": "IP"},
}
WS_ALLOW = {
    "priority": 50,
    "action": "allow",
    "expression": "request.path.matches('/ws.*') && request.headers['upgrade'].lower().contains('websocket')",
}
ALL_THROTTLE = {
    "priority": 1000,
    "action": "throttle",
    "src_ip_ranges": ["*"],
    "rate_limit": {"count": 100, "interval_sec": 60, "enforce_on_key": "IP"},
}


ALL_THROTTLE_REST = {  # the same rule as the Compute API returns it
    "priority": 1000,
    "action": "throttle",
    "preview": False,
    "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["*"]}},
    "rateLimitOptions": {"rateLimitThreshold": {"count": 100, "intervalSec": 60}, "enforceOnKey": "IP"},
}


def merge(base: Any, patch: Any) -> Any:
    """Deep-merge ``patch`` into a copy of ``base``; lists replace; DELETE removes a key."""
    if not isinstance(patch, dict) or not isinstance(base, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is DELETE:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value) if isinstance(out.get(key), dict) else copy.deepcopy(value)
    return out


def config(patch: dict[str, Any] | None = None) -> DeployConfig:
    return config_from_data(merge(BASE, patch or {}), environ={})


def svc(**fields: Any) -> dict[str, Any]:
    return {"service": fields}


def env(**values: Any) -> dict[str, Any]:
    return {"service": {"env": values}}


def lb(**fields: Any) -> dict[str, Any]:
    return {"load_balancer": fields}


def armor(*rule_list: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"armor": {"rules": list(rule_list), **fields}}


def headers(*values: str) -> dict[str, Any]:
    return lb(custom_request_headers=list(values))


def revision_env(*names: str) -> Observed:
    return Observed(serving_revision={"containers": [{"env": [{"name": n, "value": "x"} for n in names]}]})


def live_backend(policy: str | None = None, neg: dict[str, Any] | None = None) -> Observed:
    bs: dict[str, Any] = {"name": "bs"}
    if policy is not None:
        bs["securityPolicy"] = f"https://compute.googleapis.com/compute/v1/projects/p/global/securityPolicies/{policy}"
    return Observed(backend_service=bs, negs=(neg,) if neg else ())


def serverless_neg(service: str) -> dict[str, Any]:
    return {"name": "neg", "networkEndpointType": "SERVERLESS", "cloudRun": {"service": service}}


def live_rules(*rule_list: dict[str, Any]) -> Observed:
    return Observed(security_policy={"name": "pol", "rules": list(rule_list)})


# (code, trigger patch, trigger live, clean patch, clean live)
CASES: list[tuple[str, dict[str, Any], Observed | None, dict[str, Any], Observed | None]] = [
    ("CR001", svc(timeout=86400), None, svc(timeout=3600), None),
    ("CR001", svc(timeout=0), None, svc(timeout=1), None),
    ("CR002", merge(svc(timeout=600), env(WEBSOCKET_CONNECTION_TIMEOUT=900)), None,
     merge(svc(timeout=900), env(WEBSOCKET_CONNECTION_TIMEOUT=900)), None),
    ("CR002", merge(svc(timeout=DELETE), env(WEBSOCKET_STALE_TIMEOUT="900s")), None,
     merge(svc(timeout=DELETE), env(WEBSOCKET_STALE_TIMEOUT=300)), None),
    ("CR003", env(WEBSOCKET_TIMEOUT=86400), None, env(WEBSOCKET_TIMEOUT=3600), None),
    ("CR003", env(WEBSOCKET_MAX_AGE_MS=7_200_000), None, env(WEBSOCKET_MAX_AGE_MS=3_600_000), None),
    ("CR004", env(WEBSOCKET_HEARTBEAT_INTERVAL=75, WEBSOCKET_HEARTBEAT_TIMEOUT=25), None,
     env(WEBSOCKET_HEARTBEAT_INTERVAL=25, WEBSOCKET_HEARTBEAT_TIMEOUT=75), None),
    ("CR004", merge(svc(timeout=20), env(WEBSOCKET_HEARTBEAT_INTERVAL=25)), None,
     merge(svc(timeout=30), env(WEBSOCKET_HEARTBEAT_INTERVAL=25)), None),
    ("CR005", svc(concurrency=1001), None, svc(concurrency=1000), None),
    ("CR006", svc(cpu=0.5, concurrency=10, cpu_throttling=True), None,
     svc(cpu=0.5, concurrency=1, cpu_throttling=True), None),
    ("CR006", svc(cpu="500m", concurrency=1, cpu_throttling=False), None,
     svc(cpu="1", concurrency=10, cpu_throttling=False), None),
    ("CR006", svc(cpu="500m", concurrency=1, cpu_throttling=DELETE, billing="instance-based"), None,
     svc(cpu="500m", concurrency=1, cpu_throttling=DELETE, billing="request-based"), None),
    ("CR007", svc(port_name="h2c"), None, svc(port_name="http1"), None),
    ("CR008", svc(startup_probe={"type": "tcp", "path": DELETE}), None,
     svc(startup_probe={"type": "http", "path": "/ready"}), None),
    ("CR008", svc(startup_probe=DELETE), None, {}, None),
    ("CR009", merge(svc(cpu_throttling=True), env(WEBSOCKET_CLEANUP_INTERVAL=180)), None,
     merge(svc(cpu_throttling=False), env(WEBSOCKET_CLEANUP_INTERVAL=180)), None),
    ("CR009", merge(svc(cpu_throttling=True), env(WEBSOCKET_HEARTBEAT_INTERVAL=25)), None,
     merge(svc(cpu_throttling=True), env(WEBSOCKET_CONNECTION_TIMEOUT=900)), None),
    ("CR009", merge(svc(cpu_throttling=DELETE, billing="request-based"), env(WEBSOCKET_CLEANUP_INTERVAL=180)), None,
     merge(svc(cpu_throttling=DELETE, billing="instance-based"), env(WEBSOCKET_CLEANUP_INTERVAL=180)), None),
    ("CR023", svc(cpu_throttling=True, billing="instance-based"), None,
     svc(cpu_throttling=False, billing="instance-based"), None),
    ("CR023", svc(cpu_throttling=False, billing="request-based"), None,
     svc(cpu_throttling=DELETE, billing="request-based"), None),
    ("CR010", env(A="1"), revision_env("A", "B"), env(A="1", B="2"), revision_env("A", "B")),
    ("CR010", env(A="1"), revision_env("A", "B"), env(A="1"), revision_env("A", "PORT")),
    ("CR011", svc(min_instances=0), None, svc(min_instances=1), None),
    ("CR012", svc(cpu="3"), None, svc(cpu="2"), None),
    ("CR012", svc(cpu="4", memory="1Gi"), None, svc(cpu="4", memory="2Gi"), None),
    ("CR013", env(PORT=8080), None, env(APP_PORT=8080), None),
    ("CR013", env(BIG="x" * 32769), None, env(BIG="x" * 32768), None),
    ("CR014", svc(annotations={"run.googleapis.com/cpu-throttling": "false"}), None,
     svc(annotations={"example.com/owner": "chat"}), None),
    ("CR014", svc(labels={"serving.knative.dev/service": "x"}), None, svc(labels={"team": "chat"}), None),
    ("CR015", svc(name="Chat_Backend"), None, svc(name="chat-backend"), None),
    ("CR015", svc(name="a" * 50), None, svc(name="a" * 49), None),
    ("CR016", {"rollout": {"tag": "Candidate_1"}}, None, {"rollout": {"tag": "canary-1"}}, None),
    ("CR016", merge(svc(name="c" * 40), {"rollout": {"tag": "candidate"}}), None,
     merge(svc(name="c" * 37), {"rollout": {"tag": "candidate"}}), None),
    ("CR017", svc(concurrency=1000), None, svc(concurrency=999), None),
    ("CR018", svc(concurrency=DELETE), None, svc(concurrency=80), None),
    ("CR018", svc(concurrency=0), None, svc(concurrency=1), None),
    ("CR019", svc(timeout=DELETE), None, svc(timeout=3600), None),
    ("CR020", svc(session_affinity=False), None, svc(session_affinity=True), None),
    ("CR021", svc(ingress="all"), None, {**svc(ingress="all"), "load_balancer": DELETE, "armor": DELETE}, None),
    ("CR022", {"gate": {"candidate": {"url": DELETE}}}, None,
     {"gate": {"candidate": {"url": DELETE}}, **svc(ingress="all")}, None),
    ("CR022", merge(svc(ingress="internal"), {"gate": {"candidate": {"url": DELETE}}}), None,
     svc(ingress="internal"), None),
    ("CR024", {"gate": {"public": {"url": DELETE}}}, None,
     {"gate": {"public": {"url": DELETE}}, "load_balancer": DELETE, "armor": DELETE}, None),
    ("CR024", merge(svc(ingress="all"), {"gate": {"public": {"url": DELETE, "path": "chat"}}}), None,
     merge(svc(ingress="all"), {"gate": {"public": {"url": "ws://127.0.0.1:8080/chat"}}}), None),
    ("LB001", lb(timeout_sec=86400), None, lb(), None),
    ("LB001", lb(timeout_sec=30), live_backend(neg=serverless_neg("chat")),
     lb(timeout_sec=30), live_backend(neg={"name": "ig", "kind": "compute#instanceGroup"})),
    ("LB002", headers("X-Forwarded-Proto: https", "Connection: upgrade"), None,
     headers("X-Forwarded-Proto: https"), None),
    ("LB002", headers("upgrade: websocket"), None, headers("X-Upgrade-Reason: none"), None),
    ("LB002", headers("Keep-Alive: 5"), None, headers("X-Keep: 5"), None),
    ("LB003", headers("X-Goog-Thing: 1"), None, headers("X-Thing: 1"), None),
    ("LB003", headers("CDN-Loop: me"), None, headers("X-Loop: me"), None),
    ("LB004", headers(*[f"X-H{i}: v" for i in range(17)]), None, headers(*[f"X-H{i}: v" for i in range(16)]), None),
    ("LB004", headers("X-Big: " + "v" * 8200), None, headers("X-Big: " + "v" * 8000), None),
    ("LB005", headers("NoColonHere"), None, headers("No-Colon: here"), None),
    ("LB005", headers("Bad Name: x"), None, headers("Good-Name: x"), None),
    ("LB005", headers("X-A: 1", "x-a: 2"), None, headers("X-A: 1", "X-B: 2"), None),
    ("LB006", lb(session_affinity="GENERATED_COOKIE"), None, lb(session_affinity="NONE"), None),
    ("LB006", lb(affinity_cookie_ttl_sec=3600), None, lb(), None),
    ("LB007", lb(protocol="HTTP2"), None, lb(protocol="HTTPS"), None),
    ("LB007", lb(protocol="H2C"), None, lb(protocol="HTTP"), None),
    ("LB008", lb(log_sample_rate=1.5), None, lb(log_sample_rate=0.5), None),
    ("LB009", lb(log_enable=False), None, {**lb(log_enable=False), "armor": DELETE}, None),
    ("LB009", lb(log_sample_rate=0), None, lb(log_sample_rate=0.1), None),
    ("LB010", {}, live_backend(policy="other"), {}, live_backend(policy="pol")),
    ("LB010", {}, live_backend(policy=None), {}, None),
    ("LB011", {}, live_backend(neg=serverless_neg("other-service")), {}, live_backend(neg=serverless_neg("chat"))),
    ("AR001", armor({"priority": 10, "action": "allow", "expression": "request.path.matches("}), None,
     armor({"priority": 10, "action": "allow", "expression": "request.path.matches('^/ok')"}), None),
    ("AR001", armor({"priority": 10, "action": "allow", "expression": "request.path.startswith('/x')"}), None,
     armor({"priority": 10, "action": "allow", "expression": "request.path.startsWith('/x')"}), None),
    ("AR002", armor({"priority": 10, "action": "allow", "expression": " || ".join(["request.path == '/a'"] * 6)}), None,
     armor({"priority": 10, "action": "allow", "expression": " || ".join(["request.path == '/a'"] * 5)}), None),
    ("AR003", armor({"priority": 10, "action": "deny(403)", "preview": True,
                     "expression": "request.headers['x-k'] == 'a'"}), None,
     armor({"priority": 10, "action": "deny(403)", "preview": True,
            "expression": "has(request.headers['x-k']) && request.headers['x-k'] == 'a'"}), None),
    ("AR004", armor({"priority": 10, "action": "throttle", "src_ip_ranges": ["*"]}), None,
     armor({"priority": 10, "action": "throttle", "src_ip_ranges": ["*"],
            "rate_limit": {"count": 5, "interval_sec": 60}}), None),
    ("AR004", armor({"priority": 10, "action": "allow", "src_ip_ranges": ["*"],
                     "rate_limit": {"count": 5, "interval_sec": 60}}), None,
     armor({"priority": 10, "action": "allow", "src_ip_ranges": ["*"]}), None),
    ("AR004", armor({**ALL_THROTTLE, "rate_limit": {"count": 5, "interval_sec": 45}}), None, armor(ALL_THROTTLE), None),
    ("AR004", armor({**ALL_THROTTLE, "rate_limit": {"count": 0, "interval_sec": 60}}), None, armor(ALL_THROTTLE), None),
    ("AR004", armor({**ALL_THROTTLE, "action": "rate_based_ban", "rate_limit": {"count": 10_001, "interval_sec": 60}}),
     None, armor({**ALL_THROTTLE, "action": "rate_based_ban", "rate_limit": {"count": 10_000, "interval_sec": 60}}),
     None),
    ("AR004", armor({**ALL_THROTTLE, "rate_limit": {"count": 5, "interval_sec": 60, "conform_action": "deny(403)"}}),
     None, armor({**ALL_THROTTLE, "rate_limit": {"count": 5, "interval_sec": 60, "conform_action": "allow"}}), None),
    ("AR004", armor({**ALL_THROTTLE, "rate_limit": {"count": 5, "interval_sec": 60, "exceed_action": "deny(418)"}}),
     None, armor({**ALL_THROTTLE, "rate_limit": {"count": 5, "interval_sec": 60, "exceed_action": "deny(502)"}}), None),
    ("AR004", armor({**ALL_THROTTLE, "rate_limit": {"count": 5, "interval_sec": 60, "enforce_on_key": "HTTP_HEADER"}}),
     None, armor({**ALL_THROTTLE, "rate_limit": {"count": 5, "interval_sec": 60, "enforce_on_key": "HTTP_HEADER",
                                                 "enforce_on_key_name": "x-client"}}), None),
    ("AR004", armor({**ALL_THROTTLE, "rate_limit": {"count": 5, "interval_sec": 60, "ban_duration_sec": 600}}), None,
     armor({**ALL_THROTTLE, "action": "rate_based_ban",
            "rate_limit": {"count": 5, "interval_sec": 60, "ban_duration_sec": 600}}), None),
    ("AR004", armor({**ALL_THROTTLE, "action": "rate_based_ban",
                     "rate_limit": {"count": 5, "interval_sec": 60, "ban_duration_sec": 45}}), None,
     armor({**ALL_THROTTLE, "action": "rate_based_ban",
            "rate_limit": {"count": 5, "interval_sec": 60, "ban_duration_sec": 60}}), None),
    ("AR005", armor(WS_ALLOW, ALL_THROTTLE), None, armor(WS_THROTTLE, ALL_THROTTLE), None),
    ("AR005", armor(WS_ALLOW), live_rules(ALL_THROTTLE_REST), armor(WS_ALLOW), live_rules()),
    ("AR005", armor(WS_ALLOW, ALL_THROTTLE), None, armor({**WS_ALLOW, "preview": True}, ALL_THROTTLE), None),
    ("AR005", armor(WS_ALLOW, ALL_THROTTLE), None,
     armor({**WS_ALLOW, "expression": "request.path.matches('^/api')"}, ALL_THROTTLE), None),
    ("AR006", armor({"priority": 10, "action": "deny(403)", "src_ip_ranges": ["1.2.3.0/24"]}), None,
     armor({"priority": 10, "action": "deny(403)", "src_ip_ranges": ["1.2.3.0/24"], "preview": True}), None),
    ("AR006", armor({"priority": 10, "action": "deny(404)", "src_ip_ranges": ["1.2.3.0/24"]}),
     live_rules({"priority": 11, "action": "deny(404)"}),
     armor({"priority": 10, "action": "deny(404)", "src_ip_ranges": ["1.2.3.0/24"]}),
     live_rules({"priority": 10, "action": "deny(404)"})),
    ("AR007", armor({"priority": 2147483647, "action": "allow", "src_ip_ranges": ["*"]}), None,
     armor(default_action="allow"), None),
    ("AR007", armor({"priority": 2147483648, "action": "allow", "src_ip_ranges": ["*"]}), None,
     armor({"priority": 2147483646, "action": "allow", "src_ip_ranges": ["*"]}), None),
    ("AR007", armor({**ALL_THROTTLE, "priority": 7}, {**ALL_THROTTLE, "priority": 7}), None,
     armor({**ALL_THROTTLE, "priority": 7}, {**ALL_THROTTLE, "priority": 8}), None),
    ("AR008", armor({"priority": 10, "action": "deny(429)", "src_ip_ranges": ["*"], "preview": True}), None,
     armor({"priority": 10, "action": "deny(502)", "src_ip_ranges": ["*"], "preview": True}), None),
    ("AR008", armor({"priority": 10, "action": "redirect", "src_ip_ranges": ["*"]}), None,
     armor({"priority": 10, "action": "allow", "src_ip_ranges": ["*"]}), None),
    ("AR008", armor(default_action="throttle"), None, armor(default_action="deny(404)"), None),
    ("AR009", armor({**ALL_THROTTLE, "priority": 10}), live_rules({"priority": 10, "action": "rate_based_ban"}),
     armor({**ALL_THROTTLE, "priority": 10}), live_rules({"priority": 10, "action": "throttle"})),
    ("HY001", svc(image="r/chat:latest"), None, svc(image="r/chat:v1.2.3"), None),
    ("HY001", svc(image="gcr.io/p/chat"), None, svc(image="gcr.io/p/chat@sha256:" + "a" * 64), None),
    ("HY001", svc(image="localhost:5000/chat"), None, svc(image="localhost:5000/chat:8c1d4e2"), None),
    ("HY002", env(DB_PASSWORD="hunter2hunter2"), None, env(DB_PASSWORD={"secret": "db-password"}), None),
    ("HY002", env(DATABASE_URL="postgresql://app:s3cr3tpass@10.0.0.5/db"), None,
     env(DATABASE_URL="postgresql://10.0.0.5/db"), None),
    ("HY002", env(SOME_VALUE="ghp_" + "a1B2" * 9), None, env(SOME_VALUE="plain text"), None),
    ("HY002", env(API_KEY="k-9f8e7d6c5b4a"), None, env(TOKEN_TTL_SECONDS="900", PASSWORD_MIN_LENGTH="12"), None),
    ("HY002", {"gate": {"public": {"headers": {"Authorization": "Bearer abc.def.ghi"}}}}, None,
     {"gate": {"public": {"bearer_env": "GATE_TOKEN"}}}, None),
    ("HY003", env(GCP_PROJECT_ID="${PROJECT_ID}"), None, env(GCP_PROJECT_ID="netra-staging"), None),
]  # fmt: skip


def codes(patch: dict[str, Any], live: Observed | None) -> list[str]:
    return [f.code for f in run_rules(config(patch), live)]


def test_the_base_config_is_clean() -> None:
    assert run_rules(config()) == []


@pytest.mark.parametrize(("code", "patch", "live", "clean", "clean_live"), CASES, ids=[c[0] for c in CASES])
def test_rule_triggers(code: str, patch: dict[str, Any], live: Observed | None, clean: Any, clean_live: Any) -> None:
    found = [f for f in run_rules(config(patch), live) if f.code == code]
    assert found, f"{code} did not fire"
    rule = next(r for r in rules() if r.code == code)
    for f in found:
        assert f.severity == rule.severity and f.doc_url.startswith("https://cloud.google.com/")
        assert f.message and f.fix and f.resource and f.field


@pytest.mark.parametrize(("code", "patch", "live", "clean", "clean_live"), CASES, ids=[c[0] for c in CASES])
def test_rule_stays_quiet(code: str, patch: Any, live: Any, clean: dict[str, Any], clean_live: Observed | None) -> None:
    assert code not in codes(clean, clean_live)


def test_every_registered_rule_has_cases() -> None:
    assert {r.code for r in rules()} == {c[0] for c in CASES}


def test_codes_are_stable_and_unique() -> None:
    all_codes = [r.code for r in rules()]
    assert len(all_codes) == len(set(all_codes))
    assert all(c[:2] in ("CR", "LB", "AR", "HY") and c[2:].isdigit() and len(c) == 5 for c in all_codes)


def test_live_rules_are_skipped_offline() -> None:
    offline = codes({"service": {"env": {"A": "1"}}}, None)
    assert "CR010" not in offline and "LB010" not in offline
    live_only = {r.code for r in rules() if r.needs_live}
    assert live_only == {"CR010", "LB010", "LB011", "AR009"}


def test_acknowledged_env_removal_is_info() -> None:
    found = run_rules(config(env(A="1")), revision_env("A", "B"), acknowledge=["CR010"])
    cr010 = next(f for f in found if f.code == "CR010")
    assert cr010.severity is Severity.INFO and cr010.message.startswith("(acknowledged)")
    assert "B" in cr010.message


def test_findings_carry_the_config_line_and_sort_errors_first() -> None:
    text_config = config(merge(svc(timeout=86400, min_instances=0), lb(timeout_sec=1)))
    found = run_rules(text_config)
    assert [f.severity for f in found] == sorted((f.severity for f in found), key=lambda s: s.rank)
    assert all(f.line is None for f in found)  # built from data: there is no file


def test_secret_values_are_never_printed_in_full() -> None:
    secret = "s3cr3t-hunter2-value-0042"
    found = run_rules(config(env(DB_PASSWORD=secret, DATABASE_URL=f"postgresql://app:{secret}@db/x")))
    hy = [f for f in found if f.code == "HY002"]
    assert len(hy) == 2
    for f in hy:
        text = " ".join(str(v) for v in f.to_dict().values())
        assert secret not in text
        assert "chars)" in f.message


@pytest.mark.parametrize("value", ["a", "12345678", "x" * 7, "a-much-longer-secret-value"])
def test_mask_shows_at_most_a_quarter(value: str) -> None:
    shown = mask(value)
    assert value not in shown or len(value) < 2
    visible = shown.split("…")[0] if "…" in shown else ""
    assert len(visible) <= len(value) // 4


def test_seed_allow_rule_message_proposes_a_throttle_keyed_on_ip() -> None:
    f = next(f for f in run_rules(config(armor(WS_ALLOW, ALL_THROTTLE))) if f.code == "AR005")
    assert "throttle" in f.fix and "enforce_on_key: IP" in f.fix and "has(request.headers['upgrade'])" in f.fix
    assert "1000 (throttle)" in f.message


def test_finding_to_dict_shape() -> None:
    f = Finding("CR001", Severity.ERROR, "service/x", "service.timeout", "m", "fix", "https://cloud.google.com/x", 4)
    assert f.to_dict() == {
        "code": "CR001",
        "severity": "error",
        "resource": "service/x",
        "field": "service.timeout",
        "line": 4,
        "message": "m",
        "fix": "fix",
        "doc_url": "https://cloud.google.com/x",
    }


def test_public_gate_off_the_lb_says_why_for_the_ingress_it_has() -> None:
    restricted = next(f for f in run_rules(config({"gate": {"public": {"url": DELETE}}})) if f.code == "CR024")
    assert "not reachable from outside" in restricted.message and "Cloud Armor" in restricted.message
    assert restricted.fix == "gate.public.url: wss://<the load balancer's host>/ws"
    open_to_all = {**svc(ingress="all"), "gate": {"public": {"url": DELETE, "path": "chat"}}, "armor": DELETE}
    found = next(f for f in run_rules(config(open_to_all)) if f.code == "CR024")
    assert "not reachable" not in found.message and "Cloud Armor" not in found.message
    assert found.fix.endswith("/chat") and found.field == "gate.public.url"
