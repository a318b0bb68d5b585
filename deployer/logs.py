"""Structured logging with structlog.

On a TTY: a readable console renderer. Otherwise (Cloud Build, CI, pipes): one JSON object per
line in Cloud Logging's shape, ``severity`` and ``message`` first, bound context after.
Secrets never reach a log: ``redact`` masks values of keys that look like credentials.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_KEY = re.compile(r"(token|secret|password|passwd|authorization|api[_-]?key|credential)", re.I)

_SEVERITY = {
    "debug": "DEBUG",
    "info": "INFO",
    "warning": "WARNING",
    "warn": "WARNING",
    "error": "ERROR",
    "critical": "CRITICAL",
    "exception": "ERROR",
}


def redact(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Mask the value of any key that names a credential."""
    for key in list(event_dict):
        if key != "event" and _SECRET_KEY.search(key) and event_dict[key] not in (None, ""):
            event_dict[key] = "***"
    return event_dict


def cloud_logging_shape(_logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Rename structlog's keys to what Cloud Logging reads from a JSON line."""
    level = event_dict.pop("level", name)
    event_dict["severity"] = _SEVERITY.get(str(level).lower(), "DEFAULT")
    event_dict["message"] = event_dict.pop("event", "")
    return event_dict


class _StderrNow:
    """Whatever ``sys.stderr`` is when a line is written (tests swap it; a bound stream would go stale).

    ``silence`` mutes it under the same lock every write takes: an event a worker thread had already
    rendered when the command said its last line is dropped, not printed after it."""

    lock = threading.Lock()
    muted = False
    _partial = threading.local()  # a thread's line so far: PrintLogger writes the event, then "\n"

    def write(self, text: str) -> int:
        line = getattr(self._partial, "text", "") + text
        if not line.endswith("\n"):
            self._partial.text = line
            return len(text)
        self._partial.text = ""
        with _StderrNow.lock:  # whole lines only: written before ``silence``, or not at all
            if not _StderrNow.muted:
                sys.stderr.write(line)
        return len(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


# ONE instance: structlog's PrintLogger locks per file object around its two writes (the line, then "\n"),
# so two instances let two threads interleave their halves ("{A}{B}\n\n").
STDERR = _StderrNow()


def configure(*, json: bool | None = None, level: str = "info", stream: Any = None) -> None:
    """Configure structlog once per process. ``json=None`` picks JSON when the stream is not a TTY."""
    # Default: whatever sys.stderr is at each write, not the object it is now (a test's captured stream
    # closes; a logger bound to it would fail on the next event).
    out: Any = stream or STDERR
    if json is None:
        json = not (hasattr(out, "isatty") and out.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        redact,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
    ]
    if json:
        processors += [cloud_logging_shape, structlog.processors.JSONRenderer(sort_keys=False)]
    else:
        processors += [structlog.dev.ConsoleRenderer(colors=hasattr(out, "isatty") and out.isatty())]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def _drop(_logger: Any, _name: str, _event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    raise structlog.DropEvent


_SILENT = [_drop]  # the processor chain of a silenced process: every event dropped
_SILENCED: dict[str, Any] | None = None  # the configuration ``silence`` replaced


def silence() -> None:
    """Drop every later log event, from any thread: the command has said its last line (``error: ...``), and a
    worker thread still retrying a parallel read must not log after it. ``unsilence`` puts logging back."""
    global _SILENCED
    with _StderrNow.lock:  # a line being written finishes first; none starts after
        _StderrNow.muted = True
    config = structlog.get_config()
    if config["processors"] is not _SILENT:
        _SILENCED = config
    structlog.configure(processors=_SILENT)


def unsilence() -> None:
    """Undo ``silence`` for the next command in the same process (tests), unless logging was configured anew
    since (then that configuration stands)."""
    global _SILENCED
    _StderrNow.muted = False
    if _SILENCED is not None and structlog.get_config()["processors"] is _SILENT:
        structlog.configure(**_SILENCED)
    _SILENCED = None


def get_logger(**context: Any) -> Any:
    """A logger with ``context`` bound (deploy id, phase, service, ...)."""
    return structlog.get_logger().bind(**context)


def ensure_configured() -> None:
    """Send logs to stderr unless something configured them already.

    structlog's unconfigured default prints to *stdout*: a ``gcp.retry`` event during ``deployer
    plan --json`` would land inside the JSON. The CLI calls this before any command; a command that
    configures logging itself (``deploy``, ``gate``, ``localcloud up``) still does so.
    """
    if not structlog.is_configured():
        configure(stream=STDERR, level="warning" if sys.stderr.isatty() else "info")
