"""The Cloud Storage JSON API subset, driven by the real google-cloud-storage client over HTTP."""

from __future__ import annotations

import base64
import hashlib
import os
import threading

import google_crc32c
import pytest
from google.api_core import exceptions as gexc

from deployer.gcp.clients import Clients

BUCKET = "deployer-state"


@pytest.fixture
def gcs(clients):
    client = clients.storage()
    client.create_bucket(BUCKET)
    return client


@pytest.fixture
def bucket(gcs):
    return gcs.bucket(BUCKET)


def _b64_crc32c(data: bytes) -> str:
    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()


def _requests(localcloud, method):
    return [r for r in localcloud.world.requests if r.method == method]


# ---- buckets ---------------------------------------------------------------------------------------
def test_bucket_insert_get_and_list(gcs):
    created = gcs.create_bucket("journal-b", location="us-central1")
    assert created.location == "US-CENTRAL1"
    got = gcs.get_bucket("journal-b")
    assert got.name == "journal-b"
    assert got.metageneration == 1
    assert got.project_number
    assert sorted(b.name for b in gcs.list_buckets()) == [BUCKET, "journal-b"]


def test_second_bucket_insert_is_a_409_conflict(gcs):
    with pytest.raises(gexc.Conflict) as info:
        gcs.create_bucket(BUCKET)
    assert "already own it" in info.value.message
    assert info.value.errors[0]["reason"] == "conflict"


def test_missing_bucket_is_a_404_in_storage_shape(gcs):
    with pytest.raises(gexc.NotFound) as info:
        gcs.get_bucket("no-such-bucket")
    assert info.value.message.endswith(": The specified bucket does not exist.")
    assert info.value.errors == [
        {"message": "The specified bucket does not exist.", "domain": "global", "reason": "notFound"}
    ]
    assert gcs.lookup_bucket("no-such-bucket") is None


@pytest.mark.parametrize("name", ["UPPER", "a", "goog-reserved", "has space", "x" * 64])
def test_invalid_bucket_names_are_400(gcs, name):
    with pytest.raises(gexc.BadRequest) as info:
        gcs.create_bucket(name)
    assert "Invalid bucket name" in info.value.message


def test_upload_to_a_missing_bucket_is_404(gcs):
    with pytest.raises(gexc.NotFound):
        gcs.bucket("nope-bucket").blob("x").upload_from_string(b"x")


# ---- objects: write, read, checksums --------------------------------------------------------------
def test_small_upload_is_multipart_and_reads_back_with_checksums(localcloud, bucket):
    data = b'{"deploy": "d-1", "step": 1}'
    blob = bucket.blob("journal/d-1.json")
    blob.upload_from_string(data, content_type="application/json")
    inserts = _requests(localcloud, "storage.objects.insert")
    assert [r.query.split("&")[0] for r in inserts] == ["uploadType=multipart"]
    assert blob.size == len(data)
    assert blob.crc32c == _b64_crc32c(data)
    assert blob.md5_hash == base64.b64encode(hashlib.md5(data).digest()).decode()
    got = bucket.get_blob("journal/d-1.json")
    assert got.content_type == "application/json"
    assert got.generation == blob.generation
    # download_as_bytes validates the crc32c from x-goog-hash; a wrong one raises DataCorruption.
    assert got.download_as_bytes() == data
    assert bucket.blob("journal/d-1.json").download_as_bytes() == data


def test_declared_checksum_that_does_not_match_is_refused(bucket):
    blob = bucket.blob("bad")
    blob.crc32c = _b64_crc32c(b"something else")
    with pytest.raises(gexc.BadRequest) as info:
        blob.upload_from_string(b"payload", checksum=None)
    assert "CRC32C" in info.value.message
    assert bucket.get_blob("bad") is None


def test_large_upload_is_resumable_in_chunks(localcloud, bucket):
    data = os.urandom(9 * 1024 * 1024 + 17)  # above the client's 8 MiB multipart limit
    blob = bucket.blob("big.bin")
    blob.chunk_size = 4 * 1024 * 1024
    blob.upload_from_string(data)
    inserts = _requests(localcloud, "storage.objects.insert")
    assert [r.http_method for r in inserts] == ["POST", "PUT", "PUT", "PUT"]
    assert "uploadType=resumable" in inserts[0].query
    assert [r.status for r in inserts] == [200, 308, 308, 200]
    assert bucket.blob("big.bin").download_as_bytes() == data


