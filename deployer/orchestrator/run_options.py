"""What ``deployer rollback`` and ``deployer resume`` are both run with: the clock, who holds the lock and
for how long, the retry policies, where a relative state path starts, the gate's environment.

Cheap to import (no Google client library beyond what ``deployer.gcp.retry`` needs): the emergency path
reads it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from deployer.gcp import retry
from deployer.orchestrator.lock import LOCK_TTL
from deployer.orchestrator.owner import Owner


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(kw_only=True)
class LockedRunOptions:
    clock: Callable[[], datetime] = _utcnow
    owner: Owner | None = None
    policy: retry.RetryPolicy = retry.DEFAULT_POLICY
    read_policy: retry.RetryPolicy = retry.READ_POLICY
    lock_ttl: timedelta = LOCK_TTL
    state_base: Path | None = None
    gate_env: Mapping[str, str] | None = None
