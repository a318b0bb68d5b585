"""The gate's decision, pure: per-connection observations + thresholds → a ``Verdict``.

No I/O, no clock. ``probe.py`` measures and fills ``Observation`` values; ``decide`` judges them.

Four outcomes, never collapsed into yes/no (see the architecture's "gates say more than yes/no"):

    Passed        enough connections were measured and every check held
    Failed        the target was measured bad: failures over the failure budget, or a latency
                  percentile over its threshold
    Inconclusive  nothing measured bad, but fewer measured connections than ``min_samples``
    Error         the prober could not measure: more "could not measure" connections (its own DNS,
                  network, credentials, or a probe bug) than the error budget allows, or setup failed

Rules, in order (the first that fires decides):
    1. setup error (e.g. no credentials for an ID token)                         → Error
    2. failed connections > floor(max_failure_ratio × measured)                  → Failed
    3. handshake p50 / p95 / max, ping p95, app round-trip p95 over threshold    → Failed
    4. error connections > floor(max_error_ratio × attempted)                    → Error
    5. measured connections < min_samples                                        → Inconclusive
    6.                                                                           → Passed

A measured failure outranks an inability to measure: one connection that got a 403 is evidence
about the target; a DNS failure on the prober is not. "Could not measure" is never a pass.

Close codes (RFC 6455 §7.4.1): 1000 (normal) and 1001 (going away) are normal; everything else,
including 1006 (no close frame: the TCP connection just dropped), 1011 (server error), 1012
(service restart), 1013 (try again later) and any unexpected code, is abnormal. A connection whose
final close is abnormal counts as failed even if every other step worked.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Literal

NORMAL_CLOSE_CODES = frozenset({1000, 1001})
# RFC 6455 §7.1.5: "If _The WebSocket Connection is Closed_ and no Close control frame was received by
# the endpoint ..., _The WebSocket Connection Close Code_ is considered to be 1006."
NO_CLOSE_FRAME = 1006
# The seed's success criterion: "WebSocket handshake completes in <5 seconds".
DEFAULT_HANDSHAKE_P95_MS = 5000.0


class Outcome(StrEnum):
    PASSED = "Passed"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"
    ERROR = "Error"

    @property
    def exit_code(self) -> int:
        """The CLI's exit code: 0 Passed, 1 Failed, 3 Inconclusive or Error (README "Exit codes")."""
        return {"Passed": 0, "Failed": 1}.get(self.value, 3)


class Kind(StrEnum):
    """Why one connection did not complete every step. ``is_error`` kinds mean "could not measure"."""

    # could not measure: the prober's side
    DNS = "dns"
    NETWORK = "network"
    PROBE = "probe_error"
    # measured bad: the target's side
    TCP_REFUSED = "tcp_refused"
    TLS = "tls"
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    HANDSHAKE_EOF = "handshake_eof"
    INVALID_RESPONSE = "invalid_response"
    NO_UPGRADE = "no_upgrade"
    REDIRECT = "redirect"
    UPGRADE_REFUSED = "upgrade_refused"
    BAD_UPGRADE = "bad_upgrade"
    BAD_ACCEPT = "bad_accept"
    SUBPROTOCOL = "subprotocol"
    EXTENSION = "extension"
    PING_TIMEOUT = "ping_timeout"
    APP_TIMEOUT = "app_timeout"
    CLOSED = "closed"

    @property
    def is_error(self) -> bool:
        return self in _ERROR_KINDS

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


