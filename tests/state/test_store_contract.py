"""The StateStore contract: every store (``local`` now, ``gcs`` in issue 7) must pass all of it.

Generation preconditions are what make two writers never both win, so most of this file is about
them: created only if absent, replaced only at the generation read, deleted likewise, and real
processes racing on one key.
"""

from __future__ import annotations

import multiprocessing
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deployer.errors import CorruptStateError, StaleStateError
from deployer.state import StateStore, check_key, dump_json, read_json
from tests.state.stores import StoreSpec, fresh_namespace


def test_a_store_is_a_state_store(store: StateStore) -> None:
    assert isinstance(store, StateStore)


def test_missing_key_reads_none(store: StateStore) -> None:
    assert store.read("deploys/api/nothing.json") is None


def test_create_only_if_absent(store: StateStore) -> None:
    gen = store.write("locks/api.json", b"first", if_generation=0)
    assert gen > 0
    assert store.read("locks/api.json") == (b"first", gen)
    with pytest.raises(StaleStateError) as info:
        store.write("locks/api.json", b"second", if_generation=0)
    assert (info.value.key, info.value.expected, info.value.actual) == ("locks/api.json", 0, gen)
    assert store.read("locks/api.json") == (b"first", gen)


def test_replace_only_at_the_generation_read(store: StateStore) -> None:
    g1 = store.write("k", b"v1", if_generation=0)
    g2 = store.write("k", b"v2", if_generation=g1)
    assert g2 != g1
    assert store.read("k") == (b"v2", g2)
    with pytest.raises(StaleStateError) as info:
        store.write("k", b"v3 from a stale reader", if_generation=g1)
    assert info.value.actual == g2
    assert store.read("k") == (b"v2", g2)


def test_conditional_write_on_a_missing_object_fails(store: StateStore) -> None:
    with pytest.raises(StaleStateError) as info:
        store.write("k", b"v", if_generation=12345)
    assert info.value.actual is None
    assert store.read("k") is None


def test_unconditional_write_creates_and_replaces(store: StateStore) -> None:
    g1 = store.write("k", b"a", if_generation=None)
    g2 = store.write("k", b"b", if_generation=None)
    assert g1 != g2
    assert store.read("k") == (b"b", g2)


def test_delete(store: StateStore) -> None:
    assert store.delete("k", if_generation=None) is False
    gen = store.write("k", b"v", if_generation=0)
    with pytest.raises(StaleStateError):
        store.delete("k", if_generation=gen + 1)
    assert store.read("k") == (b"v", gen)
    assert store.delete("k", if_generation=gen) is True
    assert store.read("k") is None
    with pytest.raises(StaleStateError):
        store.delete("k", if_generation=gen)  # already gone: the precondition cannot hold
    with pytest.raises(ValueError):
        store.delete("k", if_generation=0)


def test_a_recreated_object_never_repeats_a_generation(store: StateStore) -> None:
    # Otherwise a holder of the old generation could overwrite the new object (ABA).
    seen = set()
    for _ in range(5):
        gen = store.write("locks/api.json", b"x", if_generation=0)
        assert gen not in seen
        seen.add(gen)
        store.delete("locks/api.json", if_generation=gen)


def test_data_is_kept_byte_for_byte(store: StateStore) -> None:
    for data in (b"", b"\n", b'{"generation": 1}\nnot a header', bytes(range(256)), "é\n".encode() * 1000):
        gen = store.write("blob", data, if_generation=None)
        assert store.read("blob") == (data, gen)


def test_list_by_string_prefix(store: StateStore) -> None:
    for key in ("deploys/api/d-2.json", "deploys/api/d-1.json", "deploys/apix/d-3.json", "locks/api.json", "top"):
        store.write(key, b"{}", if_generation=0)
    assert store.list("deploys/api/") == ["deploys/api/d-1.json", "deploys/api/d-2.json"]
    assert store.list("deploys/api") == ["deploys/api/d-1.json", "deploys/api/d-2.json", "deploys/apix/d-3.json"]
    assert store.list("deploys/api/d-2") == ["deploys/api/d-2.json"]
    assert store.list("") == sorted(
        ["deploys/api/d-1.json", "deploys/api/d-2.json", "deploys/apix/d-3.json", "locks/api.json", "top"]
    )
    assert store.list("pins/") == []
    store.delete("deploys/api/d-1.json", if_generation=None)
    assert store.list("deploys/api/") == ["deploys/api/d-2.json"]


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "../x", "a/../b", ".hidden", "a/.b", "a b", "a/", "ü"])
def test_invalid_keys_are_refused(store: StateStore, key: str) -> None:
    with pytest.raises(ValueError):
        check_key(key)
    with pytest.raises(ValueError):
        store.write(key, b"x", if_generation=None)
    with pytest.raises(ValueError):
        store.read(key)


def test_json_helpers(store: StateStore) -> None:
    gen = store.write("doc.json", dump_json({"b": 1, "a": [1, "é"]}), if_generation=0)
    assert read_json(store, "doc.json") == ({"b": 1, "a": [1, "é"]}, gen)
    assert read_json(store, "none.json") is None


def test_corrupt_json_is_named_where_it_is(store: StateStore) -> None:
    store.write("locks/x.json", b"{{{", if_generation=0)
    with pytest.raises(CorruptStateError) as info:
        read_json(store, "locks/x.json")
    where = store.where("locks/x.json")
    assert info.value.message.startswith(f"state object {where} is not valid JSON: "), info.value.message
    assert info.value.fields["problem"].startswith("not valid JSON: ")
    assert store.read("locks/x.json") is not None  # kept as it is