def test_streaming_writer_of_unknown_size_uses_resumable_chunks(bucket):
    data = os.urandom(600_000)
    with bucket.blob("stream.bin").open("wb", chunk_size=256 * 1024, if_generation_match=0) as f:
        f.write(data)
    assert bucket.blob("stream.bin").download_as_bytes() == data


def test_media_upload(localcloud, bucket):
    import requests

    url = f"{localcloud.endpoint}/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name=raw%2Fa.txt"
    resp = requests.post(url, data=b"hello", headers={"Content-Type": "text/plain"}, timeout=10)
    assert resp.status_code == 200
    body = resp.json()
    assert body["name"] == "raw/a.txt"
    assert body["size"] == "5"
    assert body["generation"].isdigit()  # int64 rendered as a JSON string, as GCS does
    assert bucket.blob("raw/a.txt").download_as_bytes() == b"hello"


def test_ranged_download(bucket):
    bucket.blob("r").upload_from_string(b"0123456789")
    assert bucket.blob("r").download_as_bytes(start=2, end=5) == b"2345"


def test_object_names_with_slashes_and_special_characters(bucket, gcs):
    name = "dir/sub dir/100%/ünïcode?.json"
    bucket.blob(name).upload_from_string(b"x")
    assert bucket.get_blob(name).name == name
    assert [b.name for b in gcs.list_blobs(BUCKET)] == [name]
    bucket.blob(name).delete()
    assert bucket.get_blob(name) is None


def test_object_fields_and_generation_shape(localcloud, bucket):
    import requests

    bucket.blob("f.json").upload_from_string(b"{}", content_type="application/json")
    body = requests.get(f"{localcloud.endpoint}/storage/v1/b/{BUCKET}/o/f.json", timeout=10).json()
    for key in ("kind", "id", "selfLink", "mediaLink", "name", "bucket", "generation", "metageneration"):
        assert key in body
    assert body["kind"] == "storage#object"
    assert isinstance(body["generation"], str)
    assert isinstance(body["size"], str)
    # generations are microsecond timestamps taken from the world's clock
    assert abs(int(body["generation"]) / 1e6 - localcloud.world.clock()) < 60


def test_generations_strictly_increase(bucket):
    gens = []
    for i in range(20):
        blob = bucket.blob("counter")
        blob.upload_from_string(str(i).encode())
        gens.append(blob.generation)
    assert gens == sorted(gens)
    assert len(set(gens)) == len(gens)


# ---- list ------------------------------------------------------------------------------------------
def test_list_with_prefix_and_delimiter(gcs, bucket):
    for name in ["journal/a.json", "journal/b.json", "journal/old/c.json", "lock", "other/x"]:
        bucket.blob(name).upload_from_string(b"x")
    assert [b.name for b in gcs.list_blobs(BUCKET, prefix="journal/")] == [
        "journal/a.json",
        "journal/b.json",
        "journal/old/c.json",
    ]
    it = gcs.list_blobs(BUCKET, prefix="journal/", delimiter="/")
    assert [b.name for b in it] == ["journal/a.json", "journal/b.json"]
    assert it.prefixes == {"journal/old/"}
    top = gcs.list_blobs(BUCKET, delimiter="/")
    assert [b.name for b in top] == ["lock"]
    assert top.prefixes == {"journal/", "other/"}


def test_list_pages(gcs, bucket):
    names = [f"n{i:02d}" for i in range(7)]
    for name in names:
        bucket.blob(name).upload_from_string(b"x")
    pages = list(gcs.list_blobs(BUCKET, max_results=None, page_size=3).pages)
    assert [len(list(p)) for p in pages] == [3, 3, 1]
    assert [b.name for b in gcs.list_blobs(BUCKET, page_size=2)] == names


def test_empty_list_has_no_items(gcs):
    assert list(gcs.list_blobs(BUCKET)) == []


