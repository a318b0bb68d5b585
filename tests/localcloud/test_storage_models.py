"""Cloud Storage rules as pure logic: preconditions, generations, listing, and atomic check-then-write."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deployer.localcloud.api.common import ApiError
from deployer.localcloud.api.storage.models import (
    NotModified,
    Preconditions,
    State,
    StoredObject,
    check_preconditions,
    object_etag,
)
from deployer.localcloud.world import World


def _obj(gen: int, meta: int = 1) -> StoredObject:
    return StoredObject("bkt", "o", b"x", gen, meta, 0.0, 0.0, {})


def _state(clock: float = 1_700_000_000.0) -> State:
    world = World(seed=1, clock=lambda: clock)
    state = State(world)
    state.insert_bucket("p", {"name": "bkt"})
    return state


@pytest.mark.parametrize(
    ("current", "pre", "read", "expected"),
    [
        (None, Preconditions(if_generation_match=0), False, None),
        (_obj(5), Preconditions(if_generation_match=0), False, 412),
        (_obj(5), Preconditions(if_generation_match=5), False, None),
        (None, Preconditions(if_generation_match=5), False, 412),
        (_obj(5), Preconditions(if_generation_not_match=5), False, 412),
        (_obj(5), Preconditions(if_generation_not_match=5), True, 304),
        (_obj(5), Preconditions(if_generation_not_match=0), False, None),  # 0: "only if there is a live version"
        (None, Preconditions(if_generation_not_match=0), False, 412),
        (_obj(5, 2), Preconditions(if_metageneration_match=2), False, None),
        (_obj(5, 2), Preconditions(if_metageneration_match=1), False, 412),
        (None, Preconditions(if_metageneration_match=1), False, 412),
        (_obj(5, 2), Preconditions(if_metageneration_not_match=2), True, 304),
    ],
)
def test_precondition_table(current, pre, read, expected):
    if expected is None:
        check_preconditions(current, pre, read=read)
    else:
        with pytest.raises(ApiError) as info:
            check_preconditions(current, pre, read=read)
        assert info.value.status == expected
        assert isinstance(info.value, NotModified) == (expected == 304)
        if expected == 412:
            assert info.value.reason == "conditionNotMet"


def test_etag_encodes_generation_and_metageneration_like_gcs():
    # GCS: generation 1, metageneration 1 -> "CAEQAQ=="; bucket metageneration 1 -> "CAE="
    assert object_etag(1, 1) == "CAEQAQ=="
    assert object_etag(1_700_000_000_000_000, 1) != object_etag(1_700_000_000_000_000, 2)


def test_same_microsecond_writes_still_get_increasing_generations():
    state = _state()  # a frozen clock
    gens = [state.put_object("bkt", "o", b"%d" % i, {}).generation for i in range(5)]
    assert gens == list(range(gens[0], gens[0] + 5))
    assert gens[0] == 1_700_000_000_000_000


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["o1", "o2"]), st.one_of(st.none(), st.integers(0, 3)), st.booleans())))
def test_conditional_writes_match_a_reference_model(ops):
    """Each write carries ifGenerationMatch = (None | 0 | the k-th generation seen); it succeeds exactly when
    the condition names the live generation (0 = absent), and the live data is always the last winner's."""
    state = _state()
    live: dict[str, tuple[int, bytes]] = {}
    history: list[int] = []
    for i, (name, pick, delete) in enumerate(ops):
        if pick is None:
            want = None
        elif pick == 0 or not history:
            want = 0
        else:
            want = history[-min(pick, len(history))]
        pre = Preconditions(if_generation_match=want)
        current_gen = live[name][0] if name in live else 0
        should_pass = want is None or want == current_gen
        if delete:
            should_pass = should_pass and name in live
            try:
                state.delete_object("bkt", name, pre)
                assert should_pass
                del live[name]
            except ApiError as exc:
                assert not should_pass
                assert exc.status == (404 if name not in live else 412)
            continue
        data = b"%d" % i
        try:
            obj = state.put_object("bkt", name, data, {}, pre)
            assert should_pass
            assert obj.generation > max(history, default=0)
            history.append(obj.generation)
            live[name] = (obj.generation, data)
        except ApiError as exc:
            assert not should_pass
            assert exc.status == 412
        for n, (gen, body) in live.items():
            got = state.get_object("bkt", n)
            assert (got.generation, got.data) == (gen, body)


def test_threads_racing_on_state_have_one_winner():
    state = _state()
    n = 16
    barrier = threading.Barrier(n)
    wins: list[int] = []

    def racer(i: int) -> None:
        barrier.wait(5)
        try:
            state.put_object("bkt", "lock", b"%d" % i, {}, Preconditions(if_generation_match=0))
            wins.append(i)
        except ApiError as exc:
            assert exc.status == 412

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(wins) == 1
    assert state.get_object("bkt", "lock").data == b"%d" % wins[0]


def test_listing_with_delimiter_and_trailing_delimiter():
    state = _state()
    for name in ["a/", "a/x", "a/y/z", "b", "c/"]:
        state.put_object("bkt", name, b"", {})
    page = state.list_objects("bkt", delimiter="/")
    assert [o.name for o in page.items] == ["b"]
    assert page.prefixes == ["a/", "c/"]
    page = state.list_objects("bkt", delimiter="/", include_trailing_delimiter=True)
    assert [o.name for o in page.items] == ["a/", "b", "c/"]
    page = state.list_objects("bkt", prefix="a/", delimiter="/")
    assert [o.name for o in page.items] == ["a/", "a/x"]
    assert page.prefixes == ["a/y/"]


def test_paging_with_a_prefix_and_an_object_of_the_same_name():
    state = _state()
    for name in ["a/", "a/x", "b"]:
        state.put_object("bkt", name, b"", {})
    seen: list[str] = []
    token = None
    while True:
        page = state.list_objects(
            "bkt", delimiter="/", include_trailing_delimiter=True, max_results=1, page_token=token
        )
        seen += [f"p:{p}" for p in page.prefixes] + [f"o:{o.name}" for o in page.items]
        token = page.next_page_token
        if not token:
            break
    assert seen == ["p:a/", "o:a/", "o:b"]


def test_resumable_upload_checks_preconditions_again_at_the_end():
    state = _state()
    up = state.start_upload("bkt", "o", {}, Preconditions(if_generation_match=0), {}, total=4)
    state.put_object("bkt", "o", b"first", {})  # someone else wins meanwhile
    state.upload_chunk(up.upload_id, 0, b"ab", None, {})
    with pytest.raises(ApiError) as info:
        state.upload_chunk(up.upload_id, 2, b"cd", 4, {})
    assert info.value.status == 412
    assert state.get_object("bkt", "o").data == b"first"


def test_reset_and_seed():
    world = World(seed=2)
    state = State(world)
    state.seed({"buckets": [{"name": "deployer-state", "location": "us-central1"}]})
    assert state.get_bucket("deployer-state").location == "US-CENTRAL1"
    state.reset()
    assert state.buckets == {}
    with pytest.raises(ApiError):
        state.seed({"buckets": "deployer-state"})
