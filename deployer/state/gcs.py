"""A ``StateStore`` in a Cloud Storage bucket (team state: Cloud Build, several engineers).

Each key is the object ``<prefix>/<key>`` in the bucket. The store's generation *is* the object's
Cloud Storage generation, and ``if_generation`` is sent as the ``ifGenerationMatch`` precondition
("Makes the operation conditional on whether the object's current generation matches the given
value. Setting to 0 makes the operation succeed only if there are no live versions of the object."
— JSON API objects.insert/delete), so two writers can never both win: the loser gets HTTP 412
``conditionNotMet`` and we raise ``StaleStateError``. Cloud Storage answers **404** instead of 412
when the object is gone and the request names its generation (a conditional delete of a missing
object; following a replaced generation), so where the generation matters a 404 is a lost race too —
unless the *bucket* is missing, which is a configuration error and says so.

Calls go through the real ``google-cloud-storage`` client from ``Clients.storage()`` (Google, or the
local cloud's storage endpoint) with the library's own retry **off** (``retry=None``): its default
retries a conditional upload blindly, which would turn "our write landed but the answer was lost"
into a false 412. Instead every call runs under ``deployer.gcp.retry.call`` (429, 5xx, resets,
timeouts), and a mutation whose outcome is unknown (a 5xx or a reset/timeout after the request was
sent, ``retry.outcome_unknown``) is settled before anything is sent again:

1. re-read the object (data and generation in one GET);
2. ``settle_write`` decides, purely: it holds *our* bytes at a generation other than the one we
   conditioned on → our write landed, return that generation; it is still at the generation we
   conditioned on (or still absent for ``if_generation=0``) → it did not land, send it again with
   the same precondition; anything else → someone else won, ``StaleStateError``;
3. and if a retry is then refused with 412 after an unknown attempt (our first write was still in
   flight and landed after the re-read), the same comparison runs once more before calling it stale.

"Our bytes" means byte-for-byte identical data. Deployer's state objects name their writer (lock:
deploy id, owner, times; journal: every record so far), so another writer producing identical bytes
is not a case that arises; a store used for anonymous identical blobs would need a nonce.

Errors: a lost precondition is ``StaleStateError``; every other failure (retries exhausted, 403,
missing bucket) is a ``StateError`` naming the object as ``gs://bucket/prefix/key`` (``where``), raised from
the cause.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import google.api_core.exceptions as gexc
import structlog

from deployer.errors import CloudError, StaleStateError, StateError
from deployer.gcp.retry import DEFAULT_POLICY, READ_POLICY, RetryEvent, RetryPolicy, call, log_retry, outcome_unknown
from deployer.state import KEY_RE, check_key

if TYPE_CHECKING:
    from collections.abc import Callable

    from deployer.gcp.clients import Clients

_log = structlog.get_logger("deployer.state.gcs")

# Cloud Storage's message for a missing bucket (JSON API error body, "notFound"); a missing object is
# "No such object: BUCKET/NAME". Both are 404, so the message is the only way to tell them apart
# without an extra call that would need storage.buckets.get (docs/iam.md keeps the role to objects.*).
BUCKET_MISSING_MESSAGE = "The specified bucket does not exist."
DEFAULT_TIMEOUT = 30.0  # seconds per HTTP call (the library's default is 60)


# ---- what an unknown outcome turned out to be (pure) ---------------------------------------------------


@dataclass(frozen=True)
class Landed:
    """Our mutation took effect; for a write, ``generation`` is the object's new generation."""

    generation: int | None = None


@dataclass(frozen=True)
class NotLanded:
    """The object is as it was before our attempt: sending it again with the same precondition is safe."""


@dataclass(frozen=True)
class LostTo:
    """Someone else changed the object: ``generation`` is what it is at now (``None`` = deleted)."""

    generation: int | None


Outcome = Landed | NotLanded | LostTo


def settle_write(ours: bytes, if_generation: int | None, current: tuple[bytes, int] | None) -> Outcome:
    """After a write of ``ours`` whose answer was lost, decide from the object as it is now."""
    if current is not None:
        data, generation = current
        if data == ours and generation != if_generation:
            return Landed(generation)
        if if_generation is None or generation == if_generation:
            return NotLanded()
        return LostTo(generation)
    if if_generation is None or if_generation == 0:
        # Absent: ours did not land (or landed and was deleted since; creating again is what the
        # caller asked for either way).
        return NotLanded()
    return LostTo(None)


def settle_delete(if_generation: int | None, current: tuple[bytes, int] | None) -> Outcome:
    """After a delete whose answer was lost, decide from the object as it is now."""
    if current is None:
        return Landed()
    if if_generation is None or current[1] == if_generation:
        return NotLanded()
    return LostTo(current[1])


