"""securityPolicies through the real client: policies, per-rule methods, and Cloud Armor's rules
(gcp-facts §3.1 priorities and the default rule, §3.2 rate limits, §3.4 expressions)."""

from __future__ import annotations

import pytest
from google.api_core import exceptions
from google.cloud import compute_v1

from deployer import facts
from tests.localcloud.compute_support import PROJECT, SP_URL, seed

DEFAULT = facts.ARMOR_DEFAULT_RULE_PRIORITY
RATE_LIMIT_MESSAGE = "Rate limit options must be specified"
SEED_EXPR = "request.path.matches('/ws.*') && request.headers['upgrade'].lower().contains('websocket')"


@pytest.fixture
def sp(localcloud, clients):
    seed(localcloud)
    return clients.security_policies()


def expr_rule(priority: int, expression: str, action: str = "deny(403)", **kw) -> compute_v1.SecurityPolicyRule:
    return compute_v1.SecurityPolicyRule(
        priority=priority,
        action=action,
        match=compute_v1.SecurityPolicyRuleMatcher(expr=compute_v1.Expr(expression=expression)),
        **kw,
    )


def ip_rule(priority: int, ranges: list[str], action: str = "allow", **kw) -> compute_v1.SecurityPolicyRule:
    return compute_v1.SecurityPolicyRule(
        priority=priority,
        action=action,
        match=compute_v1.SecurityPolicyRuleMatcher(
            versioned_expr="SRC_IPS_V1", config=compute_v1.SecurityPolicyRuleMatcherConfig(src_ip_ranges=ranges)
        ),
        **kw,
    )


def throttle(count: int = 100, interval: int = 60, **options) -> compute_v1.SecurityPolicyRuleRateLimitOptions:
    return compute_v1.SecurityPolicyRuleRateLimitOptions(
        conform_action=options.pop("conform_action", "allow"),
        exceed_action=options.pop("exceed_action", "deny(429)"),
        enforce_on_key=options.pop("enforce_on_key", "IP"),
        rate_limit_threshold=compute_v1.SecurityPolicyRuleRateLimitOptionsThreshold(count=count, interval_sec=interval),
        **options,
    )


def get_rule(sp, priority: int, policy: str = "chat-armor") -> compute_v1.SecurityPolicyRule:
    return sp.get_rule(
        request=compute_v1.GetRuleSecurityPolicyRequest(project=PROJECT, security_policy=policy, priority=priority)
    )


def add(sp, rule, policy: str = "chat-armor") -> None:
    sp.add_rule(project=PROJECT, security_policy=policy, security_policy_rule_resource=rule).result()


def priorities(sp, policy: str = "chat-armor") -> list[int]:
    return [r.priority for r in sp.get(project=PROJECT, security_policy=policy).rules]


# ---- policies ----------------------------------------------------------------------------------
def test_a_policy_created_without_rules_gets_an_allow_default_rule(sp):
    got = sp.get(project=PROJECT, security_policy="chat-armor")
    assert (got.kind, got.type_, got.self_link) == ("compute#securityPolicy", "CLOUD_ARMOR", SP_URL)
    assert got.fingerprint and got.label_fingerprint
    (rule,) = got.rules
    assert (rule.priority, rule.action, rule.preview, rule.kind) == (
        DEFAULT,
        "allow",
        False,
        "compute#securityPolicyRule",
    )
    assert list(rule.match.config.src_ip_ranges) == ["*"]


def test_insert_with_the_recorded_rules_then_get_renders_them_like_google(localcloud, clients):
    sp = clients.security_policies()
    # The create body of compute-securitypolicy-basic.http.log.
    policy = compute_v1.SecurityPolicy(
        name="recorded",
        rules=[
            ip_rule(DEFAULT, ["*"], action="deny(403)"),
            ip_rule(1000000000, ["16.0.0.0/4", "115.128.0.0/9", "62.48.212.0/24"], preview=True),
        ],
    )
    sp.insert(project=PROJECT, security_policy_resource=policy).result()
    got = sp.get(project=PROJECT, security_policy="recorded")
    assert [(r.priority, r.action, r.preview, r.description) for r in got.rules] == [
        (1000000000, "allow", True, ""),
        (DEFAULT, "deny(403)", False, ""),
    ]