_ERROR_KINDS = frozenset({Kind.DNS, Kind.NETWORK, Kind.PROBE})
_MEANINGS = {
    Kind.DNS: "could not resolve the host (prober side)",
    Kind.NETWORK: "could not reach the host (prober side: unreachable or connect timeout)",
    Kind.PROBE: "the probe itself failed",
    Kind.TCP_REFUSED: "TCP connection refused (nothing listens)",
    Kind.TLS: "TLS handshake failed",
    Kind.HANDSHAKE_TIMEOUT: "no upgrade response before the open timeout",
    Kind.HANDSHAKE_EOF: "connection closed before an upgrade response",
    Kind.INVALID_RESPONSE: "the upgrade response is not valid HTTP/1.1",
    Kind.NO_UPGRADE: "answered 2xx without upgrading (a proxy or app dropped the upgrade)",
    Kind.REDIRECT: "answered the upgrade with a redirect",
    Kind.UPGRADE_REFUSED: "upgrade refused",
    Kind.BAD_UPGRADE: "101 without valid Upgrade/Connection headers",
    Kind.BAD_ACCEPT: "wrong or missing Sec-WebSocket-Accept",
    Kind.SUBPROTOCOL: "subprotocol not requested or not supported",
    Kind.EXTENSION: "extension negotiation failed",
    Kind.PING_TIMEOUT: "no pong before the ping timeout",
    Kind.APP_TIMEOUT: "no matching application reply before the deadline",
    Kind.CLOSED: "closed by the server before the probe finished",
}


def classify_close(code: int | None) -> Literal["normal", "abnormal"]:
    """1000/1001 are normal; anything else (1006, 1011, 1012, 1013, unexpected codes) is abnormal."""
    return "normal" if code in NORMAL_CLOSE_CODES else "abnormal"


@dataclass(slots=True)
class Observation:
    """What one probe connection saw. Times are milliseconds; ``None`` means the step did not happen."""

    index: int
    failure: Kind | None = None
    detail: str = ""
    connect_ms: float | None = None
    tls_ms: float | None = None
    upgrade_ms: float | None = None
    handshake_ms: float | None = None  # TCP connect start → 101 accepted (DNS excluded)
    status: int | None = None  # HTTP status of the upgrade response
    headers: tuple[tuple[str, str], ...] = ()  # response headers, kept when the upgrade was refused
    body: str = ""  # first bytes of a refusal's body
    accept_valid: bool | None = None  # Sec-WebSocket-Accept checked (None: no 101 to check)
    subprotocol: str | None = None
    ping_ms: list[float] = field(default_factory=list)
    app_ms: float | None = None
    held_s: float | None = None
    close_code: int | None = None  # the server's close code (1006 when the TCP connection just dropped)
    close_reason: str = ""
    closed_in: str | None = None  # phase in which the server closed first: ping | app | hold

    def failure_group(self) -> str | None:
        """The label failures are grouped by (kind plus status or close code), ``None`` if the connection was fine."""
        if self.failure is None:
            if self.close_code is not None and classify_close(self.close_code) == "abnormal":
                return f"unclean_close {self.close_code}"
            return None
        if self.failure in (Kind.UPGRADE_REFUSED, Kind.NO_UPGRADE, Kind.REDIRECT) and self.status is not None:
            return f"{self.failure.value} HTTP {self.status}"
        if self.failure is Kind.CLOSED:
            return f"closed {self.close_code} ({classify_close(self.close_code)}) during {self.closed_in}"
        return self.failure.value

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["failure"] = self.failure.value if self.failure else None
        out["headers"] = [list(h) for h in self.headers]
        out["ping_ms"] = [_r(ms) for ms in self.ping_ms]
        for key in ("connect_ms", "tls_ms", "upgrade_ms", "handshake_ms", "app_ms", "held_s"):
            out[key] = _r(out[key])
        return {k: v for k, v in out.items() if v not in (None, "", [], ())}


# Measured connections a verdict needs by default (``deployer gate`` and the config lower it to the
# connection count when fewer are asked for; deployer/config.py GateOptions mirrors this number).
DEFAULT_MIN_SAMPLES = 10


