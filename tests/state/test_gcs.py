"""What only the Cloud Storage store promises: where objects live, its errors, and how it settles a
mutation whose answer was lost. The contract it shares with the directory store is in
``test_store_contract.py`` (run on both).

Faults come from two real places: the local cloud's fault injection (a call refused *before* it is
applied: 503, 429, 403) and ``LossyProxy``, a TCP proxy that loses the answer of an applied call or
delivers a request late. Retries sleep through an injected ``sleep``; nothing here waits for real.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from deployer.config import StateConfig
from deployer.errors import StaleStateError, StateError
from deployer.gcp.clients import Clients
from deployer.gcp.retry import RetryEvent, RetryPolicy
from deployer.localcloud.world import FaultRule
from deployer.state import open_store
from deployer.state.gcs import (
    GcsStateStore,
    Landed,
    LostTo,
    NotLanded,
    normalize_prefix,
    settle_delete,
    settle_write,
)
from deployer.state.local import LocalStateStore
from tests.state.lossy import LossyProxy

ROOT = Path(__file__).resolve().parents[2]


# ---- deciding what an unknown outcome was (pure) ---------------------------------------------------


@pytest.mark.parametrize(
    ("if_generation", "current", "outcome"),
    [
        (0, None, NotLanded()),  # still absent: it did not land
        (0, (b"ours", 7), Landed(7)),
        (0, (b"theirs", 7), LostTo(7)),
        (5, (b"old", 5), NotLanded()),  # still at the generation we conditioned on
        (5, (b"ours", 9), Landed(9)),
        (5, (b"theirs", 9), LostTo(9)),
        (5, None, LostTo(None)),  # deleted under us: the precondition can never hold
        (5, (b"ours", 5), NotLanded()),  # it already held our bytes before: ours did not land
        (None, None, NotLanded()),
        (None, (b"ours", 3), Landed(3)),
        (None, (b"theirs", 3), NotLanded()),  # unconditional: send it again
    ],
)
def test_settle_write(if_generation: int | None, current: tuple[bytes, int] | None, outcome: object) -> None:
    assert settle_write(b"ours", if_generation, current) == outcome


@pytest.mark.parametrize(
    ("if_generation", "current", "outcome"),
    [
        (5, None, Landed()),
        (5, (b"x", 5), NotLanded()),
        (5, (b"x", 6), LostTo(6)),
        (None, None, Landed()),
        (None, (b"x", 6), NotLanded()),
    ],
)
def test_settle_delete(if_generation: int | None, current: tuple[bytes, int] | None, outcome: object) -> None:
    assert settle_delete(if_generation, current) == outcome


@pytest.mark.parametrize(
    ("given", "normal"), [("deployer", "deployer/"), ("/a/b/", "a/b/"), ("", ""), ("/", ""), ("a/b", "a/b/")]
)
def test_prefix_is_a_folder(given: str, normal: str) -> None:
    assert normalize_prefix(given) == normal


# ---- against the local cloud ---------------------------------------------------------------------


class Sleeps:
    """An injected ``sleep`` that records the delays and can act in between attempts."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.between: Any = None

    def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if self.between is not None:
            self.between()


@pytest.fixture
def bucket(localcloud: Any) -> str:
    name = f"state-{uuid.uuid4().hex[:10]}"
    Clients(endpoint=localcloud.endpoint, project=localcloud.world.project).storage().create_bucket(name)
    return name


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def make_store(cloud: Any, bucket: str, sleeps: Sleeps, endpoint: str | None = None, **kw: Any) -> GcsStateStore:
    policy = RetryPolicy(attempts=4, initial=0.0, maximum=0.0, jitter=0.0, deadline=None, sleep=sleeps)
    clients = Clients(endpoint=endpoint or cloud.endpoint, project=cloud.world.project)
    return GcsStateStore(bucket, kw.pop("prefix", "team"), clients, policy=policy, read_policy=policy, **kw)


def object_calls(cloud: Any, bucket: str) -> list[tuple[str, int]]:
    """The object calls the local cloud served for ``bucket``, in order (the client's background
    bucket-metadata lookups are left out)."""
    return [
        (r.method.removeprefix("storage.objects."), r.status)
        for r in cloud.world.requests
        if r.method.startswith("storage.objects.") and f"/b/{bucket}/" in r.path
    ]


def live_object(cloud: Any, bucket: str, name: str) -> Any:
    return cloud.world.apis["storage"].buckets[bucket].objects.get(name)


@pytest.fixture
def proxy(localcloud: Any) -> Any:
    host, port = localcloud.endpoint.removeprefix("http://").split(":")
    lossy = LossyProxy((host, int(port))).start()
    yield lossy
    lossy.stop()