def test_get_orders_rules_by_priority_as_text_as_the_recording_does(sp):
    for priority in (555, 111111111, 0):
        add(sp, ip_rule(priority, ["10.0.0.0/8"]))
    # compute-securitypolicy-basic.http.log lists 0, 111111111, 2147483647, 555.
    assert priorities(sp) == [0, 111111111, DEFAULT, 555]


def test_list_policies(sp):
    assert [p.name for p in sp.list(project=PROJECT)] == ["chat-armor"]


def test_get_a_missing_policy_is_404(sp):
    with pytest.raises(exceptions.NotFound) as info:
        sp.get(project=PROJECT, security_policy="nope")
    assert f"The resource 'projects/{PROJECT}/global/securityPolicies/nope' was not found" in info.value.message


def test_patch_needs_the_current_fingerprint(sp):
    current = sp.get(project=PROJECT, security_policy="chat-armor")
    change = compute_v1.SecurityPolicy(description="new", fingerprint=current.fingerprint)
    sp.patch(project=PROJECT, security_policy="chat-armor", security_policy_resource=change).result()
    after = sp.get(project=PROJECT, security_policy="chat-armor")
    assert after.description == "new"
    assert after.fingerprint != current.fingerprint
    with pytest.raises(exceptions.PreconditionFailed) as info:
        sp.patch(project=PROJECT, security_policy="chat-armor", security_policy_resource=change)
    assert "Supplied fingerprint does not match current metadata fingerprint." in info.value.message


def test_patch_with_rules_replaces_them_as_the_recording_shows(sp):
    current = sp.get(project=PROJECT, security_policy="chat-armor")
    change = compute_v1.SecurityPolicy(
        fingerprint=current.fingerprint,
        rules=[ip_rule(DEFAULT, ["*"]), ip_rule(555, ["63.0.0.0/8"]), ip_rule(0, ["4.5.4.0/24"], action="deny(403)")],
    )
    sp.patch(project=PROJECT, security_policy="chat-armor", security_policy_resource=change).result()
    assert sorted(priorities(sp)) == [0, 555, DEFAULT]


def test_patch_rules_without_the_default_rule_is_refused(sp):
    current = sp.get(project=PROJECT, security_policy="chat-armor")
    change = compute_v1.SecurityPolicy(fingerprint=current.fingerprint, rules=[ip_rule(10, ["1.2.3.4/32"])])
    with pytest.raises(exceptions.BadRequest) as info:
        sp.patch(project=PROJECT, security_policy="chat-armor", security_policy_resource=change)
    assert "default rule" in info.value.message


def test_insert_with_duplicate_priorities_is_refused(localcloud, clients):
    policy = compute_v1.SecurityPolicy(name="dup", rules=[ip_rule(10, ["1.1.1.1/32"]), ip_rule(10, ["2.2.2.2/32"])])
    with pytest.raises(exceptions.BadRequest) as info:
        clients.security_policies().insert(project=PROJECT, security_policy_resource=policy)
    assert "Invalid value for field 'resource.rules[1].priority': '10'" in info.value.message


def test_delete_a_policy_in_use_is_refused_then_allowed_after_detach(sp, clients):
    bs = clients.backend_services()
    ref = compute_v1.SecurityPolicyReference(security_policy=SP_URL)
    bs.set_security_policy(project=PROJECT, backend_service="chat-bs", security_policy_reference_resource=ref).result()
    with pytest.raises(exceptions.BadRequest) as info:
        sp.delete(project=PROJECT, security_policy="chat-armor")
    assert "is already being used by" in info.value.message
    detach = compute_v1.SecurityPolicyReference(security_policy="")
    bs.set_security_policy(
        project=PROJECT, backend_service="chat-bs", security_policy_reference_resource=detach
    ).result()
    sp.delete(project=PROJECT, security_policy="chat-armor").result()
    assert list(sp.list(project=PROJECT)) == []


