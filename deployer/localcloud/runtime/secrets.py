"""Local Secret Manager values, for revisions whose env reads ``value_source.secret_key_ref``.

A secrets file (runtime option ``secrets_file``, or ``secrets_file:`` in a seed document) and/or an
inline ``secrets:`` mapping in the seed hold the values. Keys may be written three ways, most
specific first::

    projects/chat-staging/secrets/jwt-key/versions/2: "v2-value"   # one version
    projects/chat-staging/secrets/jwt-key: "any-version-value"      # every version of one secret
    jwt-key: "value"                                                 # the secret in any project

``latest`` (or no version) resolves to the highest numbered version listed, else to the
unversioned key. A reference that resolves to nothing fails the revision with Cloud Run's wording
(``failures.secret_not_found``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from deployer.errors import ConfigError

_FULL = re.compile(r"^projects/(?P<project>[^/]+)/secrets/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?$")


class SecretStore:
    def __init__(self, values: dict[str, str] | None = None) -> None:
        self.values: dict[str, str] = dict(values or {})

    @staticmethod
    def read_file(path: str | Path) -> dict[str, str]:
        p = Path(path)
        try:
            doc = yaml.safe_load(p.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read the secrets file: {exc.strerror}", file=str(p)) from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"not valid YAML: {exc}", file=str(p)) from exc
        if not isinstance(doc, dict):
            raise ConfigError("a secrets file must hold a mapping of secret name to value", file=str(p))
        return _stringify(doc, str(p))

    def load_file(self, path: str | Path) -> None:
        self.values.update(self.read_file(path))

    def load_mapping(self, mapping: Any, source: str = "seed: secrets") -> None:
        if not isinstance(mapping, dict):
            raise ConfigError("secrets must be a mapping of secret name to value", file=source)
        self.values.update(_stringify(mapping, source))

    def clear(self) -> None:
        self.values.clear()

    def resolve(self, secret: str, version: str, project: str) -> tuple[str, str | None]:
        """(the full version name Cloud Run reports, the value or None)."""
        m = _FULL.match(secret)
        if m:
            project, name = m.group("project"), m.group("name")
        else:
            name = secret
        version = version or "latest"
        full_secret = f"projects/{project}/secrets/{name}"
        full = f"{full_secret}/versions/{version}"
        if version != "latest":
            for key in (full, full_secret, name):
                if key in self.values:
                    return full, self.values[key]
            return full, None
        numbered: list[tuple[int, str]] = []
        for key in self.values:
            km = _FULL.match(key)
            if km and km.group("project") == project and km.group("name") == name and km.group("version"):
                ver = km.group("version")
                if ver.isdigit():
                    numbered.append((int(ver), key))
        if numbered:
            return full, self.values[max(numbered)[1]]
        for key in (full, full_secret, name):
            if key in self.values:
                return full, self.values[key]
        return full, None


def _stringify(mapping: dict[Any, Any], source: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in mapping.items():
        if isinstance(value, dict | list):
            raise ConfigError("a secret's value must be a string", file=source, key=str(key))
        out[str(key)] = "" if value is None else str(value)
    return out