@dataclass(frozen=True)
class Thresholds:
    """What "good" means. Ratios are fractions of connections; times are milliseconds (None: not checked)."""

    min_samples: int = DEFAULT_MIN_SAMPLES
    max_failure_ratio: float = 0.0
    max_error_ratio: float = 0.1
    handshake_p50_ms: float | None = None
    handshake_p95_ms: float | None = DEFAULT_HANDSHAKE_P95_MS
    handshake_max_ms: float | None = None
    ping_p95_ms: float | None = None
    app_p95_ms: float | None = None

    def __post_init__(self) -> None:
        from deployer.errors import UsageError

        if self.min_samples < 1:
            raise UsageError(f"min samples must be at least 1 (got {self.min_samples})")
        for name in ("max_failure_ratio", "max_error_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UsageError(f"{name.replace('_', ' ')} must be between 0 and 1 (got {value})")
        for name in ("handshake_p50_ms", "handshake_p95_ms", "handshake_max_ms", "ping_p95_ms", "app_p95_ms"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UsageError(f"{name.replace('_', ' ')} must be positive (got {value})")


@dataclass(frozen=True)
class Stats:
    n: int
    p50: float | None
    p95: float | None
    max: float | None

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "p50": _r(self.p50), "p95": _r(self.p95), "max": _r(self.max)}


@dataclass(frozen=True)
class Check:
    """One rule as evaluated: what was observed against what was allowed."""

    name: str
    observed: float | None
    limit: float | None
    ok: bool
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "observed": _r(self.observed), "limit": _r(self.limit), "ok": self.ok} | (
            {"note": self.note} if self.note else {}
        )


@dataclass(frozen=True)
class FailureGroup:
    group: str
    kind: str
    meaning: str
    count: int
    examples: tuple[Observation, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "kind": self.kind,
            "meaning": self.meaning,
            "count": self.count,
            "examples": [o.to_json() for o in self.examples],
        }


