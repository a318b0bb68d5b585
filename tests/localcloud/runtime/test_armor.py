"""Cloud Armor decisions and rate counters, pure (no sockets, an injected clock)."""

from __future__ import annotations

from deployer.localcloud.runtime import armor


def compile_expr(source: str) -> armor.Matcher:
    """A stand-in language for these tests: ``path:/x`` (prefix), ``header:name``, ``boom`` (raises)."""
    kind, _, arg = source.partition(":")
    if kind == "path":
        return lambda r: r.path.startswith(arg)
    if kind == "header":
        return lambda r: arg in r.headers
    if kind == "true":
        return lambda r: True

    def boom(_r: armor.RequestInfo) -> bool:
        raise KeyError("no such key in map: 'x-missing'")

    return boom


def rule(priority, action, expr="true", **extra):
    return {"priority": priority, "action": action, "match": {"expr": {"expression": expr}}, **extra}


DEFAULT_ALLOW = rule(2147483647, "allow")


def req(path="/ws", ip="127.0.0.1", headers=None):
    return armor.RequestInfo(path=path, method="GET", headers=headers or {}, origin_ip=ip)


def decide(policy, request, counters=None, now=0.0, scope="bs"):
    return armor.decide(
        policy, request, compile_expr=compile_expr, counters=counters or armor.RateCounters(), now=now, scope=scope
    )


def test_the_lowest_priority_number_that_matches_decides():
    policy = {"rules": [DEFAULT_ALLOW, rule(200, "allow", "path:/ws"), rule(100, "deny(404)", "path:/ws/admin")]}
    d = decide(policy, req("/ws/admin"))
    assert (d.outcome, d.priority, d.status) == ("deny(404)", 100, 404)
    d = decide(policy, req("/ws/room"))
    assert (d.outcome, d.priority) == ("allow", 200)
    d = decide(policy, req("/other"))
    assert (d.outcome, d.priority) == ("allow", 2147483647)


def test_preview_rules_are_recorded_not_enforced():
    policy = {"rules": [rule(10, "deny(403)", "path:/ws", preview=True), rule(20, "allow", "path:/ws"), DEFAULT_ALLOW]}
    d = decide(policy, req("/ws"))
    assert d.allowed and d.priority == 20
    assert d.preview == (armor.PreviewHit(10, "deny(403)", "deny(403)"),)
    assert d.as_log()["preview"] == [{"priority": 10, "action": "deny(403)", "outcome": "deny(403)"}]


def test_deny_statuses_and_bare_deny():
    for status in (403, 404, 429, 502):
        d = decide({"rules": [rule(1, f"deny({status})")]}, req())
        assert d.status == status and not d.allowed
    assert decide({"rules": [rule(1, "deny")]}, req()).status == 403


def test_src_ips_v1_ranges():
    src_rule = {
        "priority": 5,
        "action": "deny(403)",
        "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["10.0.0.0/8", "127.0.0.2/32"]}},
    }
    policy = {"rules": [src_rule, DEFAULT_ALLOW]}
    assert decide(policy, req(ip="127.0.0.2")).priority == 5
    assert decide(policy, req(ip="10.1.2.3")).priority == 5
    assert decide(policy, req(ip="127.0.0.1")).priority == 2147483647


def test_an_expression_that_errors_does_not_match_and_is_reported():
    d = decide({"rules": [rule(1, "deny(403)", "boom"), DEFAULT_ALLOW]}, req())
    assert d.allowed and d.priority == 2147483647
    assert "x-missing" in d.errors[0]


def test_no_policy_allows():
    assert decide(None, req()).allowed


def throttle(count=2, interval=10, key="IP", key_name=None, exceed="deny(429)"):
    opts = {
        "conformAction": "allow",
        "exceedAction": exceed,
        "enforceOnKey": key,
        "rateLimitThreshold": {"count": count, "intervalSec": interval},
    }
    if key_name:
        opts["enforceOnKeyName"] = key_name
    return {"rules": [rule(100, "throttle", rateLimitOptions=opts), DEFAULT_ALLOW]}


