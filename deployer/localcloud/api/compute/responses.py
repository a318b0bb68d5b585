"""Wire layer of the emulated API: ROUTES (placeholder until the API is built)."""

from __future__ import annotations

from deployer.localcloud.api.common import Route

ROUTES: list[Route] = []