# ---- the store -------------------------------------------------------------------------------------


def _is_missing_bucket(exc: BaseException) -> bool:
    return isinstance(exc, gexc.NotFound) and BUCKET_MISSING_MESSAGE in str(exc)


def normalize_prefix(prefix: str) -> str:
    """``"deployer"``, ``"/deployer/"`` → ``"deployer/"``; ``""`` → ``""`` (the bucket's root)."""
    if "\n" in prefix or "\r" in prefix:
        raise ValueError(f"invalid state prefix {prefix!r}")
    stripped = prefix.strip("/")
    return f"{stripped}/" if stripped else ""


class GcsStateStore:
    """``StateStore`` over ``gs://bucket/prefix/`` through ``clients.storage()``.

    ``policy`` / ``read_policy`` are the retry policies for mutations and reads (inject ``sleep`` in
    tests); ``timeout`` is per HTTP call. The client is built on first use, so constructing a store
    costs nothing and imports nothing heavy.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        clients: Clients | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        policy: RetryPolicy = DEFAULT_POLICY,
        read_policy: RetryPolicy = READ_POLICY,
        on_retry: Callable[[RetryEvent], None] = log_retry,
    ) -> None:
        if not bucket:
            raise ValueError("a gcs state store needs a bucket")
        if clients is None:
            from deployer.gcp.clients import Clients

            clients = Clients()
        self.bucket_name = bucket
        self.prefix = normalize_prefix(prefix)
        self.clients = clients
        self.timeout = timeout
        self.policy = policy
        self.read_policy = read_policy
        self.on_retry = on_retry
        self._bucket: Any = None

    @property
    def url(self) -> str:
        return f"gs://{self.bucket_name}/{self.prefix}"

    def where(self, key: str) -> str:
        """``gs://bucket/prefix/key``: the object as ``gcloud storage cat`` names it."""
        return self.url + check_key(key)

    def __repr__(self) -> str:
        return f"GcsStateStore({self.url!r})"

    # ---- helpers -----------------------------------------------------------------------------
    def _bucket_handle(self) -> Any:
        if self._bucket is None:
            self._bucket = self.clients.storage().bucket(self.bucket_name)
        return self._bucket

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _no_bucket(self, exc: BaseException) -> StateError:
        return StateError(
            f"state bucket {self.bucket_name} does not exist ({self.url})",
            hint=f"create it (gcloud storage buckets create gs://{self.bucket_name}) or fix state.bucket in the config",
            bucket=self.bucket_name,
        )

    def _stale(self, key: str, expected: int | None, actual: int | None) -> StaleStateError:
        want = "absent" if expected == 0 else f"generation {expected}"
        found = "absent" if actual is None else f"at generation {actual}"
        return StaleStateError(
            f"state {key} changed under us: expected {want}, found it {found} ({self.url})",
            key=key,
            expected=expected,
            actual=actual,
        )

    def _fetch(self, name: str) -> tuple[bytes, int] | None:
        """One GET of data and generation together (``x-goog-generation`` of the same response)."""
        blob = self._bucket_handle().blob(name)
        try:
            data = blob.download_as_bytes(retry=None, timeout=self.timeout)
        except gexc.NotFound as exc:
            if _is_missing_bucket(exc):
                raise self._no_bucket(exc) from exc
            return None
        if blob.generation is None:  # pragma: no cover - Cloud Storage always sends x-goog-generation
            raise StateError(f"state object {name} came back without a generation ({self.url})")
        return bytes(data), int(blob.generation)

    def _run(self, fn: Callable[[], Any], *, method: str, key: str, verb: str, policy: RetryPolicy) -> Any:
        try:
            return call(fn, method=method, policy=policy, on_retry=self.on_retry)
        except CloudError as exc:
            where = self.where(key) if KEY_RE.fullmatch(key) else self.url + key  # a list: its prefix, or *
            raise StateError(
                f"cannot {verb} state {where}: {exc.message}",
                hint=exc.hint,
                key=key,
                method=method,
                status=exc.status,
                outcome_unknown=exc.outcome_unknown,
            ) from exc

    def _settled(self, key: str, what: str, outcome: Outcome) -> None:
        _log.info("state.gcs.settled", store=self.url, key=key, call=what, outcome=type(outcome).__name__)

    # ---- StateStore ----------------------------------------------------------------------------
    def read(self, key: str) -> tuple[bytes, int] | None:
        name = self._name(key)
        result: tuple[bytes, int] | None = self._run(
            lambda: self._fetch(name), method="storage.objects.get", key=key, verb="read", policy=self.read_policy
        )
        return result

    def write(self, key: str, data: bytes, *, if_generation: int | None) -> int:
        name = self._name(key)
        if not isinstance(data, bytes | bytearray):
            raise TypeError("state data must be bytes")
        if if_generation is not None and if_generation < 0:
            raise ValueError("if_generation must be None, 0 or a generation")
        ours = bytes(data)
        content_type = "application/json" if key.endswith(".json") else "application/octet-stream"
        unknown = {"pending": False, "ever": False}  # an attempt whose answer was lost: not yet / ever

        def attempt() -> int:
            if unknown["pending"]:
                outcome = settle_write(ours, if_generation, self._fetch(name))
                self._settled(key, "write", outcome)
                unknown["pending"] = False
                if isinstance(outcome, Landed) and outcome.generation is not None:
                    return outcome.generation
                if isinstance(outcome, LostTo):
                    raise self._stale(key, if_generation, outcome.generation)
            blob = self._bucket_handle().blob(name)
            try:
                blob.upload_from_string(
                    ours,
                    content_type=content_type,
                    if_generation_match=if_generation,
                    retry=None,
                    timeout=self.timeout,
                )
            except (gexc.PreconditionFailed, gexc.NotFound) as exc:
                if _is_missing_bucket(exc):
                    raise self._no_bucket(exc) from exc
                current = self._fetch(name)
                if unknown["ever"]:
                    # A retry refused after an attempt whose answer was lost: that attempt may have
                    # landed after we re-read (it was still in flight). Ours, if the bytes are ours.
                    late = settle_write(ours, if_generation, current)
                    self._settled(key, "write", late)
                    if isinstance(late, Landed) and late.generation is not None:
                        return late.generation
                raise self._stale(key, if_generation, current[1] if current else None) from exc
            except Exception as exc:
                if outcome_unknown(exc):
                    unknown["pending"] = unknown["ever"] = True
                raise
            if blob.generation is None:  # pragma: no cover - the insert response always carries it
                raise StateError(f"state object {name} was written but no generation came back ({self.url})")
            return int(blob.generation)

        generation: int = self._run(attempt, method="storage.objects.insert", key=key, verb="write", policy=self.policy)
        return generation

    def delete(self, key: str, *, if_generation: int | None) -> bool:
        name = self._name(key)
        if if_generation == 0:
            raise ValueError("delete with if_generation=0 can never succeed")
        if if_generation is not None and if_generation < 0:
            raise ValueError("if_generation must be None or a generation")
        unknown = {"pending": False, "ever": False}

        def attempt() -> bool:
            if unknown["pending"]:
                outcome = settle_delete(if_generation, self._fetch(name))
                self._settled(key, "delete", outcome)
                unknown["pending"] = False
                if isinstance(outcome, Landed):
                    return True
                if isinstance(outcome, LostTo):
                    raise self._stale(key, if_generation, outcome.generation)
            blob = self._bucket_handle().blob(name)
            try:
                blob.delete(if_generation_match=if_generation, retry=None, timeout=self.timeout)
            except gexc.NotFound as exc:
                if _is_missing_bucket(exc):
                    raise self._no_bucket(exc) from exc
                if unknown["ever"]:
                    return True  # our earlier attempt (answer lost) removed it
                if if_generation is None:
                    return False
                raise self._stale(key, if_generation, None) from exc
            except gexc.PreconditionFailed as exc:
                current = self._fetch(name)
                if unknown["ever"] and current is None:
                    return True
                raise self._stale(key, if_generation, current[1] if current else None) from exc
            except Exception as exc:
                if outcome_unknown(exc):
                    unknown["pending"] = unknown["ever"] = True
                raise
            return True

        deleted: bool = self._run(attempt, method="storage.objects.delete", key=key, verb="delete", policy=self.policy)
        return deleted

    def list(self, prefix: str) -> list[str]:
        full = self.prefix + prefix
        cut = len(self.prefix)

        def attempt() -> list[str]:
            client = self.clients.storage()
            try:
                blobs = client.list_blobs(
                    self.bucket_name,
                    prefix=full,
                    fields="items(name),nextPageToken",
                    retry=None,
                    timeout=self.timeout,
                )
                return [blob.name for blob in blobs]
            except gexc.NotFound as exc:
                if _is_missing_bucket(exc):
                    raise self._no_bucket(exc) from exc
                raise

        names: list[str] = self._run(
            attempt, method="storage.objects.list", key=prefix or "*", verb="list", policy=self.read_policy
        )
        # Objects under the prefix that are not valid keys (written by hand, say) are not state.
        return sorted(n[cut:] for n in names if KEY_RE.fullmatch(n[cut:]))
