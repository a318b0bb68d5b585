"""Compute resource URLs as Google renders them, and Compute's two most common error answers."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from deployer.cloudarmor.policy import render_value
from deployer.localcloud.api.common import ApiError

BASE = "https://www.googleapis.com/compute/v1"
# Compute resource names (RFC 1035), as Compute words the rule in its 400s.
NAME_PATTERN = "[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?"
NAME = re.compile(f"^{NAME_PATTERN}$")
_LINK = re.compile(
    r"^(?:https?://[^/]+/compute/v1/)?projects/(?P<project>[^/]+)/"
    r"(?:global|regions/(?P<region>[^/]+))/(?P<collection>[A-Za-z]+)/(?P<name>[^/?#]+)$"
)
REGION_LINK = re.compile(r"^(?:https?://[^/]+/compute/v1/)?projects/[^/]+/(?:global/)?regions/(?P<region>[^/]+)$")


def global_link(project: str, collection: str, name: str | None = None) -> str:
    base = f"{BASE}/projects/{project}/global/{collection}"
    return f"{base}/{name}" if name else base


def regional_link(project: str, region: str, collection: str, name: str | None = None) -> str:
    base = f"{BASE}/projects/{project}/regions/{region}/{collection}"
    return f"{base}/{name}" if name else base


def region_link(project: str, region: str) -> str:
    return f"{BASE}/projects/{project}/regions/{region}"


@dataclass(frozen=True)
class Link:
    project: str
    region: str | None
    collection: str
    name: str

    @property
    def path(self) -> str:
        """``projects/p/global/backendServices/x`` (how Compute names a resource in messages)."""
        where = f"regions/{self.region}" if self.region else "global"
        return f"projects/{self.project}/{where}/{self.collection}/{self.name}"

    @property
    def url(self) -> str:
        return f"{BASE}/{self.path}"


def parse_link(value: str) -> Link | None:
    """A full or partial Compute URL (``projects/p/global/backendServices/x``), or None."""
    match = _LINK.match(value.strip()) if isinstance(value, str) else None
    if match is None:
        return None
    return Link(match["project"], match["region"], match["collection"], match["name"])


def not_found(path: str) -> ApiError:
    return ApiError(404, f"The resource '{path}' was not found", reason="notFound")


def invalid(field: str, value: Any, reason: str) -> ApiError:
    return ApiError(400, f"Invalid value for field '{field}': '{render_value(value)}'. {reason}", reason="invalid")
