"""orchestrator.traffic: effective traffic, the no-traffic recipe, canary steps, restore pins, drift. Pure."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from deployer.orchestrator import traffic
from deployer.orchestrator.traffic import LATEST, REVISION, LastDeploy, Served

SVC = "projects/p/locations/us-central1/services/chat"


def service(traffic_spec, statuses, latest_ready="chat-00001-abc"):
    return {
        "name": SVC,
        "traffic": traffic_spec,
        "trafficStatuses": statuses,
        "latestReadyRevision": f"{SVC}/revisions/{latest_ready}",
    }


SEED = service([{"type": LATEST, "percent": 100}], [{"type": LATEST, "percent": 100}])


def test_latest_statuses_carry_no_revision_and_resolve_through_latest_ready():
    assert traffic.effective(SEED) == (Served("chat-00001-abc", 100, ""),)


def test_no_traffic_pins_latest_and_adds_the_tagged_zero_target():
    new, pinned = traffic.no_traffic(SEED, "chat-new", "candidate")
    assert pinned == "chat-00001-abc"
    assert new == [
        {"type": REVISION, "revision": "chat-00001-abc", "percent": 100},
        {"type": REVISION, "revision": "chat-new", "tag": "candidate"},
    ]


def test_no_traffic_moves_a_leftover_candidate_tag_and_keeps_other_tags():
    svc = service(
        [
            {"type": REVISION, "revision": "chat-a", "percent": 100},
            {"type": REVISION, "revision": "chat-old", "tag": "candidate"},
            {"type": REVISION, "revision": "chat-b", "tag": "blue"},
        ],
        [],
    )
    new, pinned = traffic.no_traffic(svc, "chat-new", "candidate")
    assert pinned is None
    assert [(t["revision"], t.get("percent", 0), t.get("tag", "")) for t in new] == [
        ("chat-a", 100, ""),
        ("chat-b", 0, "blue"),
        ("chat-new", 0, "candidate"),
    ]


def test_a_step_scales_the_previous_split_with_largest_remainders():
    before = (Served("chat-a", 70), Served("chat-b", 30), Served("chat-b", 0, "blue"))
    out = traffic.step(before, "chat-new", 10, candidate_tag="candidate")
    assert out == [
        {"type": REVISION, "revision": "chat-new", "percent": 10, "tag": "candidate"},
        {"type": REVISION, "revision": "chat-a", "percent": 63},
        {"type": REVISION, "revision": "chat-b", "percent": 27},
        {"type": REVISION, "revision": "chat-b", "tag": "blue"},
    ]
    assert traffic.scale({"a": 1, "b": 1, "c": 1}, 100) == {"a": 34, "b": 33, "c": 33}


@given(
    st.dictionaries(st.sampled_from("abcdef"), st.integers(1, 100), min_size=1, max_size=6),
    st.integers(0, 100),
)
def test_steps_always_sum_to_100(base, percent):
    before = tuple(Served(f"chat-{r}", p) for r, p in base.items())
    out = traffic.step(before, "chat-new", percent, candidate_tag="candidate")
    assert sum(t.get("percent", 0) for t in out) == 100
    assert out[0] == {
        "type": REVISION,
        "revision": "chat-new",
        "tag": "candidate",
        **({"percent": percent} if percent else {}),
    }


def test_final_sends_everything_to_the_new_revision_and_tags_the_previous_one():
    before = (Served("chat-a", 90), Served("chat-b", 10), Served("chat-x", 0, "previous"), Served("chat-c", 0, "blue"))
    out, previous = traffic.final(before, "chat-new", candidate_tag="candidate", previous_tag="previous")
    assert previous == "chat-a"
    assert out == [
        {"type": REVISION, "revision": "chat-new", "percent": 100},
        {"type": REVISION, "revision": "chat-a", "tag": "previous"},
        {"type": REVISION, "revision": "chat-c", "tag": "blue"},
    ]


def test_restore_writes_the_pre_image_back_with_latest_pinned():
    pre = service(
        [{"type": LATEST, "percent": 90, "tag": "live"}, {"type": REVISION, "revision": "chat-b", "percent": 10}],
        [
            {"type": LATEST, "percent": 90, "tag": "live", "uri": "http://live---chat.localhost:1"},
            {"type": REVISION, "revision": "chat-b", "percent": 10},
        ],
    )
    restore = traffic.restore(pre)
    assert restore.pinned == "chat-00001-abc"
    assert restore.traffic == [
        {"type": REVISION, "revision": "chat-00001-abc", "percent": 90, "tag": "live"},
        {"type": REVISION, "revision": "chat-b", "percent": 10},
    ]
    # the statuses this traffic leads to are the pre-image's effective ones
    after = service(restore.traffic, restore.traffic, latest_ready="chat-new")
    assert traffic.same_effective(traffic.effective(after), traffic.effective(pre))


def test_drift_is_none_without_a_last_deploy_or_when_traffic_is_what_it_left():
    assert traffic.drift(SEED, None) is None
    last = LastDeploy("annotations", "d-20261126-140000-aaaa", {"chat-00001-abc": 100})
    assert traffic.drift(SEED, last) is None


def test_drift_names_a_pin_and_a_split():
    last = LastDeploy("annotations", "d-20261126-140000-aaaa", {"chat-new": 100})
    pinned = traffic.drift(SEED, last)
    assert pinned is not None
    assert pinned.describe() == (
        "traffic is pinned to chat-00001-abc 100%, but the last deploy (d-20261126-140000-aaaa, from the annotations) "
        "left chat-new 100%"
    )
    split = service(
        [],
        [
            {"type": REVISION, "revision": "chat-new", "percent": 50},
            {"type": REVISION, "revision": "chat-a", "percent": 50},
        ],
    )
    found = traffic.drift(split, last)
    assert found is not None and found.describe().startswith("traffic is split chat-new 50%, chat-a 50%")
