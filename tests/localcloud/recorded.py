"""Recorded Google HTTP traffic (``../shared/reference/gcp-http/*.http.log``): parse, normalise, compare.

Pure helpers for ``test_recorded_traffic.py`` (no network here):

- ``parse(text)``: the exchanges of one file. A file is exchanges separated by ``---`` lines; each is a
  request line (``METHOD URL``), request headers, an optional JSON body, a status line (``200 OK``),
  response headers and a JSON body.
- ``Bindings``: the recordings replace ids with placeholders (``${projectId}``, ``${operationID}``,
  ``abcdef0123A=`` for fingerprints and etags, ...). Placeholders the *client* chooses (project, resource
  names) are fixed up front; ones the *server* assigns (operation names, fingerprints) are learned from
  each local response by lining it up with the recorded one, and substituted into later requests.
- ``compare(recorded, actual)``: the shape differences: a field the recording has that the local
  answer lacks (``missing``), one only the local answer has (``extra``), a different JSON type
  (``type``), or a different value where the value is part of the contract (``kind``, ``@type``,
  ``operationType``, ``networkEndpointType``, condition ``type``/``state``, error
  ``status``/``reason``/``code``). Lists compare as the union of their elements' shapes, so order and
  length (e.g. how many conditions) do not matter, but an empty list where the recording has items does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

PLACEHOLDER = re.compile(r"\$\{(\w+)\}")
# The recordings' stand-in for fingerprints and etags (README: "... and abcdef0123A=").
TOKEN = "abcdef0123A="
_STATUS_LINE = re.compile(r"^(\d{3}) (.*)$")
# Values that are part of the contract, compared as values, not only as types.
VALUE_KEYS = frozenset({"kind", "@type"})
# ... and these too, outside lists (inside a list the union shape picks one element's value, and the
# order of e.g. conditions is not part of the contract).
SCALAR_VALUE_KEYS = frozenset({"operationType", "networkEndpointType", "type", "state"})
ERROR_VALUE_KEYS = frozenset({"code", "status", "reason", "domain"})


@dataclass(frozen=True)
class Message:
    headers: tuple[tuple[str, str], ...]
    body: Any  # parsed JSON, or None when there is no body
    raw_body: str

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


@dataclass(frozen=True)
class Exchange:
    index: int  # 1-based position in its file
    method: str
    url: str
    request: Message
    status: int
    reason: str
    response: Message

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    @property
    def query(self) -> list[tuple[str, str]]:
        return parse_qsl(urlsplit(self.url).query, keep_blank_values=True)

    def describe(self) -> str:
        return f"#{self.index} {self.method} {self.host}{self.path}"


class ParseError(ValueError):
    pass


def _json_or_none(text: str, where: str) -> Any:
    text = text.strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ParseError(f"{where}: body is not JSON: {exc}") from exc


def _split_headers(lines: list[str]) -> tuple[tuple[tuple[str, str], ...], list[str]]:
    headers: list[tuple[str, str]] = []
    i = 0
    while i < len(lines) and lines[i].strip():
        key, sep, value = lines[i].partition(":")
        if not sep:
            break
        headers.append((key.strip(), value.strip()))
        i += 1
    return tuple(headers), lines[i:]


def parse(text: str) -> list[Exchange]:
    """Every exchange of one recorded file, in order."""
    chunks: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.strip() == "---":
            chunks.append([])
        else:
            chunks[-1].append(line)
    out: list[Exchange] = []
    for chunk in chunks:
        while chunk and not chunk[0].strip():
            chunk.pop(0)
        if not chunk:
            continue
        index = len(out) + 1
        method, _, url = chunk[0].partition(" ")
        if not method.isupper() or not url.startswith("http"):
            raise ParseError(f"exchange {index}: not a request line: {chunk[0]!r}")
        req_headers, rest = _split_headers(chunk[1:])
        status_at = next((i for i, line in enumerate(rest) if _STATUS_LINE.match(line)), None)
        if status_at is None:
            raise ParseError(f"exchange {index}: no status line")
        req_raw = "\n".join(rest[:status_at])
        match = _STATUS_LINE.match(rest[status_at])
        assert match is not None
        resp_headers, resp_rest = _split_headers(rest[status_at + 1 :])
        resp_raw = "\n".join(resp_rest)
        out.append(
            Exchange(
                index=index,
                method=method,
                url=url.strip(),
                request=Message(req_headers, _json_or_none(req_raw, f"exchange {index} request"), req_raw.strip()),
                status=int(match.group(1)),
                reason=match.group(2).strip(),
                response=Message(resp_headers, _json_or_none(resp_raw, f"exchange {index} response"), resp_raw.strip()),
            )
        )
    return out


def load(path: Path) -> list[Exchange]:
    return parse(path.read_text())


def placeholders(exchanges: list[Exchange]) -> set[str]:
    """Every ``${name}`` the exchanges use (requests and responses)."""
    names: set[str] = set()
    for ex in exchanges:
        for text in (ex.url, ex.request.raw_body, ex.response.raw_body):
            names.update(PLACEHOLDER.findall(text))
    return names


# ---- placeholders ----------------------------------------------------------------------------------
@dataclass
class Bindings:
    """``fixed``: client-chosen values (never relearned). ``learned``: server-assigned, updated from each
    response. ``tokens``: the latest real value of each field the recording shows as ``abcdef0123A=``."""

    fixed: dict[str, str]
    server_assigned: frozenset[str] = frozenset({"operationID"})
    learned: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)

    def value(self, name: str) -> str | None:
        return self.fixed.get(name) or self.learned.get(name)

    def substitute_text(self, text: str) -> str:
        def repl(m: re.Match[str]) -> str:
            value = self.value(m.group(1))
            if value is None:
                raise KeyError(f"no value for placeholder ${{{m.group(1)}}} in {text!r}")
            return value

        return PLACEHOLDER.sub(repl, text)

    def substitute(self, value: Any, key: str | None = None) -> Any:
        """A recorded request value with every placeholder replaced (recursively)."""
        if isinstance(value, str):
            if value == TOKEN and key is not None and key in self.tokens:
                return self.tokens[key]
            return self.substitute_text(value)
        if isinstance(value, list):
            return [self.substitute(v, key) for v in value]
        if isinstance(value, dict):
            return {k: self.substitute(v, k) for k, v in value.items()}
        return value

    def _pattern(self, recorded: str) -> tuple[re.Pattern[str], list[str]] | None:
        names: list[str] = []
        parts: list[str] = []
        pos = 0
        for m in PLACEHOLDER.finditer(recorded):
            parts.append(re.escape(recorded[pos : m.start()]))
            name = m.group(1)
            known = self.fixed.get(name)
            if known is not None or name not in self.server_assigned:
                parts.append(re.escape(known) if known is not None else ".+?")
            else:
                parts.append("(.+?)")
                names.append(name)
            pos = m.end()
        if not names:
            return None
        parts.append(re.escape(recorded[pos:]))
        return re.compile("^" + "".join(parts) + "$"), names

    def learn(self, recorded: Any, actual: Any, key: str | None = None) -> None:
        """Line ``actual`` up with ``recorded`` and remember server-assigned values."""
        if isinstance(recorded, str) and isinstance(actual, str):
            if recorded == TOKEN and key is not None:
                self.tokens[key] = actual
                return
            pattern = self._pattern(recorded)
            if pattern is not None:
                m = pattern[0].match(actual)
                if m is not None:
                    self.learned.update(zip(pattern[1], m.groups(), strict=True))
        elif isinstance(recorded, dict) and isinstance(actual, dict):
            for k, v in recorded.items():
                if k in actual:
                    self.learn(v, actual[k], k)
        elif isinstance(recorded, list) and isinstance(actual, list):
            for r, a in zip(recorded, actual, strict=False):
                self.learn(r, a, key)


# ---- shapes ----------------------------------------------------------------------------------------
def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    raise TypeError(f"not a JSON value: {value!r}")


@dataclass(frozen=True)
class Difference:
    path: str
    kind: str  # missing | extra | type | value | empty
    recorded: str
    actual: str

    def __str__(self) -> str:
        if self.kind == "missing":
            return f"{self.path}: missing (recorded {self.recorded})"
        if self.kind == "extra":
            return f"{self.path}: extra field (local {self.actual})"
        if self.kind == "empty":
            return f"{self.path}: empty list (recorded has items)"
        return f"{self.path}: {self.kind} differs (recorded {self.recorded}, local {self.actual})"


def _merge(values: list[Any]) -> Any:
    """The union shape of a list's elements: objects merge key by key, the first of other kinds wins."""
    dicts = [v for v in values if isinstance(v, dict)]
    if dicts and len(dicts) == len(values):
        merged: dict[str, Any] = {}
        for d in dicts:
            for k, v in d.items():
                if k in merged and isinstance(merged[k], list) and isinstance(v, list):
                    merged[k] = merged[k] + v
                elif k in merged and isinstance(merged[k], dict) and isinstance(v, dict):
                    merged[k] = _merge([merged[k], v])
                else:
                    merged.setdefault(k, v)
        return merged
    return values[0] if values else None