def test_throttle_allows_the_threshold_per_interval_then_denies_per_key():
    policy, counters = throttle(), armor.RateCounters()
    outcomes = [decide(policy, req(ip="127.0.0.1"), counters, now=t).outcome for t in (0, 1, 2)]
    assert outcomes == ["allow", "allow", "deny(429)"]
    assert decide(policy, req(ip="127.0.0.2"), counters, now=3).allowed  # another key
    assert decide(policy, req(ip="127.0.0.1"), counters, now=9.9).outcome == "deny(429)"
    d = decide(policy, req(ip="127.0.0.1"), counters, now=10.0)  # a new window
    assert d.allowed and d.rate_state == "conform" and d.rate_key == "IP:127.0.0.1"


def test_throttle_counters_are_per_backend_service():
    policy, counters = throttle(count=1), armor.RateCounters()
    assert decide(policy, req(), counters, scope="a").allowed
    assert decide(policy, req(), counters, scope="b").allowed
    assert not decide(policy, req(), counters, scope="a").allowed


def test_keys_fall_back_as_google_documents():
    r = req(headers={"x-user": "alice", "x-forwarded-for": "203.0.113.9, 10.0.0.1"})
    by_header = {"enforceOnKey": "HTTP_HEADER", "enforceOnKeyName": "X-User"}
    assert armor.rate_key(by_header, r) == "HTTP_HEADER:x-user:alice"
    assert armor.rate_key({"enforceOnKey": "HTTP_HEADER", "enforceOnKeyName": "X-None"}, r) == "ALL"
    assert armor.rate_key({"enforceOnKey": "XFF_IP"}, r) == "XFF_IP:203.0.113.9"
    assert armor.rate_key({"enforceOnKey": "XFF_IP"}, req(headers={"x-forwarded-for": "junk"})) == "IP:127.0.0.1"
    assert armor.rate_key({"enforceOnKey": "HTTP_PATH"}, req("/" + "a" * 300)) == "HTTP_PATH:/" + "a" * 127
    assert armor.rate_key({}, r) == "ALL"
    assert armor.rate_key({"enforceOnKey": "SNI"}, r) == "ALL"  # plain HTTP has no SNI
    configs = [{"enforceOnKeyType": "IP"}, {"enforceOnKeyType": "HTTP_PATH"}]
    assert armor.rate_key({"enforceOnKeyConfigs": configs}, r) == "IP:127.0.0.1|HTTP_PATH:/ws"


def ban_policy(count=2, interval=10, duration=60, ban_threshold=None):
    opts = {
        "conformAction": "allow",
        "exceedAction": "deny(403)",
        "enforceOnKey": "IP",
        "rateLimitThreshold": {"count": count, "intervalSec": interval},
        "banDurationSec": duration,
    }
    if ban_threshold:
        opts["banThreshold"] = ban_threshold
    return {"rules": [rule(300, "rate_based_ban", rateLimitOptions=opts), DEFAULT_ALLOW]}


def test_rate_based_ban_keeps_denying_for_the_ban_duration():
    policy, counters = ban_policy(), armor.RateCounters()
    assert [decide(policy, req(), counters, now=t).outcome for t in (0, 1, 2)] == ["allow", "allow", "deny(403)"]
    # A throttle would allow again in the next window; a ban does not.
    d = decide(policy, req(), counters, now=20)
    assert d.outcome == "deny(403)" and d.rate_state == "banned"
    assert decide(policy, req(ip="127.0.0.9"), counters, now=20).allowed
    assert decide(policy, req(), counters, now=62.1).allowed  # 60 s after the last excess


def test_rate_based_ban_with_a_ban_threshold_throttles_first():
    policy = ban_policy(count=1, ban_threshold={"count": 2, "intervalSec": 10})
    counters = armor.RateCounters()
    states = [decide(policy, req(), counters, now=t).rate_state for t in (0, 1, 2, 3)]
    assert states == ["conform", "exceed", "exceed", "banned"]
    assert decide(policy, req(), counters, now=30).rate_state == "banned"
    assert decide(policy, req(), counters, now=64).allowed


def test_a_preview_rate_rule_counts_but_does_not_enforce():
    policy = throttle(count=1)
    policy["rules"][0]["preview"] = True
    counters = armor.RateCounters()
    first, second = (decide(policy, req(), counters, now=t) for t in (0, 1))
    assert first.allowed and second.allowed
    assert second.preview[0].outcome == "deny(429)"


def test_deny_page_is_cloud_armors():
    assert armor.deny_body(403).endswith("<title>403</title>403 Forbidden")
    assert "429 Too Many Requests" in armor.deny_body(429)