# ---- per-rule methods (§3.6) -------------------------------------------------------------------
def test_add_get_patch_remove_a_rule(sp):
    before = sp.get(project=PROJECT, security_policy="chat-armor").fingerprint
    add(sp, expr_rule(1000, SEED_EXPR, action="allow", description="websockets"))
    rule = get_rule(sp, 1000)
    assert (rule.action, rule.description, rule.match.expr.expression) == ("allow", "websockets", SEED_EXPR)
    assert sp.get(project=PROJECT, security_policy="chat-armor").fingerprint != before  # every change mints one

    sp.patch_rule(
        request=compute_v1.PatchRuleSecurityPolicyRequest(
            project=PROJECT,
            security_policy="chat-armor",
            priority=1000,
            security_policy_rule_resource=compute_v1.SecurityPolicyRule(action="deny(404)", preview=True),
        )
    ).result()
    patched = get_rule(sp, 1000)
    assert (patched.action, patched.preview, patched.match.expr.expression) == ("deny(404)", True, SEED_EXPR)

    sp.remove_rule(
        request=compute_v1.RemoveRuleSecurityPolicyRequest(project=PROJECT, security_policy="chat-armor", priority=1000)
    ).result()
    assert priorities(sp) == [DEFAULT]


def test_patch_rule_update_mask_clears_fields_left_empty(sp):
    add(sp, ip_rule(10, ["1.2.3.4/32"], description="temporary"))
    sp.patch_rule(
        request=compute_v1.PatchRuleSecurityPolicyRequest(
            project=PROJECT,
            security_policy="chat-armor",
            priority=10,
            update_mask="description",
            security_policy_rule_resource=compute_v1.SecurityPolicyRule(),
        )
    ).result()
    assert get_rule(sp, 10).description == ""


def test_patch_rule_can_move_a_rule_to_a_free_priority(sp):
    add(sp, ip_rule(10, ["1.2.3.4/32"]))
    sp.patch_rule(
        request=compute_v1.PatchRuleSecurityPolicyRequest(
            project=PROJECT,
            security_policy="chat-armor",
            priority=10,
            security_policy_rule_resource=compute_v1.SecurityPolicyRule(priority=20),
        )
    ).result()
    assert sorted(priorities(sp)) == [20, DEFAULT]


def test_add_rule_at_an_existing_priority_is_400(sp):
    add(sp, ip_rule(10, ["1.2.3.4/32"]))
    with pytest.raises(exceptions.BadRequest) as info:
        add(sp, ip_rule(10, ["5.6.7.8/32"]))
    assert "Invalid value for field 'resource.priority': '10'" in info.value.message
    assert "already exists" in info.value.message


@pytest.mark.parametrize("method", ["get", "patch", "remove"])
def test_a_rule_that_does_not_exist_is_googles_400(sp, method):
    if method == "get":
        call = lambda: get_rule(sp, 77)  # noqa: E731
    elif method == "patch":
        call = lambda: sp.patch_rule(  # noqa: E731
            request=compute_v1.PatchRuleSecurityPolicyRequest(
                project=PROJECT,
                security_policy="chat-armor",
                priority=77,
                security_policy_rule_resource=compute_v1.SecurityPolicyRule(action="allow"),
            )
        )
    else:
        call = lambda: sp.remove_rule(  # noqa: E731
            request=compute_v1.RemoveRuleSecurityPolicyRequest(
                project=PROJECT, security_policy="chat-armor", priority=77
            )
        )
    with pytest.raises(exceptions.BadRequest) as info:
        call()
    # python-compute#173 (real): "Invalid value for field 'priority': '0'. <policy> does not contain a rule at …"
    assert "Invalid value for field 'priority': '77'. chat-armor does not contain a rule at priority 77." in (
        info.value.message
    )


