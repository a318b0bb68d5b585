"""The Cloud Armor rules language: parsing, Cloud Armor's counting, has() lint, evaluation."""

from __future__ import annotations

import celpy
import pytest
from hypothesis import given
from hypothesis import strategies as st

from deployer import facts
from deployer.cloudarmor import ExpressionError, RequestAttributes, parse, validate

SEED = "request.path.matches('/ws.*') && request.headers['upgrade'].lower().contains('websocket')"
# gcp-facts §3.4 "Recommended WebSocket match".
RECOMMENDED = (
    "has(request.headers['upgrade']) && request.headers['upgrade'].lower().contains('websocket') "
    "&& request.path.matches('^/ws')"
)


def req(path: str = "/", method: str = "GET", headers: dict[str, str] | None = None, **kw) -> RequestAttributes:
    return RequestAttributes(path=path, method=method, headers=headers or {}, **kw)


# ---- syntax and names --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("request.path ==", "ends too early"),
        ("request.path == 'a' &&& true", "unexpected character '&'"),
        ("request.path.matches('/ws'", "ends too early"),
        ("request.path == 'a' request.method", "unexpected"),
    ],
)
def test_syntax_errors_are_expression_errors_with_googles_prefix(source, fragment):
    with pytest.raises(ExpressionError) as info:
        parse(source)
    assert info.value.message.startswith("Error parsing Cloud Armor rule matcher expression: ")
    assert fragment in info.value.message
    assert isinstance(info.value, ValueError)


def test_syntax_error_position_points_into_the_source():
    source = "request.path == 'a' &&& true"
    with pytest.raises(ExpressionError) as info:
        parse(source)
    assert info.value.position == source.index("&&&") + 2


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("request.body == 'x'", "Unknown attribute 'request.body'"),
        ("origin.country == 'AU'", "Unknown attribute 'origin.country'"),
        ("foo == 1", "Undeclared reference to 'foo'"),
        ("request == 1", "'request' is not an attribute by itself"),
        ("request.path.startswith('/a')", "Unknown function 'startswith'. Did you mean 'startsWith'?"),
        ("request.path.trim() == 'a'", "Unknown function 'trim'"),
        ("inRange(origin.ip, '1.2.3.0/24')", "Unknown function 'inRange'"),
        ("request.path.contains()", "contains() takes 1 argument(s), got 0"),
        ("inIpRange(origin.ip)", "inIpRange() takes 2 argument(s), got 1"),
        ("has(request)", "has() needs a map lookup or a field"),
        ("inIpRange(origin.ip, '1.2.3.0/33')", "Invalid IP range '1.2.3.0/33'"),
        ("request.path.matches('(')", "Invalid regular expression: (, missing )"),
        # A real Google 400 (kubernetes/k8s.io#6979): capture groups are refused.
        ("request.path.matches('^/v2/(blobs|tags)/')", "Capture Groups are not allowed."),
        ("request.path.lower()", "is not a condition"),
        ("request.headers['host']", "is not a condition"),
        ("size(request.path)", "is not a condition"),
        ("request.path.lower() && true", "'request.path.lower()' is not a condition"),
        ("request.path.map(x, x)", "Unknown function 'map'"),
    ],
)
def test_unknown_names_and_bad_arguments_are_refused(source, fragment):
    with pytest.raises(ExpressionError) as info:
        parse(source)
    assert fragment in info.value.message


@pytest.mark.parametrize(
    "source",
    [
        SEED,
        RECOMMENDED,
        # Google's own examples (rules-language-reference).
        "inIpRange(origin.ip, '2001:db8::/32')",
        "request.headers['host'].lower().endsWith('.example.com')",
        "request.headers['host'].matches('(?i:(?:sub\\\\.)?test\\\\.example\\\\.com)')",
        "origin.region_code == \"AU\" && inIpRange(origin.ip, '1.2.3.0/24')",
        "origin.asn == 123",
        'int(request.headers["content-length"]) == 0',
        "size(request.headers['x-data']) >= 1024",
        "has(request.headers['user-id']) && request.headers['user-id'].base64Decode().contains('myValue')",
        "has(request.headers['cookie']) && request.headers['cookie'].urlDecodeUni() == 'Match+Value'",
        "evaluatePreconfiguredWaf('xss-v422-stable', {'opt_out_rule_ids': ['owasp-crs-v042200-id941100-xss']})",
        "evaluatePreconfiguredExpr('sqli-v33-canary')",
        "evaluateThreatIntelligence('iplist-known-malicious-ips', ['203.0.113.0/24'])",
        "token.recaptcha_action.score <= 0.5 && request.path == '/login'",
        "token.recaptcha_exemption.valid",
        "request.method in ['GET', 'HEAD']",
        'R"fo\'o" == request.query',
    ],
)
def test_real_world_expressions_parse(source):
    assert parse(source).source == source


