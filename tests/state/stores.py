"""The state stores every contract test runs against, as picklable specs (child processes open their own).

- ``local``: a directory under ``tmp_path``.
- ``gcs``: a fresh bucket on the session's local cloud, reached over HTTP through the real
  ``google-cloud-storage`` client (``Clients(endpoint=...).storage()``); child processes open their
  own client against the same endpoint, so process races go through the storage API's preconditions.

``open(namespace)`` gives each test (or each hypothesis example) its own keyspace: a subdirectory,
or an object-name prefix. Every test written against ``store`` / ``store_spec`` runs on both kinds;
``spec.to_arg()`` / ``spec_from_arg()`` carry a spec to a subprocess's command line.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

from deployer.state import StateStore
from deployer.state.local import LocalStateStore


@dataclass(frozen=True)
class LocalSpec:
    directory: str
    kind: str = "local"

    def open(self, namespace: str = "") -> StateStore:
        return LocalStateStore(Path(self.directory) / namespace if namespace else self.directory)

    def to_arg(self) -> str:
        return json.dumps(asdict(self))


@dataclass(frozen=True)
class GcsSpec:
    endpoint: str
    project: str
    bucket: str
    kind: str = "gcs"

    def open(self, namespace: str = "") -> StateStore:
        from deployer.gcp.clients import Clients
        from deployer.state.gcs import GcsStateStore

        return GcsStateStore(self.bucket, namespace, Clients(endpoint=self.endpoint, project=self.project))

    def to_arg(self) -> str:
        return json.dumps(asdict(self))


StoreSpec = LocalSpec | GcsSpec


def spec_from_arg(arg: str) -> StoreSpec:
    data: dict[str, Any] = json.loads(arg)
    return GcsSpec(**data) if data.get("kind") == "gcs" else LocalSpec(**data)


def fresh_namespace() -> str:
    return f"ns-{uuid.uuid4().hex[:12]}"


STORE_KINDS = ["local", "gcs"]


def make_spec(kind: str, tmp_path: Path, request: pytest.FixtureRequest | None = None) -> StoreSpec:
    if kind == "local":
        return LocalSpec(str(tmp_path / "state"))
    if kind == "gcs":
        assert request is not None
        cloud: Any = request.getfixturevalue("localcloud")  # the session's local cloud, reset for this test
        from deployer.gcp.clients import Clients

        bucket = f"state-{uuid.uuid4().hex[:12]}"
        Clients(endpoint=cloud.endpoint, project=cloud.world.project).storage().create_bucket(bucket)
        return GcsSpec(endpoint=cloud.endpoint, project=cloud.world.project, bucket=bucket)
    raise AssertionError(f"unknown store kind {kind}")  # pragma: no cover


@pytest.fixture(params=STORE_KINDS)
def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSpec:
    return make_spec(request.param, tmp_path, request)


@pytest.fixture
def store(store_spec: StoreSpec) -> StateStore:
    return store_spec.open(fresh_namespace())
