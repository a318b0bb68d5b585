"""All state of one local cloud, and the shared sources of randomness and time.

Every id, etag and fingerprint comes from ``World.rng`` (seedable), and every timestamp from
``World.clock``, so a seeded world replays identically. API modules keep their state in the
``run``, ``compute`` and ``storage`` attributes (their own ``models`` classes); the runtime that
turns revisions into processes is pluggable (``RevisionRuntime``).
"""

from __future__ import annotations

import random
import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Protocol

DEFAULT_PROJECT = "local-project"
DEFAULT_REGION = "us-central1"


class Readiness(Enum):
    PENDING = "pending"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True)
class RevisionState:
    """What the runtime says about one revision."""

    readiness: Readiness
    reason: str = ""
    message: str = ""


class RevisionRuntime(Protocol):
    """Brings revisions up and down. The Cloud Run API asks it, never the other way round.

    ``start`` must not block: it begins bringing the revision up; ``state`` is polled when the API
    reconciles (on reads and operation polls). ``revision`` and ``service`` are ``run_v2`` messages.
    """

    def start(self, revision: Any, service: Any) -> None: ...

    def state(self, revision_name: str) -> RevisionState: ...

    def stop(self, revision_name: str) -> None: ...

    def close(self) -> None: ...


class InstantRuntime:
    """The default runtime when no load balancer runs: every revision is Ready at once, unless its
    image is listed in ``failing_images`` (image -> (reason, message))."""

    def __init__(self) -> None:
        self.failing_images: dict[str, tuple[str, str]] = {}
        self._states: dict[str, RevisionState] = {}

    def start(self, revision: Any, service: Any) -> None:
        image = revision.containers[0].image if revision.containers else ""
        if image in self.failing_images:
            reason, message = self.failing_images[image]
            self._states[revision.name] = RevisionState(Readiness.FAILED, reason, message)
        else:
            self._states[revision.name] = RevisionState(Readiness.READY)

    def state(self, revision_name: str) -> RevisionState:
        return self._states.get(revision_name, RevisionState(Readiness.READY))

    def stop(self, revision_name: str) -> None:
        self._states.pop(revision_name, None)

    def close(self) -> None:
        self._states.clear()


@dataclass
class FaultRule:
    """The next ``count`` calls of ``method`` fail.

    ``kind="http"``: the call answers ``status`` with Google's error shape for that API.
    ``kind="operation"``: the call succeeds but its long-running operation ends in error
    (``status`` is the HTTP code a Compute operation reports; Cloud Run maps it to a gRPC code).

    Test-harness kinds (not Google behaviour: they stand in for what happens *around* a call):
    ``kind="kill"``: SIGKILL the process ``pid`` (the deployer under test) — ``when="before"``: the call
    is dropped unapplied; ``when="after"``: the call is applied, then the caller is killed before it
    gets the answer. ``kind="hook"`` (Python only, not through the control plane): ``hook()`` runs on a
    worker thread just before the call is handled — e.g. a foreign write through the real clients,
    landing between the caller's read and its write.

    ``skip``: the first ``skip`` matching calls go through untouched (to hit the 3rd UpdateService).
    """

    method: str
    status: int = 0
    count: int = 1
    message: str = ""
    kind: str = "http"
    skip: int = 0
    pid: int = 0
    when: str = "before"
    hook: Callable[[], None] | None = field(default=None, repr=False, compare=False)


@dataclass
class RequestRecord:
    method: str  # e.g. "run.services.patch", or "" for unmatched paths
    http_method: str
    path: str
    query: str
    status: int
    started: float
    duration_ms: float
    fault: bool = False


class Faults:
    """Fault injection and per-method latency, shared by all APIs (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rules: list[FaultRule] = []
        self.latency: dict[str, float] = {}  # method (or "*") -> seconds added before answering
        self.operation_seconds: dict[str, float] = {}  # "run" / "compute" / method -> op duration

    def add(self, rule: FaultRule) -> None:
        with self._lock:
            self.rules.append(rule)

    def take(self, method: str, kind: str = "http") -> FaultRule | None:
        """Consume one matching fault for ``method`` (exact name, or a prefix ending in '*')."""
        with self._lock:
            for rule in self.rules:
                if rule.kind != kind:
                    continue
                if rule.method == method or (rule.method.endswith("*") and method.startswith(rule.method[:-1])):
                    if rule.skip > 0:
                        rule.skip -= 1
                        continue
                    rule.count -= 1
                    if rule.count <= 0:
                        self.rules.remove(rule)
                    return rule
        return None

    def latency_for(self, method: str) -> float:
        if method in self.latency:
            return self.latency[method]
        for key, value in self.latency.items():
            if key.endswith("*") and method.startswith(key[:-1]):
                return value
        return 0.0

    def operation_duration(self, api: str, method: str) -> float:
        return self.operation_seconds.get(method, self.operation_seconds.get(api, 0.0))

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self.latency.clear()
            self.operation_seconds.clear()


@dataclass
class World:
    """Everything one local cloud knows. Reset it with ``reset()``; seed it through the control plane."""

    seed: int = 0
    clock: Callable[[], float] = time.time
    project: str = DEFAULT_PROJECT
    region: str = DEFAULT_REGION
    rng: random.Random = field(init=False)
    faults: Faults = field(default_factory=Faults)
    requests: list[RequestRecord] = field(default_factory=list)
    runtime: RevisionRuntime = field(default_factory=InstantRuntime)
    # Base URL of the local load balancer when one runs (set by the runtime), e.g. http://127.0.0.1:8080.
    # Cloud Run renders service and tag URIs against it (``http://TAG---SERVICE.localhost:PORT``).
    lb_url: str | None = None
    # Each API module attaches its state here (see api/*/models.py): run, compute, storage.
    apis: dict[str, Any] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._initial_place = (self.project, self.region)

    # ---- ids -------------------------------------------------------------------------------
    def hex(self, n: int) -> str:
        return "".join(self.rng.choice("0123456789abcdef") for _ in range(n))

    def lower_alnum(self, n: int) -> str:
        return "".join(self.rng.choice(string.ascii_lowercase + string.digits) for _ in range(n))

    def numeric_id(self) -> str:
        """A Compute-style uint64 id, as the decimal string the API renders."""
        return str(self.rng.randrange(10**18, 2**63))

    def uuid(self) -> str:
        h = self.hex(32)
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"

    def fingerprint(self) -> str:
        """Compute fingerprints are base64 of 8 bytes, e.g. ``"nxSQ-OZ5xGw="``."""
        import base64

        return base64.urlsafe_b64encode(bytes(self.rng.randrange(256) for _ in range(8))).decode()

    # ---- time ------------------------------------------------------------------------------
    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def rfc3339(self) -> str:
        """Compute renders timestamps like ``2024-04-01T12:34:56.789-07:00``; we render UTC."""
        return self.now().isoformat(timespec="milliseconds")

    # ---- lifecycle -------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> None:
        """Forget all resources, faults and the request log; reseed ids; back to the initial project and
        region (a seeded world sets its own again)."""
        with self.lock:
            if seed is not None:
                self.seed = seed
            self.project, self.region = self._initial_place
            self.rng = random.Random(self.seed)
            self.faults.clear()
            self.requests.clear()
            for api in self.apis.values():
                reset = getattr(api, "reset", None)
                if reset is not None:
                    reset()
