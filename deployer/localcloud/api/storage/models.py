"""State and rules of the emulated Cloud Storage JSON API (buckets and objects).

What it enforces, each from Google's documentation of the JSON API:

- Generations. "The generation number of an object changes each time its data is replaced" and is
  the write time in microseconds (GCS renders ``"generation": "1700000000123456"``, an int64 as a JSON
  string). Here: ``int(world.clock() * 1e6)``, bumped by one when two writes land in the same
  microsecond, so generations strictly increase. The metageneration starts at 1 for each new
  generation and increases with every metadata update.
- Preconditions (objects.insert/get/patch/delete query parameters, JSON API reference):
  ``ifGenerationMatch`` "Makes the operation conditional on whether the object's current generation
  matches the given value. Setting to 0 makes the operation succeed only if there are no live
  versions of the object." ``ifGenerationNotMatch`` "... If no live object exists, the precondition
  fails. Setting to 0 makes the operation succeed only if there is a live version of the object."
  Failure is 412 ``conditionNotMet`` "At least one of the pre-conditions you specified did not
  hold." For reads (objects.get, media download), a failed *NotMatch* condition is "304 Not
  Modified" (storage docs, request-preconditions: "If the values match, the request fails with a
  304 Not Modified response"). Doubt: that page does not say what a *write* with a failed
  ``ifGenerationNotMatch`` answers; we answer 412 as HTTP (RFC 9110 §13.2.1) prescribes.
- Checksums. ``md5Hash`` and ``crc32c`` are base64 of the digest (crc32c big-endian), as GCS renders
  them; an upload that declares a hash which does not match the data is refused with 400.
- Names. Bucket names: 3–63 characters of lowercase letters, digits, ``-``, ``_`` and ``.``, starting
  and ending with a letter or digit ("Bucket naming requirements"). Object names: 1–1024 bytes of
  UTF-8, no carriage return or line feed, not ``.`` or ``..`` ("Object naming requirements").

The check-then-write of every mutation happens under one lock, so two concurrent writers with the
same ``ifGenerationMatch`` can never both win.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from dataclasses import dataclass, field
from typing import Any

import google_crc32c

from deployer import facts
from deployer.localcloud.api.common import ApiError
from deployer.localcloud.world import World

PRECONDITION_MESSAGE = "At least one of the pre-conditions you specified did not hold."
BUCKET_NOT_FOUND = "The specified bucket does not exist."
BUCKET_EXISTS = "Your previous request to create the named bucket succeeded and you already own it."
BUCKET_NOT_EMPTY = "The bucket you tried to delete is not empty."

# Bucket naming requirements: deployer.facts.gcs_bucket_name_problem (shared with the config's state.bucket).
OBJECT_NAME_MAX_BYTES = 1024

# Writable object fields we keep (objects resource, JSON API); output-only ones are ignored.
WRITABLE_OBJECT_FIELDS = (
    "contentType",
    "contentEncoding",
    "contentDisposition",
    "contentLanguage",
    "cacheControl",
    "customTime",
    "metadata",
)
STORAGE_CLASSES = ("STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE", "MULTI_REGIONAL", "REGIONAL")
MULTI_REGIONS = ("US", "EU", "ASIA")
DUAL_REGIONS = ("NAM4", "EUR4", "ASIA1", "EUR5", "EUR7", "EUR8")


def crc32c_b64(data: bytes) -> str:
    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def object_etag(generation: int, metageneration: int) -> str:
    """GCS object etags are base64 of a tiny protobuf: field 1 = generation, field 2 = metageneration
    (e.g. ``"CJ+Hq4Xy7okDEAE="``); bucket etags carry only the metageneration (``"CAE="``)."""
    return base64.b64encode(b"\x08" + _varint(generation) + b"\x10" + _varint(metageneration)).decode()


def bucket_etag(metageneration: int) -> str:
    return base64.b64encode(b"\x08" + _varint(metageneration)).decode()


@dataclass
class StoredObject:
    bucket: str
    name: str
    data: bytes
    generation: int
    metageneration: int
    created: float
    updated: float
    fields: dict[str, Any]  # the writable fields (contentType, metadata, ...)
    md5: str = ""
    crc32c: str = ""

    def __post_init__(self) -> None:
        if not self.md5:
            self.md5 = md5_b64(self.data)
        if not self.crc32c:
            self.crc32c = crc32c_b64(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def content_type(self) -> str:
        return str(self.fields.get("contentType") or "application/octet-stream")

    @property
    def etag(self) -> str:
        return object_etag(self.generation, self.metageneration)


@dataclass
class Bucket:
    name: str
    project: str
    project_number: str
    location: str
    storage_class: str
    created: float
    updated: float
    metageneration: int = 1
    labels: dict[str, str] = field(default_factory=dict)
    objects: dict[str, StoredObject] = field(default_factory=dict)

    @property
    def location_type(self) -> str:
        if self.location in MULTI_REGIONS:
            return "multi-region"
        if self.location in DUAL_REGIONS:
            return "dual-region"
        return "region"


@dataclass(frozen=True)
class Preconditions:
    if_generation_match: int | None = None
    if_generation_not_match: int | None = None
    if_metageneration_match: int | None = None
    if_metageneration_not_match: int | None = None

    @property
    def any(self) -> bool:
        return any(
            v is not None
            for v in (
                self.if_generation_match,
                self.if_generation_not_match,
                self.if_metageneration_match,
                self.if_metageneration_not_match,
            )
        )


def precondition_failed() -> ApiError:
    return ApiError(412, PRECONDITION_MESSAGE, reason="conditionNotMet")


class NotModified(ApiError):
    """A conditional read whose *NotMatch* condition failed: HTTP 304, which carries no body."""

    def __init__(self) -> None:
        super().__init__(304, "Not Modified", reason="notModified")


def not_modified() -> ApiError:
    return NotModified()


def check_preconditions(current: StoredObject | None, pre: Preconditions, *, read: bool) -> None:
    """Raise the error Cloud Storage answers when ``pre`` does not hold for ``current`` (None = no live
    object). Pure: no state, no I/O."""
    live_gen = current.generation if current is not None else 0
    if pre.if_generation_match is not None and pre.if_generation_match != live_gen:
        raise precondition_failed()
    if pre.if_metageneration_match is not None and (
        current is None or current.metageneration != pre.if_metageneration_match
    ):
        raise precondition_failed()
    # ifGenerationNotMatch: "If no live object exists, the precondition fails."
    if pre.if_generation_not_match is not None and (current is None or live_gen == pre.if_generation_not_match):
        raise not_modified() if read and current is not None else precondition_failed()
    if pre.if_metageneration_not_match is not None and (
        current is None or current.metageneration == pre.if_metageneration_not_match
    ):
        raise not_modified() if read and current is not None else precondition_failed()


def validate_bucket_name(name: str) -> None:
    if facts.gcs_bucket_name_problem(name) is not None:
        raise ApiError(400, f"Invalid bucket name: '{name}'", reason="invalid")


def validate_object_name(name: str) -> None:
    if not name:
        raise ApiError(400, "Required", reason="required")
    encoded = name.encode("utf-8", errors="surrogatepass")
    if len(encoded) > OBJECT_NAME_MAX_BYTES or "\r" in name or "\n" in name or name in (".", ".."):
        raise ApiError(400, f"The specified object name is not valid: '{name[:64]}'", reason="invalid")


def check_declared_hashes(declared: dict[str, Any], data: bytes) -> tuple[str, str]:
    """The (md5, crc32c) of ``data``; 400 when the uploader declared a different one."""
    md5, crc = md5_b64(data), crc32c_b64(data)
    want_crc = declared.get("crc32c")
    if want_crc and want_crc != crc:
        raise ApiError(400, f'Provided CRC32C "{want_crc}" doesn\'t match calculated CRC32C "{crc}".', reason="invalid")
    want_md5 = declared.get("md5Hash")
    if want_md5 and want_md5 != md5:
        raise ApiError(400, f'Provided MD5 hash "{want_md5}" doesn\'t match calculated MD5 hash "{md5}".')
    return md5, crc


def object_not_found(bucket: str, name: str) -> ApiError:
    return ApiError(404, f"No such object: {bucket}/{name}", reason="notFound")


def bucket_not_found() -> ApiError:
    return ApiError(404, BUCKET_NOT_FOUND, reason="notFound")


@dataclass
class ResumableUpload:
    """A resumable upload session (uploadType=resumable): bytes received so far, finalized on the
    last chunk, when preconditions are checked again against the then-live object."""

    upload_id: str
    bucket: str
    name: str
    fields: dict[str, Any]
    declared: dict[str, Any]
    pre: Preconditions
    total: int | None = None
    received: bytearray = field(default_factory=bytearray)
    done: StoredObject | None = None


@dataclass(frozen=True)
class ListPage:
    items: list[StoredObject]
    prefixes: list[str]
    next_page_token: str | None


class State:
    """Buckets and their objects, for one world."""

    def __init__(self, world: World) -> None:
        self.world = world
        self._lock = threading.RLock()
        self.buckets: dict[str, Bucket] = {}
        self.uploads: dict[str, ResumableUpload] = {}
        self._last_generation = 0
        self._project_numbers: dict[str, str] = {}

    def reset(self) -> None:
        with self._lock:
            self.buckets.clear()
            self.uploads.clear()
            self._last_generation = 0
            self._project_numbers.clear()

    seed_keys = ("buckets",)  # the seed document's top-level keys this reads

    def seed(self, doc: dict[str, Any]) -> None:
        """Create ``doc["buckets"]`` (a list of ``{name, location?, storageClass?, labels?}``)."""
        buckets = doc.get("buckets") or []
        if not isinstance(buckets, list):
            raise ApiError(400, "seed: 'buckets' must be a list of {name: ...} mappings")
        for entry in buckets:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise ApiError(400, f"seed: each bucket needs a name, got {entry!r}")
            self.insert_bucket(self.world.project, entry)

    # ---- ids and time ----------------------------------------------------------------------
    def _next_generation(self) -> int:
        gen = int(self.world.clock() * 1_000_000)
        if gen <= self._last_generation:
            gen = self._last_generation + 1
        self._last_generation = gen
        return gen

    def project_number(self, project: str) -> str:
        if project not in self._project_numbers:
            self._project_numbers[project] = str(self.world.rng.randrange(10**11, 10**12))
        return self._project_numbers[project]

    # ---- buckets ---------------------------------------------------------------------------
    def insert_bucket(self, project: str, body: dict[str, Any]) -> Bucket:
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "Required", reason="required")
        validate_bucket_name(name)
        storage_class = str(body.get("storageClass") or "STANDARD").upper()
        if storage_class not in STORAGE_CLASSES:
            raise ApiError(400, f"Invalid argument: storage class '{storage_class}'.", reason="invalid")
        labels = body.get("labels") or {}
        if not isinstance(labels, dict):
            raise ApiError(400, "Invalid value for labels.", reason="invalid")
        with self._lock:
            if name in self.buckets:
                raise ApiError(409, BUCKET_EXISTS, reason="conflict")
            now = self.world.clock()
            bucket = Bucket(
                name=name,
                project=project,
                project_number=self.project_number(project),
                location=str(body.get("location") or "US").upper(),
                storage_class=storage_class,
                created=now,
                updated=now,
                labels={str(k): str(v) for k, v in labels.items()},
            )
            self.buckets[name] = bucket
            return bucket

    def get_bucket(self, name: str) -> Bucket:
        bucket = self.buckets.get(name)
        if bucket is None:
            raise bucket_not_found()
        return bucket

    def list_buckets(self, project: str | None, prefix: str = "") -> list[Bucket]:
        with self._lock:
            return [
                b
                for n, b in sorted(self.buckets.items())
                if (project is None or b.project == project) and n.startswith(prefix)
            ]

    def delete_bucket(self, name: str) -> None:
        with self._lock:
            bucket = self.get_bucket(name)
            if bucket.objects:
                raise ApiError(409, BUCKET_NOT_EMPTY, reason="conflict")
            del self.buckets[name]

    # ---- objects ---------------------------------------------------------------------------
    def get_object(
        self, bucket: str, name: str, pre: Preconditions = Preconditions(), generation: int | None = None
    ) -> StoredObject:
        with self._lock:
            b = self.get_bucket(bucket)
            obj = b.objects.get(name)
            if obj is None or (generation is not None and obj.generation != generation):
                # A conditional read of a missing object is a 404, not a 412.
                raise object_not_found(bucket, name)
            check_preconditions(obj, pre, read=True)
            return obj

    def put_object(
        self,
        bucket: str,
        name: str,
        data: bytes,
        fields: dict[str, Any],
        pre: Preconditions = Preconditions(),
        declared: dict[str, Any] | None = None,
    ) -> StoredObject:
        """Write a new generation of ``bucket/name`` if ``pre`` holds for the live object (atomic)."""
        validate_object_name(name)
        md5, crc = check_declared_hashes(declared or {}, data)
        with self._lock:
            b = self.get_bucket(bucket)
            check_preconditions(b.objects.get(name), pre, read=False)
            now = self.world.clock()
            obj = StoredObject(
                bucket=bucket,
                name=name,
                data=bytes(data),
                generation=self._next_generation(),
                metageneration=1,
                created=now,
                updated=now,
                fields=_writable(fields),
                md5=md5,
                crc32c=crc,
            )
            b.objects[name] = obj
            return obj

    def patch_object(
        self, bucket: str, name: str, patch: dict[str, Any], pre: Preconditions = Preconditions()
    ) -> StoredObject:
        """Update metadata (a new metageneration, same generation). ``metadata`` keys set to null are removed."""
        with self._lock:
            b = self.get_bucket(bucket)
            obj = b.objects.get(name)
            if obj is None:
                raise object_not_found(bucket, name)
            check_preconditions(obj, pre, read=False)
            fields = dict(obj.fields)
            for key, value in _writable(patch, keep_none=True).items():
                if key == "metadata" and isinstance(value, dict):
                    merged = dict(fields.get("metadata") or {})
                    for mk, mv in value.items():
                        if mv is None:
                            merged.pop(mk, None)
                        else:
                            merged[mk] = str(mv)
                    fields["metadata"] = merged
                elif value is None:
                    fields.pop(key, None)
                else:
                    fields[key] = value
            obj.fields = fields
            obj.metageneration += 1
            obj.updated = self.world.clock()
            return obj

    def delete_object(
        self, bucket: str, name: str, pre: Preconditions = Preconditions(), generation: int | None = None
    ) -> None:
        with self._lock:
            b = self.get_bucket(bucket)
            obj = b.objects.get(name)
            if obj is None or (generation is not None and obj.generation != generation):
                raise object_not_found(bucket, name)
            check_preconditions(obj, pre, read=False)
            del b.objects[name]

    def list_objects(
        self,
        bucket: str,
        *,
        prefix: str = "",
        delimiter: str = "",
        max_results: int | None = None,
        page_token: str | None = None,
        start_offset: str = "",
        end_offset: str = "",
        include_trailing_delimiter: bool = False,
    ) -> ListPage:
        """Objects in lexicographic order; with a delimiter, names that continue past it after the
        prefix collapse into ``prefixes`` (one per distinct ``prefix...delimiter``)."""
        with self._lock:
            b = self.get_bucket(bucket)
            names = sorted(b.objects)
            objects = dict(b.objects)
        entries: list[tuple[str, StoredObject | None]] = []
        seen_prefixes: set[str] = set()
        for name in names:
            if not name.startswith(prefix):
                continue
            if start_offset and name < start_offset:
                continue
            if end_offset and name >= end_offset:
                continue
            if delimiter:
                rest = name[len(prefix) :]
                cut = rest.find(delimiter)
                if cut >= 0:
                    common = prefix + rest[: cut + len(delimiter)]
                    if common not in seen_prefixes:
                        seen_prefixes.add(common)
                        entries.append((common, None))
                    if not (include_trailing_delimiter and cut + len(delimiter) == len(rest)):
                        continue
            entries.append((name, objects[name]))
        entries.sort(key=lambda e: (e[0], e[1] is not None))
        keys = [(n, o is not None) for n, o in entries]
        start = 0
        if page_token:
            after = _decode_token(page_token)
            while start < len(keys) and keys[start] <= after:
                start += 1
        stop = len(entries) if not max_results else min(len(entries), start + max_results)
        page = entries[start:stop]
        token = _encode_token(keys[stop - 1]) if stop < len(entries) and page else None
        return ListPage(
            items=[o for _n, o in page if o is not None],
            prefixes=[n for n, o in page if o is None],
            next_page_token=token,
        )

    # ---- resumable uploads -----------------------------------------------------------------
    def start_upload(
        self,
        bucket: str,
        name: str,
        fields: dict[str, Any],
        pre: Preconditions,
        declared: dict[str, Any],
        total: int | None,
    ) -> ResumableUpload:
        validate_object_name(name)
        with self._lock:
            b = self.get_bucket(bucket)
            # Checked here to fail fast, and again when the last chunk arrives.
            check_preconditions(b.objects.get(name), pre, read=False)
            upload = ResumableUpload(
                upload_id=self.world.lower_alnum(32),
                bucket=bucket,
                name=name,
                fields=_writable(fields),
                declared=declared,
                pre=pre,
                total=total,
            )
            self.uploads[upload.upload_id] = upload
            return upload

    def get_upload(self, upload_id: str) -> ResumableUpload:
        upload = self.uploads.get(upload_id)
        if upload is None:
            raise ApiError(404, "No such upload session.", reason="notFound")
        return upload

    def upload_chunk(
        self, upload_id: str, start: int | None, data: bytes, total: int | None, declared: dict[str, Any]
    ) -> ResumableUpload:
        """Append one chunk (``start`` None = a status query). Finalizes when ``total`` bytes are in."""
        with self._lock:
            upload = self.get_upload(upload_id)
            if upload.done is not None:
                return upload
            if total is not None:
                if upload.total is not None and upload.total != total:
                    raise ApiError(400, "The total size of the upload changed.", reason="invalid")
                upload.total = total
            if start is not None:
                have = len(upload.received)
                if start > have:
                    raise ApiError(400, f"Invalid request. The chunk starts at {start} but {have} bytes were received.")
                # A retried chunk may overlap what we already have: keep only the new tail.
                upload.received += data[have - start :]
            if upload.total is not None and len(upload.received) > upload.total:
                raise ApiError(400, "Invalid request. More data was sent than the declared size.")
            if upload.total is not None and len(upload.received) == upload.total:
                hashes = {**upload.declared, **declared}
                upload.done = self.put_object(
                    upload.bucket, upload.name, bytes(upload.received), upload.fields, upload.pre, hashes
                )
                upload.received = bytearray()
            return upload


def _writable(fields: dict[str, Any], keep_none: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in WRITABLE_OBJECT_FIELDS:
        if key not in fields:
            continue
        value = fields[key]
        if value is None and not keep_none:
            continue
        if key == "metadata" and isinstance(value, dict) and not keep_none:
            value = {str(k): str(v) for k, v in value.items() if v is not None}
        out[key] = value
    return out


def _encode_token(key: tuple[str, bool]) -> str:
    """A page token: the last (name, is-object) listed, so a prefix and an object of the same name
    (``includeTrailingDelimiter``) never hide each other across pages."""
    return base64.urlsafe_b64encode(("o" if key[1] else "p").encode() + key[0].encode()).decode()


def _decode_token(token: str) -> tuple[str, bool]:
    try:
        raw = base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "Invalid page token.", reason="invalid") from exc
    if not raw or raw[0] not in "op":
        raise ApiError(400, "Invalid page token.", reason="invalid")
    return raw[1:], raw[0] == "o"


def install(world: World) -> State:
    state = State(world)
    world.apis["storage"] = state
    return state
