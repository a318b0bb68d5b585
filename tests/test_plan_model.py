"""plan.py: the plan as a value — actions, changes, readable diffs, stale checks, JSON round trips."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from deployer.errors import PlanFileError
from deployer.plan import (
    ARMOR_RULE,
    BACKEND_SERVICE,
    RUN_SERVICE,
    Action,
    Change,
    FieldDiff,
    Moved,
    Plan,
    diff_fields,
)
from deployer.redact import SecretMask

NOW = datetime(2026, 11, 26, 14, 52, 1, tzinfo=UTC)
SVC = "projects/p/locations/us-central1/services/api"
BS = "projects/p/global/backendServices/api-bs"
SP = "projects/p/global/securityPolicies/api-armor"


def service(image: str, *, password: str = "hunter2", traffic: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "name": SVC,
        "template": {
            "containers": [
                {"image": image, "env": [{"name": "MODE", "value": "ws"}, {"name": "DB_PASSWORD", "value": password}]}
            ],
            "timeout": "3600s",
        },
        "traffic": traffic or [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 100}],
        "etag": '"e1"',
    }


def sample_plan() -> Plan:
    return Plan(
        service="api",
        created_at=NOW,
        config_digest="sha256:c0ffee",
        changes=(
            Change(
                kind=RUN_SERVICE,
                id=SVC,
                action=Action.UPDATE,
                before=service("img:1"),
                after=service("img:2", password="hunter3"),
                precondition='"e1"',
            ),
            Change(
                kind=BACKEND_SERVICE,
                id=BS,
                action=Action.NOOP,
                before={"name": "api-bs", "fingerprint": "f0"},
                after={"name": "api-bs", "fingerprint": "f0"},
                precondition="f0",
            ),
            Change(
                kind=ARMOR_RULE,
                id=f"{SP}/rules/1000",
                action=Action.CREATE,
                after={
                    "priority": 1000,
                    "action": "deny(403)",
                    "match": {"expr": {"expression": "origin.region_code == 'XX'"}},
                },
            ),
        ),
        preconditions={f"compute.urlMap:{'projects/p/global/urlMaps/api'}": "u9"},
    )


# ---- diff_fields ---------------------------------------------------------------------------------


def test_diff_of_nested_dicts_and_lists_names_each_leaf() -> None:
    diffs = diff_fields(
        service("img:1"), service("img:2", traffic=[{"revision": "api-1", "percent": 90}, {"tag": "c"}])
    )
    assert [d.render() for d in diffs] == [
        '~ template.containers[0].image: "img:1" → "img:2"',
        '- traffic[0].type: "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST"',
        "~ traffic[0].percent: 100 → 90",
        '+ traffic[0].revision: "api-1"',
        '+ traffic[1]: {"tag": "c"}',
    ]
    assert diffs[0] == FieldDiff(
        path=("template", "containers", 0, "image"), kind="changed", before="img:1", after="img:2"
    )


def test_diff_of_absent_resources() -> None:
    assert diff_fields(None, None) == []
    assert [d.render() for d in diff_fields(None, {"a": 1})] == ["+ a: 1"]
    assert [d.render() for d in diff_fields({"a": 1}, None)] == ["- a: 1"]


def test_diff_is_json_typed() -> None:
    assert [d.path_str() for d in diff_fields({"a": True}, {"a": 1})] == ["a"]
    assert diff_fields({"a": 1}, {"a": 1.0}) == []
    assert [d.kind for d in diff_fields({"a": {"b": 1}}, {"a": "b"})] == ["changed"]
    assert [d.kind for d in diff_fields({"a": None}, {})] == ["removed"]


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_categories=["Cs"]), max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text("abcxyz", min_size=1, max_size=3), inner, max_size=4)
    ),
    max_leaves=20,
)
_doc = st.dictionaries(st.text("abcxyz", min_size=1, max_size=3), _json, max_size=5)


def _apply(doc: dict[str, Any], diffs: list[FieldDiff]) -> dict[str, Any]:
    """Apply diffs (test oracle): removals of list items go last to first so indexes stay valid."""
    out = copy.deepcopy(doc)

    def parent(path: tuple[Any, ...]) -> Any:
        node: Any = out
        for part in path[:-1]:
            node = node[part]
        return node

    for d in diffs:
        if d.kind == "changed":
            if d.path:
                parent(d.path)[d.path[-1]] = d.after
            else:  # pragma: no cover - top level is always a dict
                out = d.after
        elif d.kind == "added":
            node = parent(d.path)
            if isinstance(node, list):
                node.append(d.after)
            else:
                node[d.path[-1]] = d.after
    for d in reversed([d for d in diffs if d.kind == "removed"]):
        node = parent(d.path)
        if isinstance(node, list):
            index = d.path[-1]
            assert isinstance(index, int), d.path  # a list item's path ends in its index
            node.pop(index)
        else:
            del node[d.path[-1]]
    return out


@settings(max_examples=200, deadline=None)
@given(before=_doc, after=_doc)
def test_diff_applied_to_before_gives_after(before: dict[str, Any], after: dict[str, Any]) -> None:
    diffs = diff_fields(before, after)
    assert json.dumps(_apply(before, diffs), sort_keys=True) == json.dumps(after, sort_keys=True)
    assert diff_fields(before, before) == []
    assert (diffs == []) == (json.dumps(before, sort_keys=True) == json.dumps(after, sort_keys=True))


# ---- Change ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "before", "after"),
    [
        (Action.CREATE, {"a": 1}, {"a": 1}),
        (Action.CREATE, None, None),
        (Action.DELETE, None, None),
        (Action.DELETE, {"a": 1}, {"a": 1}),
        (Action.UPDATE, None, {"a": 1}),
        (Action.NOOP, {"a": 1}, None),
    ],
)
def test_change_shape_must_match_its_action(action: Action, before: Any, after: Any) -> None:
    with pytest.raises(ValidationError):
        Change(kind=RUN_SERVICE, id=SVC, action=action, before=before, after=after)


def test_change_is_frozen_and_keyed() -> None:
    c = sample_plan().changes[0]
    with pytest.raises(ValidationError):
        c.action = Action.DELETE
    assert c.key == f"run.service:{SVC}"


def test_summary_shows_fields_but_never_secret_values() -> None:
    text = sample_plan().summary(SecretMask(["DB_PASSWORD"]))
    assert "hunter" not in text
    assert f'~ update run.service {SVC}  ("e1")' in text
    assert '    ~ template.containers[0].image: "img:1" → "img:2"' in text
    assert "    ~ template.containers[0].env[1].value: <redacted#1> → <redacted#2>" in text
    assert "+ create armor.rule projects/p/global/securityPolicies/api-armor/rules/1000" in text
    assert "    + priority: 1000" in text
    assert "api-bs" not in text  # no-op changes are counted, not listed
    assert text.endswith("Plan for api: 1 to create, 1 to update, 0 to delete, 1 unchanged.")


def test_credential_looking_env_names_are_masked_even_when_not_declared() -> None:
    c = Change(
        kind=RUN_SERVICE,
        id=SVC,
        action=Action.CREATE,
        after={"template": {"containers": [{"env": [{"name": "STRIPE_API_KEY", "value": "sk_live_1"}]}]}},
    )
    assert "sk_live_1" not in c.summary(SecretMask())
    assert "sk_live_1" in c.summary()  # the default shows everything: callers choose the mask


def test_same_secret_gets_the_same_placeholder_so_unchanged_secrets_show_no_diff() -> None:
    c = Change(kind=RUN_SERVICE, id=SVC, action=Action.UPDATE, before=service("img:1"), after=service("img:2"))
    lines = c.summary(SecretMask(["DB_PASSWORD"])).splitlines()
    assert not any("env" in line for line in lines)


# ---- Plan ------------------------------------------------------------------------------------------


def test_plan_collects_every_precondition() -> None:
    plan = sample_plan()
    assert plan.preconditions == {
        "compute.urlMap:projects/p/global/urlMaps/api": "u9",
        f"run.service:{SVC}": '"e1"',
        f"compute.backendService:{BS}": "f0",
        f"armor.rule:{SP}/rules/1000": None,
    }


def test_plan_refuses_contradicting_preconditions_and_duplicate_changes() -> None:
    c = sample_plan().changes[0]
    with pytest.raises(ValidationError, match="precondition"):
        Plan(service="api", created_at=NOW, config_digest="d", changes=(c,), preconditions={c.key: "other"})
    with pytest.raises(ValidationError, match="more than one change"):
        Plan(service="api", created_at=NOW, config_digest="d", changes=(c, c))


def test_created_at_must_carry_a_timezone() -> None:
    with pytest.raises(ValidationError):
        Plan(service="api", created_at=datetime(2026, 11, 26, 14, 52), config_digest="d")


def test_empty_and_non_empty() -> None:
    plan = sample_plan()
    assert not plan.is_empty
    noop = Plan(service="api", created_at=NOW, config_digest="d", changes=(plan.changes[1],))
    assert noop.is_empty
    assert Plan(service="api", created_at=NOW, config_digest="d").is_empty
    assert noop.summary() == "No changes for api: the live resources match the config (1 checked)."
    assert [c.kind for c in plan.effective()] == [RUN_SERVICE, ARMOR_RULE]


def test_moved_lists_exactly_the_preconditions_that_no_longer_hold() -> None:
    plan = sample_plan()
    now = dict(plan.preconditions)
    assert plan.moved(now) == []
    now[f"run.service:{SVC}"] = '"e2"'  # someone deployed meanwhile
    now[f"armor.rule:{SP}/rules/1000"] = "rule appeared"  # created meanwhile
    del now[f"compute.backendService:{BS}"]  # deleted meanwhile
    assert plan.moved(now) == [
        Moved(key=f"armor.rule:{SP}/rules/1000", planned=None, current="rule appeared"),
        Moved(key=f"compute.backendService:{BS}", planned="f0", current=None),
        Moved(key=f"run.service:{SVC}", planned='"e1"', current='"e2"'),
    ]


def test_json_round_trip_and_digest() -> None:
    plan = sample_plan()
    text = plan.to_json()
    back = Plan.from_json(text)
    assert back == plan
    assert back.digest() == plan.digest()
    assert json.loads(text)["created_at"] == "2026-11-26T14:52:01Z"
    assert json.loads(text)["changes"][2]["action"] == "create"
    other = plan.model_copy(update={"config_digest": "sha256:other"})
    assert other.digest() != plan.digest()


def test_masked_copy_hides_secrets_and_is_marked() -> None:
    plan = sample_plan()
    shown = plan.masked_copy(SecretMask(["DB_PASSWORD"]))
    assert shown.masked and not plan.masked
    assert "hunter" not in shown.to_json()
    assert "hunter2" in plan.to_json()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "plan.json: not JSON"),
        ('{"format": 99}', "plan format 99 is not supported"),
        ('{"format": 1, "service": "api"}', "plan.json: not a deployer plan: created_at"),
        ("[]", "not a deployer plan"),
    ],
)
def test_bad_plan_files_are_one_clear_error(text: str, match: str) -> None:
    with pytest.raises(PlanFileError, match=match) as info:
        Plan.from_json(text, source="plan.json")
    assert info.value.exit_code == 2
    assert "\n" not in info.value.message


def test_a_plan_file_with_an_unknown_action_is_refused() -> None:
    doc = json.loads(sample_plan().to_json())
    doc["changes"][0]["action"] = "replace"
    with pytest.raises(PlanFileError, match=r"changes\.0\.action"):
        Plan.from_json(json.dumps(doc), source="p.json")


_kinds = st.sampled_from([RUN_SERVICE, BACKEND_SERVICE, ARMOR_RULE])


@st.composite
def _changes(draw: st.DrawFn) -> Change:
    action = draw(st.sampled_from(list(Action)))
    return Change(
        kind=draw(_kinds),
        id=draw(st.text("abc/-0123", min_size=1, max_size=12)),
        action=action,
        before=None if action is Action.CREATE else draw(_doc),
        after=None if action is Action.DELETE else draw(_doc),
        precondition=None if action is Action.CREATE else draw(st.none() | st.text(max_size=6)),
    )


@st.composite
def _plans(draw: st.DrawFn) -> Plan:
    changes = draw(st.lists(_changes(), max_size=5, unique_by=lambda c: c.key))
    seconds = draw(st.integers(0, 10**9))
    micros = draw(st.integers(0, 999_999))
    offset = draw(st.integers(-12, 12))
    created = datetime(2001, 1, 1, tzinfo=timezone(timedelta(hours=offset))) + timedelta(
        seconds=seconds, microseconds=micros
    )
    extra = draw(st.dictionaries(st.text("xyz:", min_size=1, max_size=5), st.none() | st.text(max_size=4), max_size=3))
    return Plan(
        service=draw(st.text("abc-", min_size=1, max_size=8)),
        created_at=created,
        config_digest=draw(st.text(max_size=10)),
        changes=tuple(changes),
        preconditions=extra,
        masked=draw(st.booleans()),
    )


@settings(max_examples=150, deadline=None)
@given(plan=_plans())
def test_any_plan_round_trips_through_json(plan: Plan) -> None:
    back = Plan.from_json(plan.to_json())
    assert back == plan
    assert back.created_at == plan.created_at  # the same instant, whatever the offset
    assert back.digest() == plan.digest()
    assert Plan.from_json(plan.to_json(indent=None)) == plan
