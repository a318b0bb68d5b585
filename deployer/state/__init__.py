"""Where deployer keeps what must outlive a process: journals, locks, pins.

A ``StateStore`` is a flat namespace of keys (``deploys/api/d-20261126-145201-a1b2.json``) holding
bytes, each with a *generation* that changes on every write. Every write and delete may carry a
precondition on it, as Cloud Storage's ``ifGenerationMatch`` does: ``if_generation=N`` succeeds only
if the object is still at generation N, ``0`` only if it does not exist, ``None`` unconditionally.
That compare-and-swap is what makes two writers never both win (a lost race raises
``StaleStateError``). Generations are opaque: compare them for equality, never do arithmetic.

Implementations: ``local.LocalStateStore`` (a directory) and ``gcs.GcsStateStore`` (a Cloud Storage
bucket + prefix, generation preconditions sent as ``ifGenerationMatch``); both pass
``tests/state/test_store_contract.py``. ``open_store(config.state, clients)`` picks one from the config.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from deployer.errors import CorruptStateError, StateError

if TYPE_CHECKING:
    from deployer.config import StateConfig
    from deployer.gcp.clients import Clients

# Keys: '/'-separated segments of letters, digits, '.', '_', '-', none starting with '.', so every
# key is also a valid relative path and a valid Cloud Storage object name.
_SEGMENT = r"[A-Za-z0-9_-][A-Za-z0-9._-]*"
KEY_RE = re.compile(rf"{_SEGMENT}(/{_SEGMENT})*")
KEY_MAX = 512


def check_key(key: str) -> str:
    """``key`` if it is a valid state key, else ``ValueError`` (keys are built by code, not users)."""
    if not isinstance(key, str) or len(key) > KEY_MAX or not KEY_RE.fullmatch(key):
        raise ValueError(f"invalid state key {key!r}")
    return key


@runtime_checkable
class StateStore(Protocol):
    """Generation-checked object storage. See the module docstring for the semantics."""

    def read(self, key: str) -> tuple[bytes, int] | None:
        """The object's data and generation, or ``None`` when it does not exist."""
        ...

    def write(self, key: str, data: bytes, *, if_generation: int | None) -> int:
        """Replace the object atomically and return its new generation.

        ``if_generation``: ``None`` = unconditionally, ``0`` = only if it does not exist, ``N`` = only
        if it is at generation N. Raises ``StaleStateError`` when the precondition fails."""
        ...

    def delete(self, key: str, *, if_generation: int | None) -> bool:
        """Delete the object; ``False`` when it did not exist (and ``if_generation`` was ``None``).

        ``if_generation=N`` raises ``StaleStateError`` when the object is not at N (or is gone)."""
        ...

    def list(self, prefix: str) -> list[str]:
        """Every key starting with ``prefix`` (a plain string prefix), sorted."""
        ...

    def where(self, key: str) -> str:
        """Where the object of ``key`` is, for a person to find it by hand: ``gs://bucket/prefix/key``, or
        the absolute path of its file. Every message that names a state object names it with this (a key
        alone is relative to a store the reader would have to work out). Contacts nothing."""
        ...


def read_json(store: StateStore, key: str) -> tuple[Any, int] | None:
    """Read and parse a JSON object; a corrupt one is a ``CorruptStateError`` naming where it is (``problem``
    in its fields: what is wrong, without the location, for a caller that names the object itself)."""
    got = store.read(key)
    if got is None:
        return None
    data, generation = got
    try:
        return json.loads(data), generation
    except ValueError as exc:
        raise CorruptStateError(
            f"state object {store.where(key)} is not valid JSON: {exc}", key=key, problem=f"not valid JSON: {exc}"
        ) from exc


def dump_json(doc: Any) -> bytes:
    """The bytes deployer writes for a JSON state object (readable, stable key order)."""
    return (json.dumps(doc, indent=1, ensure_ascii=False, sort_keys=False) + "\n").encode()


def open_store(state: StateConfig, clients: Clients | None = None, *, base: str | Path | None = None) -> StateStore:
    """The store a config's ``state:`` section names.

    - ``backend: local``: ``LocalStateStore(path)``. A config from ``load_config`` already holds it
      absolute, resolved against the config file's directory (``config.anchor_state``: the one place);
      a relative ``path`` here (a config built from text or data) is taken from ``base`` (default: the
      current directory). The directory is created by the first write, never by opening or reading.
    - ``backend: gcs``: ``GcsStateStore(bucket, prefix, clients)`` — pass the same ``Clients`` the
      deploy uses (``Clients(endpoint=config.endpoint, ...)``) so the local cloud's storage is used
      when the config targets it; ``None`` means real Google with Application Default Credentials.

    Nothing is contacted here (stores connect on first use), and ``google.cloud`` is only imported
    for ``gcs``.
    """
    if state.backend == "gcs":
        from deployer.state.gcs import GcsStateStore

        if not state.bucket:  # the config model refuses this already; keep the store honest anyway
            raise StateError("state backend gcs needs a bucket")
        return GcsStateStore(state.bucket, state.prefix, clients)
    from deployer.state.local import LocalStateStore

    path = Path(state.path).expanduser()
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return LocalStateStore(path)