def compare(recorded: Any, actual: Any, path: str = "", in_error: bool = False) -> list[Difference]:
    """Shape differences between a recorded JSON value and the local one (see module doc)."""
    out: list[Difference] = []
    rtype, atype = json_type(recorded), json_type(actual)
    here = path or "$"
    if rtype != atype:
        return [Difference(here, "type", rtype, atype)]
    if rtype == "object":
        for key in recorded:
            sub = f"{path}.{key}" if path else key
            if key not in actual:
                out.append(Difference(sub, "missing", json_type(recorded[key]), ""))
            else:
                out.extend(compare(recorded[key], actual[key], sub, in_error or key == "error"))
        for key in actual:
            if key not in recorded:
                sub = f"{path}.{key}" if path else key
                out.append(Difference(sub, "extra", "", json_type(actual[key])))
        return out
    if rtype == "array":
        if recorded and not actual:
            return [Difference(here, "empty", "array", "array")]
        if recorded and actual:
            out.extend(compare(_merge(recorded), _merge(actual), f"{path}[]", in_error))
        return out
    leaf = path.rsplit(".", 1)[-1].rstrip("[]")
    contract = (
        leaf in VALUE_KEYS
        or (leaf in SCALAR_VALUE_KEYS and "[]" not in path)
        or (in_error and leaf in ERROR_VALUE_KEYS)
    )
    if contract and recorded != actual and not PLACEHOLDER.search(str(recorded)):
        out.append(Difference(here, "value", json.dumps(recorded), json.dumps(actual)))
    return out


def iter_files(directory: Path) -> Iterator[Path]:
    yield from sorted(directory.glob("*.http.log"))
