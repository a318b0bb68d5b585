"""The state stores every contract test runs against, as picklable specs (child processes open their own).

Issue 7 adds a Cloud Storage spec here (bucket + prefix on the local cloud's storage endpoint) and a
parameter in ``store_spec``; every test written against ``store`` / ``store_spec`` then runs on both.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from deployer.state import StateStore
from deployer.state.local import LocalStateStore


@dataclass(frozen=True)
class LocalSpec:
    directory: str

    def open(self, namespace: str = "") -> StateStore:
        return LocalStateStore(Path(self.directory) / namespace if namespace else self.directory)


def fresh_namespace() -> str:
    return f"ns-{uuid.uuid4().hex[:12]}"


STORE_KINDS = ["local"]


def make_spec(kind: str, tmp_path: Path) -> LocalSpec:
    if kind == "local":
        return LocalSpec(str(tmp_path / "state"))
    raise AssertionError(f"unknown store kind {kind}")  # pragma: no cover


@pytest.fixture(params=STORE_KINDS)
def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> LocalSpec:
    return make_spec(request.param, tmp_path)


@pytest.fixture
def store(store_spec: LocalSpec) -> StateStore:
    return store_spec.open(fresh_namespace())