def test_parse_returns_a_reusable_value():
    first, second = parse(SEED), parse(SEED)
    assert first == second and hash(first) == hash(second)
    assert first.evaluate(req("/ws", headers={"upgrade": "websocket"}))
    assert first.evaluate(req("/ws", headers={"upgrade": "websocket"}))


# ---- counting ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("source", "count"),
    [
        (SEED, 2),
        (RECOMMENDED, 3),
        ("inIpRange(origin.ip, '9.9.9.0/24')", 1),
        ("!inIpRange(origin.ip, '9.9.9.0/24')", 1),
        ("!(request.path == '/a' || request.path == '/b')", 2),
        ("(request.path == '/a' || request.path == '/b') && request.method == 'GET'", 3),
        ("request.headers['host'].lower().contains('a') || request.headers['host'].lower().contains('b')", 2),
        ("request.method == 'GET' ? request.path == '/a' : request.path == '/b'", 3),
        ("size(request.path) + 1 > 10", 1),
    ],
)
def test_subexpressions_count_atomic_conditions(source, count):
    assert parse(source).subexpressions() == count


@given(st.lists(st.sampled_from(["&&", "||"]), min_size=0, max_size=9), st.booleans())
def test_subexpressions_of_any_chain_is_its_length(ops, negate):
    leaves = [f"request.path == '/p{i}'" for i in range(len(ops) + 1)]
    source = leaves[0]
    for op, leaf in zip(ops, leaves[1:], strict=True):
        source = f"{source} {op} {'!' if negate else ''}({leaf})"
    assert parse(source).subexpressions() == len(leaves)


def test_validate_enforces_the_five_subexpression_limit():
    five = " && ".join(f"request.path != '/p{i}'" for i in range(5))
    assert validate(five).subexpressions() == facts.ARMOR_MAX_SUBEXPRESSIONS
    with pytest.raises(ExpressionError) as info:
        validate(five + " || request.method == 'POST'")
    assert "6 subexpressions" in info.value.message
    assert "at most 5" in info.value.message
    assert parse(five + " || request.method == 'POST'").subexpressions() == 6  # parse alone does not limit


# ---- has() lint --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("source", "unguarded"),
    [
        (SEED, ["upgrade"]),
        (RECOMMENDED, []),
        ("request.headers['a'] == '1' && has(request.headers['a'])", ["a"]),  # guard must come first
        ("has(request.headers['a']) && request.headers['b'] == '1'", ["b"]),  # guards only its own key
        ("has(request.headers['a']) || request.headers['a'] == '1'", ["a"]),  # || does not guard
        ("!has(request.headers['a']) && request.headers['a'] == '1'", ["a"]),  # a negated has() does not guard
        ("(has(request.headers['a']) && has(request.headers['b'])) && request.headers['b'] == 'x'", []),
        ("has(request.headers['a']) && (request.headers['a'] == '1' || request.headers['a'] == '2')", []),
        ("has(request.headers['a']) ? request.headers['a'] == '1' : request.headers['a'] == '2'", ["a"]),
        ("request.headers['a'] == '1' || request.headers['a'] == '2'", ["a"]),
        ("inIpRange(origin.ip, '1.2.3.4/32')", []),
    ],
)
def test_header_lookups_without_has(source, unguarded):
    assert parse(source).header_lookups_without_has() == unguarded


# ---- evaluation --------------------------------------------------------------------------------
def test_seed_expression_matches_a_websocket_upgrade():
    expr = parse(SEED)
    assert expr.evaluate(req("/ws/chat", headers={"upgrade": "WebSocket", "connection": "Upgrade"}))
    assert not expr.evaluate(req("/api", headers={"upgrade": "websocket"}))
    assert not expr.evaluate(req("/ws", headers={"upgrade": "h2c"}))


