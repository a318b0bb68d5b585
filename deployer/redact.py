"""Keeping secret values out of plan output and the journal.

A Cloud Run env var can carry its value inline (``{"name": "DB_PASSWORD", "value": "..."}``);
``SecretMask`` replaces such values with placeholders in REST-shaped resources (camelCase, as the
API returns them). A value is secret when the config marks its name secret, or when the name looks
like a credential (the same pattern ``logs.redact`` uses for log keys).

Placeholders are consistent within one mask: equal secret values get the same placeholder and
different values different ones, so a masked diff still shows *that* a secret changed, never *what*
it is. Nothing is hashed, so nothing can be guessed back from the output.

Only Cloud Run env values are masked. Resources deployer may write back from a pre-image (the
backend service, Cloud Armor rules) are never masked, because a masked pre-image could not restore
them; rollback restores a Cloud Run service's *traffic*, never its template (issue 6, §4).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from typing import Any

REDACTED_PREFIX = "<redacted"
# Same idea as deployer.logs._SECRET_KEY, for env var names (DB_PASSWORD, API_KEY, AUTH_TOKEN, ...).
CREDENTIAL_NAME = re.compile(
    r"(token|secret|password|passwd|authorization|api[_-]?key|credential|private[_-]?key)", re.I
)

# Where env lists live in REST-shaped Cloud Run resources (v2 Service and Revision).
_ENV_CONTAINERS: dict[str, tuple[str, ...]] = {
    "run.service": ("template", "containers"),
    "run.revision": ("containers",),
}


def is_masked(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(REDACTED_PREFIX) and value.endswith(">")


class SecretMask:
    """Masks secret env values; one instance per plan or journal keeps placeholders consistent."""

    def __init__(self, secret_env_names: Iterable[str] = (), *, by_pattern: bool = True) -> None:
        self.secret_env_names = frozenset(secret_env_names)
        self.by_pattern = by_pattern
        self._tokens: dict[str, str] = {}

    def is_secret_name(self, name: str) -> bool:
        return name in self.secret_env_names or (self.by_pattern and bool(CREDENTIAL_NAME.search(name)))

    def _token(self, value: str) -> str:
        if value not in self._tokens:
            self._tokens[value] = f"{REDACTED_PREFIX}#{len(self._tokens) + 1}>"
        return self._tokens[value]

    def apply(self, kind: str, resource: Mapping[str, Any] | None) -> tuple[dict[str, Any] | None, list[str]]:
        """A masked deep copy of ``resource`` and the paths that were masked (e.g.
        ``template.containers[0].env[2].value``). Kinds without env values come back unchanged."""
        if resource is None:
            return None, []
        out = copy.deepcopy(dict(resource))
        where = _ENV_CONTAINERS.get(kind)
        if where is None:
            return out, []
        node: Any = out
        for key in where:
            node = node.get(key) if isinstance(node, dict) else None
        masked: list[str] = []
        prefix = ".".join(where)
        for ci, container in enumerate(node if isinstance(node, list) else []):
            env = container.get("env") if isinstance(container, dict) else None
            for ei, var in enumerate(env if isinstance(env, list) else []):
                if not isinstance(var, dict) or not isinstance(var.get("value"), str):
                    continue
                if self.is_secret_name(str(var.get("name", ""))) and not is_masked(var["value"]):
                    var["value"] = self._token(var["value"])
                    masked.append(f"{prefix}[{ci}].env[{ei}].value")
        return out, masked


NO_MASK = SecretMask(by_pattern=False)