def test_objects_live_under_the_prefix_with_the_store_generation(localcloud: Any, bucket: str, sleeps: Sleeps) -> None:
    store = make_store(localcloud, bucket, sleeps, prefix="/deployer/staging/")
    gen = store.write("locks/api.json", b'{"deploy_id": "d-1"}\n', if_generation=0)
    obj = live_object(localcloud, bucket, "deployer/staging/locks/api.json")
    assert (obj.data, obj.generation, obj.content_type) == (b'{"deploy_id": "d-1"}\n', gen, "application/json")
    assert repr(store) == f"GcsStateStore('gs://{bucket}/deployer/staging/')"
    assert store.where("locks/api.json") == f"gs://{bucket}/deployer/staging/locks/api.json"  # the object's name
    at_root = make_store(localcloud, bucket, sleeps, prefix="")
    assert at_root.list("deployer/") == ["deployer/staging/locks/api.json"]
    assert at_root.where("deployer/staging/locks/api.json") == f"gs://{bucket}/deployer/staging/locks/api.json"


def test_list_keeps_to_its_prefix_and_to_valid_keys(localcloud: Any, bucket: str, sleeps: Sleeps) -> None:
    raw = Clients(endpoint=localcloud.endpoint, project=localcloud.world.project).storage().bucket(bucket)
    for name in ("team/ok.json", "team/.hidden", "team/a b", "team/deploys/x/d-1.json", "teams/other", "elsewhere"):
        raw.blob(name).upload_from_string(b"{}")
    store = make_store(localcloud, bucket, sleeps)
    assert store.list("") == ["deploys/x/d-1.json", "ok.json"]
    assert store.list("deploys/") == ["deploys/x/d-1.json"]


@pytest.mark.parametrize("op", ["read", "write", "delete", "list"])
def test_a_missing_bucket_is_one_state_error_naming_it(localcloud: Any, sleeps: Sleeps, op: str) -> None:
    store = make_store(localcloud, "no-such-state-bucket", sleeps)
    calls = {
        "read": lambda: store.read("k"),
        "write": lambda: store.write("k", b"x", if_generation=0),
        "delete": lambda: store.delete("k", if_generation=5),
        "list": lambda: store.list(""),
    }
    with pytest.raises(StateError) as info:
        calls[op]()
    assert not isinstance(info.value, StaleStateError)  # a missing bucket is not a lost race
    assert "no-such-state-bucket does not exist" in info.value.message
    assert info.value.hint is not None and "gcloud storage buckets create gs://no-such-state-bucket" in info.value.hint
    assert sleeps.delays == []  # and not retried


def test_a_503_before_the_write_is_settled_then_sent_again(localcloud: Any, bucket: str, sleeps: Sleeps) -> None:
    events: list[RetryEvent] = []
    store = make_store(localcloud, bucket, sleeps, on_retry=events.append)
    localcloud.world.faults.add(FaultRule(method="storage.objects.insert", status=503, count=1))
    with capture_logs() as logs:
        gen = store.write("locks/api.json", b"mine", if_generation=0)
    assert store.read("locks/api.json") == (b"mine", gen)
    # A 503 may hide an applied write: re-read first (absent: it did not land), then send it again.
    assert object_calls(localcloud, bucket) == [("insert", 503), ("get", 404), ("insert", 200), ("get", 200)]
    assert [(e.method, e.status, e.outcome_unknown) for e in events] == [("storage.objects.insert", 503, True)]
    assert [log["outcome"] for log in logs if log["event"] == "state.gcs.settled"] == ["NotLanded"]


def test_a_429_is_retried_without_settling(localcloud: Any, bucket: str, sleeps: Sleeps) -> None:
    store = make_store(localcloud, bucket, sleeps)
    localcloud.world.faults.add(FaultRule(method="storage.objects.insert", status=429, count=1))
    store.write("k", b"v", if_generation=0)
    # 429 is a definite "not done": nothing to settle.
    assert object_calls(localcloud, bucket) == [("insert", 429), ("insert", 200)]
    assert len(sleeps.delays) == 1


def test_a_write_whose_answer_was_lost_is_found_landed_and_not_sent_again(
    localcloud: Any, bucket: str, sleeps: Sleeps, proxy: LossyProxy
) -> None:
    store = make_store(localcloud, bucket, sleeps, endpoint=proxy.endpoint)
    g1 = store.write("locks/api.json", b"lease v1", if_generation=0)
    proxy.lose_answer("POST /upload/")
    with capture_logs() as logs:
        g2 = store.write("locks/api.json", b"lease v2", if_generation=g1)
    assert g2 != g1 and live_object(localcloud, bucket, "team/locks/api.json").generation == g2
    assert store.read("locks/api.json") == (b"lease v2", g2)
    # Sent once: a blind resend with if_generation=g1 would have been a false 412.
    assert [c for c in object_calls(localcloud, bucket) if c[0] == "insert"] == [("insert", 200), ("insert", 200)]
    assert [log["outcome"] for log in logs if log["event"] == "state.gcs.settled"] == ["Landed"]
    assert any(line.endswith("-> answer lost") for line in proxy.seen)