def test_the_default_rule_cannot_be_removed_or_moved(sp):
    with pytest.raises(exceptions.BadRequest) as info:
        sp.remove_rule(
            request=compute_v1.RemoveRuleSecurityPolicyRequest(
                project=PROJECT, security_policy="chat-armor", priority=DEFAULT
            )
        )
    assert "The default rule cannot be removed." in info.value.message
    with pytest.raises(exceptions.BadRequest):
        sp.patch_rule(
            request=compute_v1.PatchRuleSecurityPolicyRequest(
                project=PROJECT,
                security_policy="chat-armor",
                priority=DEFAULT,
                security_policy_rule_resource=compute_v1.SecurityPolicyRule(priority=5),
            )
        )
    # …but its action can change (§3.1: set the default rule explicitly).
    sp.patch_rule(
        request=compute_v1.PatchRuleSecurityPolicyRequest(
            project=PROJECT,
            security_policy="chat-armor",
            priority=DEFAULT,
            security_policy_rule_resource=compute_v1.SecurityPolicyRule(action="deny(403)"),
        )
    ).result()
    assert get_rule(sp, DEFAULT).action == "deny(403)"


def test_validate_only_checks_without_applying(sp):
    sp.add_rule(
        request=compute_v1.AddRuleSecurityPolicyRequest(
            project=PROJECT,
            security_policy="chat-armor",
            validate_only=True,
            security_policy_rule_resource=ip_rule(10, ["1.2.3.4/32"]),
        )
    ).result()
    assert priorities(sp) == [DEFAULT]
    with pytest.raises(exceptions.BadRequest):
        sp.add_rule(
            request=compute_v1.AddRuleSecurityPolicyRequest(
                project=PROJECT,
                security_policy="chat-armor",
                validate_only=True,
                security_policy_rule_resource=ip_rule(10, ["not-an-ip"]),
            )
        )


# ---- rule validation ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rule", "fragment"),
    [
        (ip_rule(-1, ["*"]), "'resource.priority': '-1'. The priority must be between 0 and 2147483647."),
        (ip_rule(10, ["*"], action="deny(429)"), "'resource.action': 'deny(429)'"),
        (ip_rule(10, ["*"], action="deny(451)"), "'resource.action': 'deny(451)'"),
        (ip_rule(10, ["*"], action="block"), "Valid actions are allow, deny(403), deny(404), deny(502)"),
        (ip_rule(10, ["*"], action="fairshare"), "CLOUD_ARMOR_INTERNAL_SERVICE"),
        (ip_rule(10, ["300.1.1.1/32"]), "'resource.match.config.srcIpRanges[0]': '300.1.1.1/32'"),
        (compute_v1.SecurityPolicyRule(priority=10, action="allow"), "Required field 'resource.match' not specified"),
        (
            expr_rule(10, "request.path.matches('/ws.*' &&"),
            "Invalid value for field 'resource.match.expr': '{  \"expression\": \"request.path.matches(\\u0027/ws.*",
        ),
        (expr_rule(10, "request.path.startswith('/ws')"), "Did you mean 'startsWith'?"),
        (expr_rule(10, "request.path.matches('^/v2/(blobs|tags)/')"), "Capture Groups are not allowed."),
        (
            expr_rule(10, " || ".join(f"request.path == '/p{i}'" for i in range(6))),
            "The expression has 6 subexpressions",
        ),
        # §3.2 rate limits.
        (ip_rule(10, ["*"], action="throttle"), RATE_LIMIT_MESSAGE),
        (ip_rule(10, ["*"], action="allow", rate_limit_options=throttle()), RATE_LIMIT_MESSAGE),
        (ip_rule(10, ["*"], action="throttle", rate_limit_options=throttle(interval=45)), "intervalSec': '45'"),
        (ip_rule(10, ["*"], action="throttle", rate_limit_options=throttle(count=0)), "count': '0'"),
        (
            ip_rule(10, ["*"], action="rate_based_ban", rate_limit_options=throttle(count=20000, ban_duration_sec=600)),
            "count': '20000'",
        ),
        (ip_rule(10, ["*"], action="rate_based_ban", rate_limit_options=throttle()), "banDurationSec' not specified"),
        (
            ip_rule(10, ["*"], action="rate_based_ban", rate_limit_options=throttle(ban_duration_sec=61)),
            "banDurationSec': '61'",
        ),
        (
            ip_rule(10, ["*"], action="throttle", rate_limit_options=throttle(ban_duration_sec=600)),
            "Only a rate_based_ban",
        ),
        (
            ip_rule(10, ["*"], action="throttle", rate_limit_options=throttle(conform_action="deny(403)")),
            'Valid option is "allow" only.',
        ),
        (
            ip_rule(10, ["*"], action="throttle", rate_limit_options=throttle(exceed_action="deny(418)")),
            "exceedAction': 'deny(418)'",
        ),
        (
            ip_rule(10, ["*"], action="throttle", rate_limit_options=throttle(enforce_on_key="COUNTRY")),
            "enforceOnKey': 'COUNTRY'",
        ),
        (
            ip_rule(10, ["*"], action="throttle", rate_limit_options=throttle(enforce_on_key="HTTP_HEADER")),
            "enforceOnKeyName' not specified",
        ),
    ],
)
def test_rules_cloud_armor_refuses_are_400_with_the_field(sp, rule, fragment):
    with pytest.raises(exceptions.BadRequest) as info:
        add(sp, rule)
    assert fragment in info.value.message
    assert priorities(sp) == [DEFAULT]


