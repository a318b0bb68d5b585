"""The one place that decides what is retried, how, and what a final failure becomes.

- ``is_transient(exc)``: HTTP 429, 500, 502, 503, 504 from Google (``google.api_core.exceptions``
  maps a REST error by status code alone, clientlibs.md §3; 504 is ``GatewayTimeout``, and the gRPC
  ``DeadlineExceeded`` is its subclass, so both count), connection resets and timeouts from
  ``requests`` / ``urllib3`` / the socket layer, and google-auth transport failures. Never: 4xx other
  than 429, TLS or proxy misconfiguration, or anything that is not a cloud error (a bug stays a bug).
- ``RetryPolicy``: a value (tenacity underneath): attempts, initial / max delay, multiplier, jitter
  and a deadline — always an explicit stop. ``sleep`` and ``clock`` are injectable, so tests and
  the orchestrator's abort (a ``sleep`` that raises when the deploy is cancelled) need no real waiting.
- ``call(fn, method=..., policy=...)``: runs ``fn`` and retries only transient errors, logging one
  ``gcp.retry`` event per retry; the final failure becomes ``TransientCloudError`` (gave up),
  ``ConflictError`` (409, 412), ``NotFoundError`` (404) or ``CloudError``, raised ``from`` the
  original exception.

Retrying a *mutation* is only safe when it carries a precondition (Cloud Run ``etag``) or a Compute
``requestId`` (gcp-facts §4.2, §5.1): the caller builds ``fn`` so that every attempt sends the same
ones. Because a reset or a 5xx can hide a write that did land, the error says ``outcome_unknown``
when any attempt ended without a definite answer; a ``ConflictError`` after such an attempt may be
our own earlier write, so the caller re-reads before calling it a foreign change.

Import cost: ``google.api_core.exceptions`` pulls in ``grpc`` (about 70 ms on this machine);
``google.cloud.compute_v1`` (over 1 s) is never imported here.
"""

from __future__ import annotations

import http.client
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import google.api_core.exceptions as gexc
import google.auth.exceptions as gauth
import requests.exceptions as rexc
import structlog
import tenacity
import urllib3.exceptions as uexc

from deployer.errors import CloudError, ConflictError, DeployerError, NotFoundError, TransientCloudError
from deployer.gcp import reach

T = TypeVar("T")

# HTTP statuses worth another attempt (clientlibs.md §3 table: 429 TooManyRequests, 500
# InternalServerError, 502 BadGateway, 503 ServiceUnavailable, 504 GatewayTimeout — not DeadlineExceeded).
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
CONFLICT_STATUSES = frozenset({409, 412})  # 409 Conflict/Aborted (etag, AIP-154); 412 conditionNotMet (fingerprint)
NOT_FOUND_STATUS = 404

_log = structlog.get_logger("deployer.gcp.retry")


# ---- classification (pure) -----------------------------------------------------------------------


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of a Google API error (``None`` for network errors and anything else)."""
    if isinstance(exc, gexc.RetryError):
        return status_of(exc.cause) if exc.cause is not None else None
    if isinstance(exc, gexc.GoogleAPICallError):
        code = exc.code
        return int(code) if isinstance(code, int) else None
    return None


def _network_is_transient(exc: BaseException) -> bool | None:
    """True / False for a network-layer error, None when ``exc`` is not one."""
    # TLS and proxy problems are configuration, not weather (e.g. an endpoint without ``http://``
    # gives an SSLError, clientlibs.md §1): never retried. Checked first: requests' SSLError and
    # ProxyError are subclasses of its ConnectionError.
    if isinstance(exc, (rexc.SSLError, rexc.ProxyError, rexc.InvalidURL, uexc.SSLError, uexc.ProxyError)):
        return False
    if isinstance(exc, uexc.MaxRetryError):
        return exc.reason is None or _network_is_transient(exc.reason) is not False
    if isinstance(exc, (rexc.ConnectionError, rexc.Timeout, rexc.ChunkedEncodingError)):
        return True
    if isinstance(exc, (uexc.ProtocolError, uexc.TimeoutError, uexc.NewConnectionError)):
        return True
    if isinstance(exc, (ConnectionError, TimeoutError, http.client.IncompleteRead)):
        return True  # builtins: ConnectionResetError, BrokenPipeError, RemoteDisconnected, socket timeouts
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether another attempt of the same call may succeed."""
    if isinstance(exc, DeployerError):
        return False  # already decided (e.g. a nested ``call`` gave up): never retry a retry
    if isinstance(exc, gexc.RetryError):
        # The library's own retry ran out (e.g. get_service's 10 s deadline on 503, clientlibs.md §3).
        return exc.cause is not None and is_transient(exc.cause)
    if isinstance(exc, gexc.GoogleAPICallError):
        return status_of(exc) in TRANSIENT_STATUSES
    if isinstance(exc, gauth.TransportError):
        return True  # the token endpoint could not be reached
    if isinstance(exc, gauth.GoogleAuthError):
        return bool(getattr(exc, "retryable", False))
    return bool(_network_is_transient(exc))


