"""Small helpers shared by the Cloud Run API tests (values and raw HTTP, no mocks)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

PROJECT = "local-project"
REGION = "us-central1"
PARENT = f"projects/{PROJECT}/locations/{REGION}"


def service_name(service_id: str) -> str:
    return f"{PARENT}/services/{service_id}"


def new_service(image: str = "gcr.io/p/chat:1", **template: Any) -> Any:
    from google.cloud import run_v2

    return run_v2.Service(template=run_v2.RevisionTemplate(containers=[run_v2.Container(image=image)], **template))


def http(cloud: Any, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, dict]:
    """One raw HTTP call to the local cloud; returns (status, JSON body)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(
        cloud.endpoint + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


class FakeClock:
    """An injected clock: time moves only when a test says so."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