def test_the_exact_rate_limit_message_google_sends(sp):
    with pytest.raises(exceptions.BadRequest) as info:
        add(sp, ip_rule(10, ["*"], action="throttle"))
    # pulumi/pulumi-gcp#1432, a real 400.
    assert info.value.message.endswith(
        "Invalid value for field 'resource.rateLimitOptions': ''. Rate limit options must be specified if the action "
        "is 'fairshare', 'rate_based_ban' or 'throttle'. It cannot be specified for any other actions"
    )


@pytest.mark.parametrize(
    "rule",
    [
        expr_rule(10, SEED_EXPR, action="allow"),
        expr_rule(
            11,
            "has(request.headers['upgrade']) && request.headers['upgrade'].lower().contains('websocket') "
            "&& request.path.matches('^/ws')",
            action="allow",
        ),
        ip_rule(12, ["*"], action="throttle", rate_limit_options=throttle(100, 60)),
        ip_rule(13, ["*"], action="rate_based_ban", rate_limit_options=throttle(10000, 3600, ban_duration_sec=3600)),
        ip_rule(14, ["2001:db8::/32", "9.9.9.9"], action="deny(502)"),
        expr_rule(
            15,
            "inIpRange(origin.ip, '1.2.3.0/24')",
            action="throttle",
            rate_limit_options=throttle(exceed_action="redirect"),
        ),
    ],
)
def test_rules_cloud_armor_accepts(sp, rule):
    add(sp, rule)
    assert rule.priority in priorities(sp)


def test_rate_based_ban_cannot_become_throttle_but_throttle_can_become_a_ban(sp):
    add(sp, ip_rule(10, ["*"], action="rate_based_ban", rate_limit_options=throttle(ban_duration_sec=600)))
    with pytest.raises(exceptions.BadRequest) as info:
        sp.patch_rule(
            request=compute_v1.PatchRuleSecurityPolicyRequest(
                project=PROJECT,
                security_policy="chat-armor",
                priority=10,
                security_policy_rule_resource=compute_v1.SecurityPolicyRule(
                    action="throttle", rate_limit_options=throttle()
                ),
            )
        )
    assert "cannot be changed to a throttle rule" in info.value.message
    add(sp, ip_rule(20, ["*"], action="throttle", rate_limit_options=throttle()))
    sp.patch_rule(
        request=compute_v1.PatchRuleSecurityPolicyRequest(
            project=PROJECT,
            security_policy="chat-armor",
            priority=20,
            security_policy_rule_resource=compute_v1.SecurityPolicyRule(
                action="rate_based_ban", rate_limit_options=throttle(ban_duration_sec=600)
            ),
        )
    ).result()
    assert get_rule(sp, 20).action == "rate_based_ban"


def test_the_state_keeps_rules_in_numeric_order_for_the_load_balancer(sp, localcloud):
    for priority in (555, 111111111, 0):
        add(sp, ip_rule(priority, ["10.0.0.0/8"]))
    stored = localcloud.world.apis["compute"].security_policies[(PROJECT, "chat-armor")]
    assert [r["priority"] for r in stored["rules"]] == [0, 555, 111111111, DEFAULT]