def _definitely_not_sent(exc: BaseException) -> bool:
    """A connection that never opened: the request cannot have reached the server."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, (uexc.NewConnectionError, ConnectionRefusedError, rexc.ConnectTimeout)):
            return True
        if isinstance(cur, uexc.MaxRetryError) and cur.reason is not None:
            cur = cur.reason
            continue
        nested = next((a for a in cur.args if isinstance(a, BaseException)), None)
        cur = nested or cur.__cause__ or cur.__context__
    return False


def outcome_unknown(exc: BaseException) -> bool:
    """Whether a call that failed with ``exc`` may nevertheless have been applied by the server.

    Definite answers: any 4xx (including 429: rejected before it was processed) and a connection
    that never opened. Anything else (5xx, resets, read timeouts) leaves the outcome unknown.
    """
    if isinstance(exc, DeployerError):
        return bool(getattr(exc, "outcome_unknown", False))
    status = status_of(exc)
    if status is not None:
        return status >= 500
    if isinstance(exc, (gexc.GoogleAPICallError, gexc.RetryError)):
        return True  # no status at all (e.g. an operation with neither response nor error)
    if _network_is_transient(exc) is not None:
        return not _definitely_not_sent(exc)
    return False


def _reason(exc: BaseException) -> str | None:
    """Google's machine-readable reason: ErrorInfo.reason, Compute's errors[0].reason, or a class name."""
    if isinstance(exc, gexc.RetryError) and exc.cause is not None:
        return _reason(exc.cause)
    if isinstance(exc, gexc.GoogleAPICallError):
        if exc.reason:
            return str(exc.reason)
        for err in exc.errors or []:
            reason = err.get("reason") if isinstance(err, dict) else getattr(err, "reason", None)
            if reason:
                return str(reason)
        return None
    return type(exc).__name__


# api_core prefixes a REST error's message with the request ("PATCH https://run.googleapis.com/v2/...?
# %24alt=json%3Benum-encoding%3Dint: ", clientlibs.md §3); the method name already says which call it was.
_REQUEST_PREFIX = re.compile(r"^(?:GET|POST|PUT|PATCH|DELETE) \S+: ")


def _google_message(text: str) -> str:
    """Google's ``error.message`` when ``text`` starts with a JSON error body (google-cloud-storage's
    downloads put the raw body in the exception, then the status it expected), else ``text``."""
    if not text.lstrip().startswith("{"):
        return text
    try:
        message = json.JSONDecoder().raw_decode(text.lstrip())[0]["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return text
    return str(message) if message else text


def _response_text(exc: BaseException) -> str | None:
    """The body of the HTTP answer behind ``exc`` (``response`` on api_core's REST errors), if it has one."""
    response = getattr(exc, "response", None)
    text = getattr(response, "text", None)
    if callable(text):  # a google.auth transport response has no .text; requests' is a str property
        return None
    return text if isinstance(text, str) else None


def _no_api_answered(exc: BaseException) -> bool:
    """A 404 whose body is empty or an HTML page: a server that is not the API (a wrong port, a proxy, a web
    server) answered. Google's APIs answer a missing resource with a JSON ``error`` body (Run, Compute, the GCS
    JSON API) or, for a GCS media download, a short text ("No such object: …"); reading such a 404 as "the
    resource does not exist" would make ``plan`` propose creating everything."""
    text = _response_text(exc)
    if text is None:
        return False
    head = text.lstrip()[:64].lower()
    return not head or head.startswith(("<!doctype", "<html"))


def _body_kind(exc: BaseException) -> str:
    text = (_response_text(exc) or "").strip()
    return "an empty body" if not text else "an HTML page"


def _detail(exc: BaseException) -> str:
    text = str(exc.message if isinstance(exc, gexc.GoogleAPICallError) else exc)
    text = _google_message(_REQUEST_PREFIX.sub("", text.strip()))
    text = " ".join(text.split())  # one line, whatever the server sent
    return text[:300] + ("…" if len(text) > 300 else "") if text else type(exc).__name__


def to_cloud_error(
    exc: BaseException, *, method: str, attempts: int = 1, outcome_unknown: bool = False
) -> CloudError | None:
    """The deployer error a failed call ends as, or ``None`` when ``exc`` is not a cloud failure
    (a programming error, which the caller re-raises as it is)."""
    if isinstance(exc, CloudError):
        return exc
    cause = exc.cause if isinstance(exc, gexc.RetryError) and exc.cause is not None else exc
    status = status_of(cause)
    reason = _reason(cause)
    transient = is_transient(cause)
    where = f"HTTP {status}" if status is not None else (reason or "error")
    common: dict[str, Any] = {
        "method": method,
        "status": status,
        "reason": reason,
        "attempts": attempts,
        "outcome_unknown": outcome_unknown,
    }
    if transient:
        # No HTTP answer at all (refused, DNS, reset): say what could not be reached and why, not
        # that "Google kept answering" (reach.py); the retries were still the policy's.
        failure = reach.network_failure(cause)
        if failure is not None:
            said, advice = reach.describe(failure, method=method, attempts=attempts)
            return TransientCloudError(said, hint=advice, **common)
        tries = f"after {attempts} attempt{'s' if attempts != 1 else ''}"
        return TransientCloudError(
            f"{method} still failing {tries}: {where}: {_detail(cause)}",
            hint="Google's API kept answering with a retryable error; run the command again later.",
            **common,
        )
    if status == NOT_FOUND_STATUS and _no_api_answered(cause):
        return CloudError(
            f"{method}: HTTP 404 with {_body_kind(cause)} — no Google API answered at that address, so whether the "
            f"resource exists is unknown",
            hint="check the endpoint (the config's `endpoint`, or the proxy in HTTPS_PROXY / HTTP_PROXY): it should be "
            "Google's API or `deployer localcloud up`'s --api-port, not the load balancer or another server.",
            **common,
        )
    if status == NOT_FOUND_STATUS:
        return NotFoundError(f"{method}: {where} not found: {_detail(cause)}", **common)
    if status in CONFLICT_STATUSES:
        return ConflictError(
            f"{method}: {where} conflict: {_detail(cause)}",
            hint="the resource changed since it was read (etag or fingerprint moved); read it again and re-plan.",
            **common,
        )
    tls = reach.tls_failure(cause, method=method)
    if tls is not None:
        return CloudError(tls[0], hint=tls[1], **common)
    if isinstance(cause, (gexc.GoogleAPIError, gauth.GoogleAuthError)) or _network_is_transient(cause) is False:
        hint = None
        if status == 403:
            hint = "the account running deployer lacks a permission for this call."
        elif isinstance(cause, gauth.GoogleAuthError):
            hint = "no usable Google credentials (try `gcloud auth application-default login`)."
        elif isinstance(cause, (rexc.SSLError, uexc.SSLError)):
            hint = "TLS failed; a local endpoint must be given with its scheme, e.g. http://127.0.0.1:8480."
        elif isinstance(cause, (rexc.ProxyError, uexc.ProxyError)):
            hint = "the call went through the proxy in HTTPS_PROXY / HTTP_PROXY and failed there (see NO_PROXY)."
        return CloudError(f"{method}: {where}: {_detail(cause)}", hint=hint, **common)
    return None


# ---- the policy (a value) ------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryEvent:
    """One failed attempt that will be retried after ``delay`` seconds."""

    method: str
    attempt: int
    status: int | None
    error: str
    delay: float
    outcome_unknown: bool


def log_retry(event: RetryEvent) -> None:
    """The default ``on_retry``: one structlog ``gcp.retry`` event (bound context is merged in).

    Info, not warning: a retry that works is routine, and one that does not ends in the command's one
    ``error:`` line. A terminal (CLI level warning) shows just that line; Cloud Build and pipes (level info,
    JSON) keep every attempt.
    """
    _log.info(
        "gcp.retry",
        method=event.method,
        attempt=event.attempt,
        status=event.status,
        error=event.error,
        delay=round(event.delay, 3),
        outcome_unknown=event.outcome_unknown,
    )


@dataclass(frozen=True)
class RetryPolicy:
    """Truncated exponential backoff with jitter and an explicit stop.

    The n-th retry waits ``min(initial * multiplier**(n-1) + uniform(0, jitter), maximum)`` seconds
    (tenacity's ``wait_exponential_jitter``). It stops after ``attempts`` calls, or before a sleep that
    would end past ``deadline`` seconds from the first call (``None``: attempts alone stop it).
    """

    attempts: int = 5
    initial: float = 0.5
    maximum: float = 8.0
    multiplier: float = 2.0
    jitter: float = 0.5
    deadline: float | None = 60.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)
    clock: Callable[[], float] = field(default=time.monotonic, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")
        if self.initial < 0 or self.maximum < 0 or self.jitter < 0:
            raise ValueError("RetryPolicy delays must not be negative")
        if self.multiplier < 1:
            raise ValueError("RetryPolicy.multiplier must be at least 1")
        if self.deadline is not None and self.deadline <= 0:
            raise ValueError("RetryPolicy.deadline must be positive (or None)")

    def with_(self, **changes: Any) -> RetryPolicy:
        """A copy with some fields changed (e.g. ``sleep=fake.sleep`` in a test)."""
        return replace(self, **changes)

    def nominal_delays(self) -> list[float]:
        """The delays before each retry without jitter (for docs, benchmarks and tests)."""
        return [min(self.initial * self.multiplier**n, self.maximum) for n in range(self.attempts - 1)]

    def retrying(self, *, on_sleep: Callable[[tenacity.RetryCallState], None] | None = None) -> tenacity.Retrying:
        """The tenacity controller for one call (the deadline starts now, on ``clock``)."""
        start = self.clock()
        stops: list[Any] = [tenacity.stop_after_attempt(self.attempts)]
        if self.deadline is not None:
            deadline = self.deadline

            def past_deadline(state: tenacity.RetryCallState) -> bool:
                return self.clock() - start + state.upcoming_sleep > deadline

            stops.append(past_deadline)
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception(is_transient),
            stop=tenacity.stop_any(*stops),
            wait=tenacity.wait_exponential_jitter(
                multiplier=self.initial, max=self.maximum, exp_base=self.multiplier, jitter=self.jitter
            ),
            sleep=self.sleep,
            before_sleep=on_sleep,
            reraise=True,
        )


