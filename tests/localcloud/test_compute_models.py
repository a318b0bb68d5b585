"""The Compute models without HTTP: preconditions as properties, merge patch, header rules, seeding,
resolve, and the state layout the load balancer reads."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deployer.localcloud.api.common import ApiError
from deployer.localcloud.api.compute.models import State, install
from deployer.localcloud.api.compute.rules import check_custom_request_headers, merge_patch
from deployer.localcloud.world import World
from tests.localcloud.compute_support import BS_URL, NEG_URL, PROJECT, SP_URL, WORLD


def fresh_state(seed: int = 3) -> State:
    world = World(seed=seed)
    state = install(world)
    state.seed(copy.deepcopy(WORLD))
    return state


STATE = fresh_state()


# ---- fingerprint preconditions (§5.1, §3.6) ----------------------------------------------------
@settings(max_examples=60)
@given(st.one_of(st.none(), st.text(max_size=16)), st.booleans())
def test_a_change_applies_iff_the_supplied_fingerprint_is_current(supplied, use_current):
    state = STATE
    current = state.backend_services[(PROJECT, "plain-bs")]["fingerprint"]
    fingerprint = current if use_current else supplied
    body = {"description": "d"} if fingerprint is None else {"description": "d", "fingerprint": fingerprint}
    if fingerprint == current:
        state.patch_backend_service(PROJECT, "plain-bs", body)
        after = state.backend_services[(PROJECT, "plain-bs")]["fingerprint"]
        assert after != current  # and it moved: the old one is stale now
    else:
        with pytest.raises(ApiError) as info:
            state.patch_backend_service(PROJECT, "plain-bs", body)
        assert (info.value.status, info.value.reason) == (412, "conditionNotMet")
        assert state.backend_services[(PROJECT, "plain-bs")]["fingerprint"] == current


@settings(max_examples=30)
@given(st.sampled_from(["policy", "url_map", "update"]), st.text(max_size=12))
def test_every_guarded_resource_refuses_a_stale_fingerprint(kind, stale):
    state = STATE
    if kind == "policy":
        current = state.security_policies[(PROJECT, "chat-armor")]["fingerprint"]
        call = lambda fp: state.patch_security_policy(PROJECT, "chat-armor", {"description": "x", "fingerprint": fp})  # noqa: E731
    elif kind == "url_map":
        current = state.url_maps[(PROJECT, "chat-lb")]["fingerprint"]
        call = lambda fp: state.patch_url_map(PROJECT, "chat-lb", {"description": "x", "fingerprint": fp})  # noqa: E731
    else:
        current = state.backend_services[(PROJECT, "plain-bs")]["fingerprint"]
        call = lambda fp: state.update_backend_service(PROJECT, "plain-bs", {"name": "plain-bs", "fingerprint": fp})  # noqa: E731
    if stale == current:
        return
    with pytest.raises(ApiError) as info:
        call(stale)
    assert info.value.status == 412
    call(current)  # the current one is accepted


def test_rule_edits_change_the_policy_fingerprint_without_needing_one():
    state = fresh_state()
    before = state.security_policies[(PROJECT, "chat-armor")]["fingerprint"]
    rule = {
        "priority": 5,
        "action": "allow",
        "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["*"]}},
    }
    state.add_rule(PROJECT, "chat-armor", rule)
    middle = state.security_policies[(PROJECT, "chat-armor")]["fingerprint"]
    state.remove_rule(PROJECT, "chat-armor", 5)
    assert len({before, middle, state.security_policies[(PROJECT, "chat-armor")]["fingerprint"]}) == 3


# ---- requestId ---------------------------------------------------------------------------------
def test_request_ids_are_remembered_per_project():
    state = fresh_state()
    rid = "0b7c1f52-2f4e-4d8a-9e1b-5c6d7e8f9a0b"
    fp = state.backend_services[(PROJECT, "plain-bs")]["fingerprint"]
    first = state.patch_backend_service(PROJECT, "plain-bs", {"description": "a", "fingerprint": fp}, request_id=rid)
    again = state.patch_backend_service(PROJECT, "plain-bs", {"description": "b", "fingerprint": fp}, request_id=rid)
    assert again["name"] == first["name"]
    assert state.backend_services[(PROJECT, "plain-bs")]["description"] == "a"
    # another project's identical id is another request
    with pytest.raises(ApiError) as info:
        state.patch_backend_service("other", "plain-bs", {"fingerprint": fp}, request_id=rid)
    assert info.value.status == 404


def test_reset_forgets_everything():
    state = fresh_state()
    state.reset()
    assert (state.backend_services, state.security_policies, state.url_maps, state.negs, state.operations) == (
        {},
        {},
        {},
        {},
        {},
    )


# ---- merge patch -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("target", "patch", "result"),
    [
        ({"a": 1, "b": 2}, {"b": 3}, {"a": 1, "b": 3}),
        ({"a": {"x": 1, "y": 2}}, {"a": {"y": 3}}, {"a": {"x": 1, "y": 3}}),
        ({"a": [1, 2, 3]}, {"a": [4]}, {"a": [4]}),  # lists replace wholesale (clientlibs.md §4)
        ({"a": 1, "b": 2}, {"b": None}, {"a": 1}),  # null deletes
        ({"a": {"x": 1}}, {"a": {"x": None}}, {"a": {}}),
        ({"a": 1}, {"a": {"x": 1}}, {"a": {"x": 1}}),
    ],
)
def test_merge_patch_is_rfc7396(target, patch, result):
    assert merge_patch(copy.deepcopy(target), patch) == result


# ---- custom request headers (§2.5) -------------------------------------------------------------
@given(st.lists(st.from_regex(r"X-[A-Za-z0-9]{1,10}", fullmatch=True), max_size=16, unique_by=str.lower))
def test_distinct_ordinary_headers_up_to_sixteen_are_accepted(names):
    check_custom_request_headers([f"{n}: v" for n in names])


@given(st.sampled_from(["Connection", "Upgrade", "Keep-Alive", "TE", "Trailer", "Transfer-Encoding"]), st.booleans())
def test_hop_by_hop_names_are_refused_in_any_case(name, upper):
    with pytest.raises(ApiError) as info:
        check_custom_request_headers([f"{name.upper() if upper else name.lower()}: x"])
    assert info.value.status == 400 and "hop-by-hop" in info.value.message


def test_the_8kb_limit_counts_names_and_values():
    value = "v" * (8 * 1024 - len("X-A"))
    check_custom_request_headers([f"X-A: {value}"])
    with pytest.raises(ApiError):
        check_custom_request_headers([f"X-A: {value}v"])


# ---- seeding and resolve -----------------------------------------------------------------------
def test_seed_resolves_short_names_to_full_urls_and_attaches_the_policy():
    doc = copy.deepcopy(WORLD)
    doc["backendServices"][0]["securityPolicy"] = "chat-armor"
    state = install(World(seed=1))
    state.seed(doc)
    bs = state.backend_services[(PROJECT, "chat-bs")]
    assert bs["backends"] == [{"group": NEG_URL}]
    assert bs["securityPolicy"] == SP_URL
    assert state.url_maps[(PROJECT, "chat-lb")]["defaultService"] == BS_URL
    assert state.negs[(PROJECT, "us-central1", "chat-neg")]["region"].endswith("/regions/us-central1")
    assert [r["priority"] for r in state.security_policies[(PROJECT, "chat-armor")]["rules"]] == [2147483647]


def test_seed_goes_through_the_same_rules_as_the_api():
    state = install(World(seed=1))
    doc = copy.deepcopy(WORLD)
    doc["backendServices"][0]["timeoutSec"] = 86400  # the seed's proposal, refused by Google (§2.1)
    with pytest.raises(ApiError) as info:
        state.seed(doc)
    assert "Timeout sec is not supported" in info.value.message
    with pytest.raises(ApiError):
        install(World()).seed({"backendServices": "not-a-list"})
    with pytest.raises(ApiError):
        install(World()).seed({"urlMaps": [{"name": "m", "defaultService": "missing-bs"}]})


def test_seeded_operations_ignore_faults_and_durations():
    world = World(seed=1)
    world.faults.operation_seconds["compute"] = 100
    from deployer.localcloud.world import FaultRule

    world.faults.add(FaultRule(method="compute.backendServices.insert", status=500, kind="operation"))
    state = install(world)
    state.seed(copy.deepcopy(WORLD))
    assert (PROJECT, "chat-bs") in state.backend_services
    assert world.faults.rules  # not consumed by seeding
    assert all(op.done(world.clock()) for op in state.operations.values())


def found(state: State, url_or_name: str, kind: str | None = None) -> dict[str, Any]:
    """``state.resolve`` for a reference the test expects to resolve."""
    resource = state.resolve(url_or_name, kind=kind)
    assert resource is not None, url_or_name
    return resource


def test_resolve_full_partial_and_short_names():
    state = STATE
    assert found(state, BS_URL)["name"] == "chat-bs"
    assert found(state, f"projects/{PROJECT}/global/backendServices/chat-bs")["name"] == "chat-bs"
    assert found(state, NEG_URL)["networkEndpointType"] == "SERVERLESS"
    assert found(state, "chat-neg")["selfLink"] == NEG_URL
    assert found(state, "chat-armor", kind="securityPolicies")["selfLink"] == SP_URL
    assert state.resolve("missing") is None
    assert state.resolve(BS_URL.replace("chat-bs", "missing")) is None
    assert (
        state.resolve(
            f"https://www.googleapis.com/compute/v1/projects/{PROJECT}/regions/us-central1/backendServices/chat-bs"
        )
        is None
    )


def test_get_renders_copies_so_callers_cannot_change_the_state():
    state = fresh_state()
    got = state.get_backend_service(PROJECT, "chat-bs")
    got["description"] = "mutated"
    assert state.backend_services[(PROJECT, "chat-bs")]["description"] == ""