def test_a_write_that_lands_late_is_still_recognised_as_ours(
    localcloud: Any, bucket: str, sleeps: Sleeps, proxy: LossyProxy
) -> None:
    store = make_store(localcloud, bucket, sleeps, endpoint=proxy.endpoint)
    proxy.hold_request("POST /upload/")
    gen = store.write("locks/api.json", b"lease", if_generation=0)
    # The first request was still in the network when we re-read (absent), so we sent it again; it
    # landed just before the second, which got 412 — and the object holds our bytes: we won.
    assert live_object(localcloud, bucket, "team/locks/api.json").generation == gen
    assert [c for c in object_calls(localcloud, bucket) if c[0] == "insert"] == [("insert", 200), ("insert", 412)]
    assert any(line.endswith("-> landed late") for line in proxy.seen)


def test_after_a_503_a_foreign_write_in_between_is_a_lost_race(localcloud: Any, bucket: str, sleeps: Sleeps) -> None:
    store = make_store(localcloud, bucket, sleeps)
    rival = make_store(localcloud, bucket, Sleeps())
    localcloud.world.faults.add(FaultRule(method="storage.objects.insert", status=503, count=1))
    sleeps.between = lambda: rival.write("locks/api.json", b"rival", if_generation=0)
    with pytest.raises(StaleStateError) as info:
        store.write("locks/api.json", b"mine", if_generation=0)
    theirs = store.read("locks/api.json")
    assert theirs is not None and theirs[0] == b"rival"
    assert (info.value.expected, info.value.actual) == (0, theirs[1])
    assert [c for c in object_calls(localcloud, bucket) if c[0] == "insert"] == [
        ("insert", 503),
        ("insert", 200),  # the rival's
    ]


def test_a_delete_whose_answer_was_lost_reports_deleted(
    localcloud: Any, bucket: str, sleeps: Sleeps, proxy: LossyProxy
) -> None:
    store = make_store(localcloud, bucket, sleeps, endpoint=proxy.endpoint)
    gen = store.write("locks/api.json", b"lease", if_generation=0)
    proxy.lose_answer("DELETE /storage/v1/b/")
    assert store.delete("locks/api.json", if_generation=gen) is True
    assert live_object(localcloud, bucket, "team/locks/api.json") is None
    assert [c for c in object_calls(localcloud, bucket) if c[0] == "delete"] == [("delete", 204)]


def test_a_503_that_never_ends_is_a_state_error_after_the_policy(localcloud: Any, bucket: str, sleeps: Sleeps) -> None:
    store = make_store(localcloud, bucket, sleeps)
    localcloud.world.faults.add(FaultRule(method="storage.objects.insert", status=503, count=100))
    with pytest.raises(StateError) as info:
        store.write("k", b"v", if_generation=0)
    assert not isinstance(info.value, StaleStateError)
    assert info.value.message.startswith(f"cannot write state gs://{bucket}/team/k: ")
    assert "after 4 attempts" in info.value.message
    assert info.value.fields["outcome_unknown"] is True
    assert [c for c in object_calls(localcloud, bucket) if c[0] == "insert"] == [("insert", 503)] * 4
    assert store.read("k") is None


def test_a_403_is_a_state_error_that_says_permission_and_is_not_retried(
    localcloud: Any, bucket: str, sleeps: Sleeps
) -> None:
    store = make_store(localcloud, bucket, sleeps)
    localcloud.world.faults.add(FaultRule(method="storage.objects.get", status=403, count=1))
    with pytest.raises(StateError) as info:
        store.read("k")
    assert info.value.hint is not None and "permission" in info.value.hint
    assert sleeps.delays == [] and object_calls(localcloud, bucket) == [("get", 403)]


# ---- open_store: the config picks the store ---------------------------------------------------------------


def test_open_store_local_relative_to_a_base(tmp_path: Path) -> None:
    store = open_store(StateConfig(backend="local", path=".deployer/"), base=tmp_path)
    assert isinstance(store, LocalStateStore) and store.root == (tmp_path / ".deployer").resolve()


def test_open_store_gcs_uses_the_clients_it_is_given(localcloud: Any, bucket: str) -> None:
    clients = Clients(endpoint=localcloud.endpoint, project=localcloud.world.project)
    store = open_store(StateConfig(backend="gcs", bucket=bucket, prefix="deployer/chat"), clients)
    assert isinstance(store, GcsStateStore) and store.url == f"gs://{bucket}/deployer/chat/"
    gen = store.write("locks/chat-backend.json", b"{}", if_generation=0)
    assert live_object(localcloud, bucket, "deployer/chat/locks/chat-backend.json").generation == gen


def test_opening_a_local_store_imports_no_google_library(tmp_path: Path) -> None:
    code = (
        "import sys; from deployer.config import StateConfig; from deployer.state import open_store; "
        f"open_store(StateConfig(path={str(tmp_path)!r})); "
        "print(sorted(m for m in sys.modules if m.startswith('google.cloud')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