def test_a_missing_header_is_an_error_and_therefore_no_match():
    assert not parse(SEED).evaluate(req("/ws/chat"))
    assert not parse("request.headers['upgrade'] != 'websocket'").evaluate(req("/ws"))
    assert not parse("!(request.headers['x'] == 'a')").evaluate(req("/"))


def test_has_guard_and_or_absorb_the_error_as_cel_does():
    assert not parse(RECOMMENDED).evaluate(req("/ws"))
    assert parse("!has(request.headers['x-key'])").evaluate(req("/"))
    assert parse("request.headers['x'] == 'a' || request.path == '/'").evaluate(req("/"))
    assert not parse("request.headers['x'] == 'a' && request.path == '/'").evaluate(req("/"))


def test_matches_is_an_re2_partial_match():
    assert parse("request.path.matches('ws')").evaluate(req("/api/ws/x"))
    assert not parse("request.path.matches('^ws')").evaluate(req("/api/ws/x"))
    assert parse("request.path.matches('^/ws(?:/|$)')").evaluate(req("/ws"))
    assert not parse("request.path.matches('^/ws(?:/|$)')").evaluate(req("/wsx"))
    assert parse("request.headers['user-agent'].matches('(?i:wordpress)')").evaluate(
        req("/", headers={"user-agent": "WordPress/6.1"})
    )


def test_matches_is_latin1_one_byte_per_character():
    # RE2::Latin1 "disables Unicode features": é is two bytes on the wire, so one '.' cannot match it.
    assert not parse("request.path.matches('^/caf.$')").evaluate(req("/café"))
    assert parse("request.path.matches('^/caf..$')").evaluate(req("/café"))


def test_in_ip_range_v4_and_v6():
    expr = parse("inIpRange(origin.ip, '198.51.100.0/24') || inIpRange(origin.ip, '2001:db8::/32')")
    assert expr.evaluate(req(origin_ip="198.51.100.7"))
    assert not expr.evaluate(req(origin_ip="198.51.101.7"))
    assert expr.evaluate(req(origin_ip="2001:db8::1"))
    assert not expr.evaluate(req(origin_ip="2001:db9::1"))
    assert not expr.evaluate(req(origin_ip="not-an-ip"))


def test_other_attributes_and_string_functions():
    r = req(
        "/a%2Fb",
        method="POST",
        headers={"user-id": "bXlWYWx1ZQ", "cookie": "x=%3cscript"},
        query="q=1&r=2",
        scheme="HTTPS",
        region_code="AU",
    )
    assert parse("request.method == 'POST' && request.scheme == 'https'").evaluate(r)
    assert parse("request.query.contains('r=2') && origin.region_code == 'AU'").evaluate(r)
    assert parse("request.headers['user-id'].base64Decode() == 'myValue'").evaluate(r)
    assert parse("request.headers['cookie'].urlDecode().contains('<script')").evaluate(r)
    assert parse("request.path.upper().startsWith('/A%2F')").evaluate(r)
    assert parse("size(request.path) == 6 && request.path.size() == 6").evaluate(r)
    assert parse("origin.user_ip == origin.ip").evaluate(r)
    assert not parse("request.headers['cookie'].base64Decode() == 'x'").evaluate(r)  # invalid base64 -> ""


def test_preconfigured_waf_and_recaptcha_never_match_locally():
    assert not parse("evaluatePreconfiguredWaf('xss-v422-stable')").evaluate(req("/<script>"))
    assert not parse("token.recaptcha_action.score < 0.5").evaluate(req("/"))


def test_from_http_lowercases_names_and_joins_repeated_headers():
    r = RequestAttributes.from_http("GET", "/ws", [("Upgrade", "websocket"), ("X-A", "1"), ("x-a", "2")])
    assert dict(r.headers) == {"upgrade": "websocket", "x-a": "1,2"}
    assert parse("request.headers['x-a'] == '1,2'").evaluate(r)
    # keys are looked up lower-case even if a caller built the mapping by hand
    assert parse(SEED).evaluate(req("/ws", headers={"Upgrade": "websocket"}))


def test_the_shared_cel_parser_is_built_with_larks_grammar_cache() -> None:
    """The ~90 ms grammar analysis of an offline `check` is cached (bench/cli_startup.py measures it)."""
    from celpy.celparser import CELParser

    parse("request.path.matches('^/ws')")
    parser = CELParser.CEL_PARSER
    assert parser is not None and parser.options.cache is True
    assert parser.options.tree_class is celpy.InterpretedRunner.tree_node_class
