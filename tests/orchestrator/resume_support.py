"""Shared by the pure ``deployer resume`` tests (test_resume.py, test_resume_retry.py): one small service's
names, a clock that moves 10 ms per reading, and a journal begun through the real writer in a local
state directory."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from deployer.orchestrator.journal import Journal
from deployer.orchestrator.owner import Owner
from deployer.state.local import LocalStateStore

T0 = datetime(2026, 11, 26, 14, 52, 1, tzinfo=UTC)
DEPLOY = "d-20261126-145201-a1b2"
KEY = "p/us-central1/api"
OWNER = Owner(user="ci", host="worker", pid=9)
SVC = "projects/p/locations/us-central1/services/api"
BS = "projects/p/global/backendServices/api-bs"
RULE = "projects/p/global/securityPolicies/armor/rules/50"
OLD, NEW = "api-00001-abc", "api-11261452-a1b2"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=10)
        return self.now


def journal(tmp_path: Path, operation: str = "deploy") -> Journal:
    return Journal.begin(
        LocalStateStore(tmp_path / "state"),
        service=KEY,
        deploy_id=DEPLOY,
        config_digest="sha256:x",
        owner=OWNER,
        operation=operation,  # type: ignore[arg-type]
        clock=Clock(),
    )
