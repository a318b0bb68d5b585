"""Shared fixtures: a real local cloud on a background thread, and real clients pointed at it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# requests honours HTTP(S)_PROXY even for loopback; tests must never go through a proxy.
os.environ["NO_PROXY"] = "127.0.0.1,localhost"
os.environ["no_proxy"] = "127.0.0.1,localhost"

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def _session_cloud() -> Iterator[object]:
    from deployer.localcloud.server import LocalCloud

    cloud = LocalCloud(seed=7)
    cloud.start()
    yield cloud
    cloud.stop()


@pytest.fixture
def localcloud(_session_cloud: object) -> object:
    """The API-only local cloud, reset before each test (fresh state, seed 7)."""
    cloud = _session_cloud
    cloud.world.reset(seed=7)  # type: ignore[attr-defined]
    return cloud


@pytest.fixture
def clients(localcloud: object) -> object:
    from deployer.gcp.clients import Clients

    return Clients(endpoint=localcloud.endpoint, project=localcloud.world.project)  # type: ignore[attr-defined]