# ---- delete and 404s -------------------------------------------------------------------------------
def test_delete_then_404(bucket):
    bucket.blob("gone").upload_from_string(b"x")
    bucket.blob("gone").delete()
    with pytest.raises(gexc.NotFound) as info:
        bucket.blob("gone").delete()
    assert info.value.message.endswith(f": No such object: {BUCKET}/gone")
    assert info.value.errors[0]["reason"] == "notFound"
    with pytest.raises(gexc.NotFound):
        bucket.blob("gone").download_as_bytes()
    assert not bucket.blob("gone").exists()


# ---- preconditions ---------------------------------------------------------------------------------
def test_if_generation_match_zero_succeeds_once_then_412(bucket):
    bucket.blob("lock").upload_from_string(b"holder-1", if_generation_match=0)
    with pytest.raises(gexc.PreconditionFailed) as info:
        bucket.blob("lock").upload_from_string(b"holder-2", if_generation_match=0)
    assert info.value.code == 412
    assert info.value.response.json()["error"]["errors"] == [
        {
            "message": "At least one of the pre-conditions you specified did not hold.",
            "domain": "global",
            "reason": "conditionNotMet",
        }
    ]
    assert bucket.blob("lock").download_as_bytes() == b"holder-1"


def test_if_generation_match_on_replace_and_delete(bucket):
    blob = bucket.blob("j")
    blob.upload_from_string(b"v1")
    g1 = blob.generation
    blob.upload_from_string(b"v2", if_generation_match=g1)
    g2 = blob.generation
    assert g2 > g1
    with pytest.raises(gexc.PreconditionFailed):
        bucket.blob("j").upload_from_string(b"v3", if_generation_match=g1)
    with pytest.raises(gexc.PreconditionFailed):
        bucket.blob("j").delete(if_generation_match=g1)
    # a nonzero ifGenerationMatch on a missing object is a 412 too
    with pytest.raises(gexc.PreconditionFailed):
        bucket.blob("never").upload_from_string(b"x", if_generation_match=g1)
    bucket.blob("j").delete(if_generation_match=g2)
    assert bucket.get_blob("j") is None


def test_if_generation_not_match(bucket):
    blob = bucket.blob("n")
    blob.upload_from_string(b"v1")
    with pytest.raises(gexc.PreconditionFailed):
        bucket.blob("n").upload_from_string(b"v2", if_generation_not_match=blob.generation)
    bucket.blob("n").upload_from_string(b"v2", if_generation_not_match=blob.generation + 1)
    # a read whose NotMatch condition fails is "304 Not Modified"
    current = bucket.get_blob("n")
    with pytest.raises(gexc.NotModified):
        bucket.blob("n").reload(if_generation_not_match=current.generation)
    # "If no live object exists, the precondition fails."
    with pytest.raises(gexc.PreconditionFailed):
        bucket.blob("absent").upload_from_string(b"x", if_generation_not_match=5)


def test_if_metageneration_match(bucket):
    blob = bucket.blob("m")
    blob.upload_from_string(b"x")
    blob.metadata = {"owner": "d-1"}
    blob.patch(if_metageneration_match=1)
    assert blob.metageneration == 2
    assert blob.metadata == {"owner": "d-1"}
    stale = bucket.blob("m")
    stale.metadata = {"owner": "d-2"}
    with pytest.raises(gexc.PreconditionFailed):
        stale.patch(if_metageneration_match=1)
    with pytest.raises(gexc.PreconditionFailed):
        bucket.blob("m").upload_from_string(b"y", if_metageneration_match=1)
    bucket.blob("m").upload_from_string(b"y", if_metageneration_match=2)
    assert bucket.get_blob("m").metageneration == 1  # a new generation starts at metageneration 1


def test_conditional_download(bucket):
    blob = bucket.blob("c")
    blob.upload_from_string(b"data")
    assert bucket.blob("c").download_as_bytes(if_generation_match=blob.generation) == b"data"
    with pytest.raises(gexc.PreconditionFailed):
        bucket.blob("c").download_as_bytes(if_generation_match=blob.generation + 1)