@dataclass(frozen=True)
class Counts:
    attempted: int
    measured: int  # attempted minus "could not measure"
    ok: int
    failed: int
    errors: int

    def to_json(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reasons: tuple[str, ...]
    counts: Counts
    checks: tuple[Check, ...]
    latency: Mapping[str, Stats]  # handshake, connect, tls, upgrade, ping, app (ms)
    close_codes: Mapping[str, int]
    failures: tuple[FailureGroup, ...]  # measured bad, biggest group first
    errors: tuple[FailureGroup, ...]  # could not measure
    thresholds: Thresholds
    samples: tuple[Observation, ...] = ()
    context: Mapping[str, Any] = field(default_factory=dict)  # target and probe settings (no secrets)

    @property
    def exit_code(self) -> int:
        return self.outcome.exit_code

    def to_json(self, *, include_samples: bool = False) -> dict[str, Any]:
        """The evidence dict for the deploy journal and ``--json`` (JSON-serialisable, no secrets)."""
        out: dict[str, Any] = {
            "verdict": self.outcome.value,
            "reasons": list(self.reasons),
            "counts": self.counts.to_json(),
            "checks": [c.to_json() for c in self.checks],
            "latency_ms": {k: s.to_json() for k, s in self.latency.items()},
            "close_codes": dict(self.close_codes),
            "failures": [g.to_json() for g in self.failures],
            "errors": [g.to_json() for g in self.errors],
            "thresholds": asdict(self.thresholds),
            "context": dict(self.context),
        }
        if include_samples:
            out["samples"] = [o.to_json() for o in self.samples]
        return out


# ---- pure helpers --------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1) of unsorted ``values``; ``None`` when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def stats(values: Sequence[float]) -> Stats:
    if not values:
        return Stats(0, None, None, None)
    return Stats(len(values), percentile(values, 0.5), percentile(values, 0.95), max(values))


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _groups(observations: Iterable[Observation], examples: int) -> tuple[FailureGroup, ...]:
    by: dict[str, list[Observation]] = {}
    for o in observations:
        label = o.failure_group()
        if label is not None:
            by.setdefault(label, []).append(o)
    out = []
    for label, members in by.items():
        kind = members[0].failure
        kind_name = kind.value if kind is not None else "unclean_close"
        meaning = kind.meaning if kind is not None else "the connection ended with an abnormal close code"
        out.append(FailureGroup(label, kind_name, meaning, len(members), tuple(members[:examples])))
    out.sort(key=lambda g: (-g.count, g.group))
    return tuple(out)


def _fmt_groups(groups: Sequence[FailureGroup]) -> str:
    return ", ".join(f"{g.group} ×{g.count}" for g in groups)


def decide(
    observations: Sequence[Observation],
    thresholds: Thresholds,
    *,
    setup_error: str | None = None,
    context: Mapping[str, Any] | None = None,
    examples: int = 3,
) -> Verdict:
    """Judge the observations of one gate run (see the module docstring for the rules, in order)."""
    attempted = len(observations)
    error_obs = [o for o in observations if o.failure is not None and o.failure.is_error]
    measured_obs = [o for o in observations if o.failure is None or not o.failure.is_error]
    failed_obs = [o for o in measured_obs if o.failure_group() is not None]
    counts = Counts(
        attempted=attempted,
        measured=len(measured_obs),
        ok=len(measured_obs) - len(failed_obs),
        failed=len(failed_obs),
        errors=len(error_obs),
    )
    latency = {
        "handshake": stats([o.handshake_ms for o in observations if o.handshake_ms is not None]),
        "connect": stats([o.connect_ms for o in observations if o.connect_ms is not None]),
        "tls": stats([o.tls_ms for o in observations if o.tls_ms is not None]),
        "upgrade": stats([o.upgrade_ms for o in observations if o.upgrade_ms is not None]),
        "ping": stats([ms for o in observations for ms in o.ping_ms]),
        "app": stats([o.app_ms for o in observations if o.app_ms is not None]),
    }
    close_codes: dict[str, int] = {}
    for o in observations:
        if o.close_code is not None:
            close_codes[str(o.close_code)] = close_codes.get(str(o.close_code), 0) + 1
    failures = _groups(failed_obs, examples)
    errors = _groups(error_obs, examples)

    allowed_failures = math.floor(thresholds.max_failure_ratio * counts.measured)
    allowed_errors = math.floor(thresholds.max_error_ratio * attempted)
    checks: list[Check] = [
        Check("failures", counts.failed, allowed_failures, counts.failed <= allowed_failures, _fmt_groups(failures))
    ]
    latency_limits = (
        ("handshake_p50_ms", latency["handshake"].p50, thresholds.handshake_p50_ms),
        ("handshake_p95_ms", latency["handshake"].p95, thresholds.handshake_p95_ms),
        ("handshake_max_ms", latency["handshake"].max, thresholds.handshake_max_ms),
        ("ping_p95_ms", latency["ping"].p95, thresholds.ping_p95_ms),
        ("app_p95_ms", latency["app"].p95, thresholds.app_p95_ms),
    )
    for name, observed, limit in latency_limits:
        if limit is not None and observed is not None:
            checks.append(Check(name, observed, limit, observed <= limit))
    checks.append(Check("errors", counts.errors, allowed_errors, counts.errors <= allowed_errors, _fmt_groups(errors)))
    enough = counts.measured >= thresholds.min_samples
    checks.append(Check("min_samples", counts.measured, thresholds.min_samples, enough))
    by_name = {c.name: c for c in checks}

    reasons: list[str] = []
    if setup_error is not None:
        outcome = Outcome.ERROR
        reasons.append(f"could not run the gate: {setup_error}")
    elif not all(c.ok for c in checks if c.name not in ("errors", "min_samples")):
        outcome = Outcome.FAILED
        if not by_name["failures"].ok:
            reasons.append(
                f"{counts.failed}/{counts.measured} measured connections failed (budget {allowed_failures}): "
                f"{_fmt_groups(failures)}"
            )
        for c in checks:
            if c.name.endswith("_ms") and not c.ok:
                reasons.append(f"{c.name.removesuffix('_ms').replace('_', ' ')} {c.observed:.0f} ms > {c.limit:.0f} ms")
    elif not by_name["errors"].ok:
        outcome = Outcome.ERROR
        reasons.append(
            f"could not measure {counts.errors}/{attempted} connections (budget {allowed_errors}): "
            f"{_fmt_groups(errors)}"
        )
    elif not by_name["min_samples"].ok:
        outcome = Outcome.INCONCLUSIVE
        reasons.append(f"only {counts.measured} measured connections, fewer than the {thresholds.min_samples} required")
    else:
        outcome = Outcome.PASSED
        reasons.append(f"{counts.ok}/{attempted} connections passed every step")

    return Verdict(
        outcome=outcome,
        reasons=tuple(reasons),
        counts=counts,
        checks=tuple(checks),
        latency=latency,
        close_codes=close_codes,
        failures=failures,
        errors=errors,
        thresholds=thresholds,
        samples=tuple(observations),
        context=dict(context or {}),
    )