DEFAULT_POLICY = RetryPolicy()
# Reads are cheap and idempotent; give them a shorter budget so an outage surfaces quickly.
READ_POLICY = RetryPolicy(attempts=4, initial=0.2, maximum=4.0, deadline=20.0)


def call(
    fn: Callable[[], T],
    *,
    method: str,
    policy: RetryPolicy = DEFAULT_POLICY,
    on_retry: Callable[[RetryEvent], None] = log_retry,
) -> T:
    """Run ``fn``, retrying transient failures under ``policy``; a final failure becomes a ``CloudError``.

    ``method`` names the call in logs and errors (e.g. ``"run.UpdateService"``). Exceptions that are
    not cloud failures (bugs) are re-raised unchanged.
    """
    failures: list[BaseException] = []

    def on_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        if exc is None:  # pragma: no cover - tenacity only sleeps after a failure here
            return
        failures.append(exc)
        on_retry(
            RetryEvent(
                method=method,
                attempt=state.attempt_number,
                status=status_of(exc),
                error=type(exc).__name__,
                delay=state.upcoming_sleep,
                outcome_unknown=outcome_unknown(exc),
            )
        )

    try:
        return policy.retrying(on_sleep=on_sleep)(fn)
    except Exception as exc:
        unknown = any(outcome_unknown(e) for e in [*failures, exc])
        err = to_cloud_error(exc, method=method, attempts=len(failures) + 1, outcome_unknown=unknown)
        if err is None or err is exc:
            raise
        raise err from exc