def test_concurrent_create_if_absent_has_exactly_one_winner(localcloud, gcs):
    """Eight writers race to take the lock object with if_generation_match=0: one wins."""
    n = 8
    barrier = threading.Barrier(n)
    outcomes: list[str] = []
    guard = threading.Lock()

    def writer(i: int) -> None:
        client = Clients(endpoint=localcloud.endpoint, project=localcloud.world.project).storage()
        blob = client.bucket(BUCKET).blob("deploy.lock")
        barrier.wait(10)
        try:
            blob.upload_from_string(f"holder-{i}".encode(), if_generation_match=0)
            result = f"won:{i}"
        except gexc.PreconditionFailed:
            result = "lost"
        with guard:
            outcomes.append(result)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    winners = [o for o in outcomes if o.startswith("won")]
    assert len(outcomes) == n
    assert len(winners) == 1
    holder = winners[0].split(":")[1]
    assert gcs.bucket(BUCKET).blob("deploy.lock").download_as_bytes() == f"holder-{holder}".encode()


def test_concurrent_read_modify_write_never_loses_an_update(localcloud, gcs):
    """Writers append to one journal object with if_generation_match, retrying on 412: no append is lost."""
    gcs.bucket(BUCKET).blob("journal").upload_from_string(b"")
    n, per = 4, 5

    def writer(i: int) -> None:
        client = Clients(endpoint=localcloud.endpoint, project=localcloud.world.project).storage()
        b = client.bucket(BUCKET)
        for j in range(per):
            while True:
                current = b.get_blob("journal")
                try:
                    # follows mediaLink (?generation=G): a 404 once G is replaced, as in GCS without versioning
                    body = current.download_as_bytes(if_generation_match=current.generation)
                    b.blob("journal").upload_from_string(
                        body + f"{i}.{j}\n".encode(), if_generation_match=current.generation
                    )
                    break
                except (gexc.PreconditionFailed, gexc.NotFound):
                    continue

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    lines = gcs.bucket(BUCKET).blob("journal").download_as_bytes().decode().split()
    assert sorted(lines) == sorted(f"{i}.{j}" for i in range(n) for j in range(per))


# ---- endpoint configuration ------------------------------------------------------------------------
def test_storage_emulator_host_env_var(localcloud, monkeypatch):
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", localcloud.endpoint)
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    client = storage.Client()  # anonymous credentials and no project, as the client does for emulators
    client._http.trust_env = False
    bucket = client.create_bucket("emulated")
    bucket.blob("x").upload_from_string(b"via env", if_generation_match=0)
    assert client.bucket("emulated").blob("x").download_as_bytes() == b"via env"
    assert "emulated" in [b.name for b in client.list_buckets()]
    with pytest.raises(gexc.PreconditionFailed):
        bucket.blob("x").upload_from_string(b"again", if_generation_match=0)


# ---- fault injection and seeding -------------------------------------------------------------------
def test_injected_fault_uses_storage_error_shape(localcloud, gcs):
    from deployer.localcloud.world import FaultRule

    gcs.bucket(BUCKET).blob("x").upload_from_string(b"x")
    localcloud.world.faults.add(FaultRule(method="storage.objects.get", status=403))
    with pytest.raises(gexc.Forbidden) as info:
        gcs.bucket(BUCKET).get_blob("x")
    assert info.value.errors[0]["reason"] == "forbidden"
    assert [r.fault for r in _requests(localcloud, "storage.objects.get")] == [True]
    assert gcs.bucket(BUCKET).get_blob("x") is not None  # the fault was for one call only


def test_seed_creates_buckets_and_reset_forgets_them(localcloud, clients):
    from deployer.localcloud.api.control import seed_world

    seed_world(localcloud.world, {"project": "chat-staging", "buckets": [{"name": "deployer-state"}]})
    gcs = Clients(endpoint=localcloud.endpoint, project="chat-staging").storage()
    assert [b.name for b in gcs.list_buckets()] == ["deployer-state"]
    localcloud.world.reset()
    assert list(gcs.list_buckets()) == []


def test_seed_rejects_malformed_buckets(localcloud):
    import requests

    resp = requests.post(f"{localcloud.endpoint}/_localcloud/seed", data="buckets: [{nme: x}]\n", timeout=10)
    assert resp.status_code == 400
    assert "bucket" in resp.json()["error"]["message"]
