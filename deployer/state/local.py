"""A ``StateStore`` in a local directory (the default; one machine, many processes).

- Each key is a file under the directory; the file is a one-line JSON header holding the
  generation, then the data. Data and generation change together in one ``os.replace``.
- Writes are atomic and durable: a temporary file in the same directory, ``fsync``, ``os.replace``,
  then ``fsync`` of the directory. A reader sees the old object or the new one, never a mix.
- The compare-and-swap (read the generation, compare, replace) runs under an exclusive
  ``fcntl.flock`` on ``<directory>/.lock``, so processes (and threads: each call opens its own file
  description) never interleave. Reads take no lock.
- Generations grow with time (microseconds since the epoch, and always above the object's previous
  one), like Cloud Storage's, so a deleted and re-created object never repeats an old generation
  (as long as the clock does not run backwards across a delete).

Files and directories whose name starts with ``.`` (the lock, temporaries) are not keys.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from deployer.errors import CorruptStateError, StaleStateError, StateError
from deployer.state import check_key

_HEADER_MAX = 200


class LocalStateStore:
    """``StateStore`` over ``directory``, created by the first write or delete: opening a store and reading
    it (``status``, ``plan``, ``history``) never creates anything; a directory that is not there reads as
    empty."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.root = Path(directory).resolve()
        self._lock_path = self.root / ".lock"

    def _create_root(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create the state directory {self.root}: {exc.strerror}") from exc

    def __repr__(self) -> str:
        return f"LocalStateStore({str(self.root)!r})"

    # ---- helpers -----------------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def where(self, key: str) -> str:
        """The object's file, absolute (a relative ``state.path`` was resolved against the config's directory)."""
        return str(self._path(key))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._create_root()
        try:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StateError(f"cannot write to the state directory {self.root}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    def _load(self, key: str) -> tuple[bytes, int] | None:
        path = self._path(key)
        try:
            raw = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except IsADirectoryError:
            return None  # a key that is only a prefix of others
        except OSError as exc:
            raise StateError(f"cannot read state {key} from {path}: {exc.strerror}") from exc
        newline = raw.find(b"\n", 0, _HEADER_MAX)
        try:
            header = json.loads(raw[:newline]) if newline > 0 else None
            generation = int(header["generation"]) if isinstance(header, dict) else 0
        except (ValueError, KeyError, TypeError):
            generation = 0
        if generation <= 0:
            problem = "no valid generation header; it was not written by deployer"
            raise CorruptStateError(f"state object {path} has {problem}", key=key, problem=problem)
        return raw[newline + 1 :], generation

    @staticmethod
    def _check(key: str, current: int | None, if_generation: int | None) -> None:
        if if_generation is None:
            return
        if if_generation < 0:
            raise ValueError("if_generation must be None, 0 or a generation")
        if (current or 0) != if_generation:
            expected = "absent" if if_generation == 0 else f"generation {if_generation}"
            actual = "absent" if current is None else f"at generation {current}"
            raise StaleStateError(
                f"state {key} changed under us: expected {expected}, found it {actual}",
                key=key,
                expected=if_generation,
                actual=current,
            )

    def _fsync_dir(self, directory: Path) -> None:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # ---- StateStore ----------------------------------------------------------------------------
    def read(self, key: str) -> tuple[bytes, int] | None:
        return self._load(key)

    def write(self, key: str, data: bytes, *, if_generation: int | None) -> int:
        path = self._path(key)
        if not isinstance(data, bytes | bytearray):
            raise TypeError("state data must be bytes")
        with self._locked():
            current = self._load(key)
            self._check(key, current[1] if current else None, if_generation)
            generation = max(time.time_ns() // 1000, (current[1] + 1) if current else 1)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
                try:
                    with os.fdopen(fd, "wb") as out:
                        out.write(json.dumps({"generation": generation}).encode() + b"\n")
                        out.write(data)
                        out.flush()
                        os.fsync(out.fileno())
                    os.replace(tmp, path)
                except BaseException:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
                    raise
                self._fsync_dir(path.parent)
            except OSError as exc:
                raise StateError(f"cannot write state {key} to {path}: {exc.strerror}") from exc
            return generation

    def delete(self, key: str, *, if_generation: int | None) -> bool:
        path = self._path(key)
        if if_generation == 0:
            raise ValueError("delete with if_generation=0 can never succeed")
        if not self.root.is_dir():  # nothing was ever written: nothing to delete, and nothing to create
            self._check(key, None, if_generation)
            return False
        with self._locked():
            if if_generation is None and path.is_file():
                current: tuple[bytes, int] | None = (b"", 0)  # unconditional: even a file whose header is broken
            else:
                current = self._load(key)
            self._check(key, current[1] if current else None, if_generation)
            if current is None:
                return False
            try:
                path.unlink()
                self._fsync_dir(path.parent)
            except OSError as exc:
                raise StateError(f"cannot delete state {key} ({path}): {exc.strerror}") from exc
            return True

    def list(self, prefix: str) -> list[str]:
        # Walk only below the deepest directory the prefix names.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root / base if base else self.root
        if not start.is_dir():
            return []
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = os.path.relpath(dirpath, self.root)
            for name in filenames:
                if name.startswith("."):
                    continue
                key = name if rel == "." else f"{rel}/{name}".replace(os.sep, "/")
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)