def test_where_names_the_key_in_full_and_contacts_nothing(store: StateStore) -> None:
    where = store.where("deploys/api/d-1.json")
    assert where.endswith("/deploys/api/d-1.json")
    assert where.startswith("gs://") or where.startswith("/"), where  # a URL or an absolute path, never the bare key
    assert store.list("") == []  # nothing was written by asking
    with pytest.raises(ValueError):
        store.where("a//b")


# ---- model-based: any sequence of operations behaves like a dict with generations ----------------

_op = st.one_of(
    st.tuples(
        st.just("write"),
        st.sampled_from(["a", "b/c"]),
        st.binary(max_size=20),
        st.sampled_from(["none", "zero", "current", "stale"]),
    ),
    st.tuples(
        st.just("delete"), st.sampled_from(["a", "b/c"]), st.just(b""), st.sampled_from(["none", "current", "stale"])
    ),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(_op, max_size=12))
def test_behaves_like_a_dict_with_generations(store_spec: StoreSpec, ops: list[tuple[str, str, bytes, str]]) -> None:
    store = store_spec.open(fresh_namespace())
    model: dict[str, tuple[bytes, int]] = {}
    retired: set[int] = set()
    for op, key, data, pre in ops:
        current = model.get(key)
        if pre == "none":
            cond: int | None = None
        elif pre == "zero":
            cond = 0
        elif pre == "current":
            cond = current[1] if current else 0
        else:
            cond = (current[1] if current else 0) + 7  # a generation the object is not at
        if op == "write":
            should_fail = cond is not None and cond != (current[1] if current else 0)
            if should_fail:
                with pytest.raises(StaleStateError):
                    store.write(key, data, if_generation=cond)
            else:
                gen = store.write(key, data, if_generation=cond)
                assert gen not in retired and (current is None or gen != current[1])
                if current:
                    retired.add(current[1])
                model[key] = (data, gen)
        else:
            if cond == 0:  # "current" on a missing object: a plain delete
                cond = None
            if cond is not None and (current is None or cond != current[1]):
                with pytest.raises(StaleStateError):
                    store.delete(key, if_generation=cond)
            else:
                assert store.delete(key, if_generation=cond) is (current is not None)
                if current:
                    retired.add(current[1])
                model.pop(key, None)
        for k in ("a", "b/c"):
            assert store.read(k) == model.get(k)
        assert store.list("") == sorted(model)


# ---- races ---------------------------------------------------------------------------------------


def _race_worker(spec: Any, namespace: str, gen: int, start: Any, results: Any, ident: int) -> None:
    store = spec.open(namespace)
    start.wait(30)
    try:
        store.write("locks/api.json", f"held by {ident}".encode(), if_generation=gen)
        results.put((ident, "won"))
    except StaleStateError:
        results.put((ident, "lost"))


def _counter_worker(spec: Any, namespace: str, n: int, start: Any, results: Any, ident: int) -> None:
    store = spec.open(namespace)
    start.wait(30)
    conflicts = 0
    done = 0
    while done < n:
        data, gen = store.read("counter")
        try:
            store.write("counter", str(int(data) + 1).encode(), if_generation=gen)
            done += 1
        except StaleStateError:
            conflicts += 1
    results.put((ident, conflicts))


def _run_processes(target: Any, args: tuple[Any, ...], count: int) -> list[Any]:
    ctx = multiprocessing.get_context("spawn")  # no fork: the test process may have threads
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, start, results, i)) for i in range(count)]
    for p in procs:
        p.start()
    try:
        start.set()
        out = [results.get(timeout=60) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():  # pragma: no cover - only when a child hangs
                p.kill()
    assert all(p.exitcode == 0 for p in procs)
    return out


def test_processes_racing_on_one_generation_exactly_one_wins(store_spec: StoreSpec) -> None:
    namespace = fresh_namespace()
    store = store_spec.open(namespace)
    gen = store.write("locks/api.json", b"expired lease", if_generation=0)
    outcomes = dict(_run_processes(_race_worker, (store_spec, namespace, gen), 4))
    winners = [i for i, what in outcomes.items() if what == "won"]
    assert len(winners) == 1, outcomes
    got = store.read("locks/api.json")
    assert got is not None and got[0] == f"held by {winners[0]}".encode()


def test_processes_incrementing_with_compare_and_swap_lose_no_update(store_spec: StoreSpec) -> None:
    namespace = fresh_namespace()
    store = store_spec.open(namespace)
    store.write("counter", b"0", if_generation=0)
    per_process = 25
    _run_processes(_counter_worker, (store_spec, namespace, per_process), 2)
    got = store.read("counter")
    assert got is not None and int(got[0]) == 2 * per_process


def test_threads_racing_on_one_generation_exactly_one_wins(store: StateStore) -> None:
    gen = store.write("k", b"0", if_generation=0)
    barrier = threading.Barrier(8)
    won: list[int] = []

    def attempt(i: int) -> None:
        barrier.wait(10)
        try:
            store.write("k", str(i).encode(), if_generation=gen)
            won.append(i)
        except StaleStateError:
            pass

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(won) == 1
    got = store.read("k")
    assert got is not None and got[0] == str(won[0]).encode()
