"""The one exception tree of deployer.

Every error a user can cause or meet is a ``DeployerError``: it carries a one-line ``message``,
an optional ``hint`` (what to do instead) and the process ``exit_code`` the CLI ends with.
The CLI prints ``error: <message>`` (and ``hint: <hint>``) and never a traceback for these.

    DeployerError                     exit 1 unless stated
    ├── UsageError                    exit 2  a wrong flag, argument or combination
    │   ├── ConfigError               exit 2  a config file that cannot be read or is invalid
    │   └── PlanFileError             exit 2  a saved plan file that cannot be read
    ├── CloudError                    exit 1  a Google (or local cloud) API call failed
    │   ├── TransientCloudError               still failing after the retry policy gave up
    │   ├── ConflictError                     etag / fingerprint / generation moved under us
    │   └── NotFoundError                     a resource the step needs does not exist
    ├── PreflightError                exit 1  `check` rules found errors
    ├── GateError                     exit 3  the gate could not run at all (not a Failed verdict)
    ├── StateError                    exit 1  journal / state store problems
    │   ├── StaleStateError                   a state object's generation moved (compare-and-swap lost)
    │   ├── JournalError                      a journal that cannot be read or breaks its own rules
    │   ├── CorruptStateError                 a state object that is there but cannot be parsed (never overwritten)
    │   ├── LockLostError                     our lease was taken or deleted while we held it
    │   ├── LockHeldError             exit 4  another deploy holds the service lock
    │   └── JournalUnwritableError    exit 3  a deploy stopped mid-way: its journal could not be written
    ├── PinnedError                   exit 4  an emergency rollback pinned the service (``deploy --unpin``)
    ├── DriftError                    exit 1  live state differs from what the last deploy left
    ├── FreezeError                   exit 1  a deploy inside a freeze window (config ``freeze:``)
    ├── RollbackIncompleteError       exit 3  a rollback could not put everything back
    └── LocalCloudError               exit 1  the embedded local cloud failed (port in use, …)

    KeyboardInterrupt
    └── Interrupted                   130/143 Ctrl-C / SIGTERM after acting: the journal is left for `resume`

Raise with ``raise XError(...) from exc`` so the cause is kept for ``--debug``.
"""

from __future__ import annotations

from typing import Any


class DeployerError(Exception):
    """Base of every error deployer reports to a user."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.fields = fields

    def __str__(self) -> str:
        return self.message


class UsageError(DeployerError):
    exit_code = 2


class PlanFileError(UsageError):
    """A saved plan (``deploy --plan FILE``) that cannot be read: names the file and what is wrong."""


class ConfigError(UsageError):
    """A config that cannot be loaded: names the file, line, key and what is allowed."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        key: str | None = None,
        hint: str | None = None,
    ) -> None:
        where = file or "<config>"
        if line is not None:
            where = f"{where}:{line}"
        if key:
            where = f"{where}: {key}"
        super().__init__(f"{where}: {message}", hint=hint, file=file, line=line, key=key)
        self.file, self.line, self.key = file, line, key


class CloudError(DeployerError):
    """A cloud API call failed. ``status`` is the HTTP status when there was one.

    ``attempts`` is how many times the call was made (``gcp/retry.py``). ``outcome_unknown`` is True
    when an earlier attempt ended without a definite answer (a reset or timeout after the request
    was sent, a 5xx): a mutation may then have been applied even though this error is what we saw,
    so the caller re-reads the resource before deciding anything.
    """

    def __init__(
        self,
        message: str,
        *,
        method: str | None = None,
        status: int | None = None,
        reason: str | None = None,
        hint: str | None = None,
        attempts: int = 1,
        outcome_unknown: bool = False,
    ) -> None:
        super().__init__(
            message,
            hint=hint,
            method=method,
            status=status,
            reason=reason,
            attempts=attempts,
            outcome_unknown=outcome_unknown,
        )
        self.method, self.status, self.reason = method, status, reason
        self.attempts, self.outcome_unknown = attempts, outcome_unknown


class TransientCloudError(CloudError):
    pass


class ConflictError(CloudError):
    pass


class NotFoundError(CloudError):
    pass


class PreflightError(DeployerError):
    pass


class GateError(DeployerError):
    exit_code = 3


class StateError(DeployerError):
    pass


class StaleStateError(StateError):
    """A conditional write or delete lost: the object's generation is no longer the one we read."""

    def __init__(self, message: str, *, key: str, expected: int | None, actual: int | None) -> None:
        super().__init__(message, key=key, expected=expected, actual=actual)
        self.key, self.expected, self.actual = key, expected, actual


class JournalError(StateError):
    pass


class CorruptStateError(StateError):
    """A state object that exists but cannot be parsed (no generation header, not JSON): deployer never
    overwrites or deletes it on its own; the message names the key (and the file)."""


class LockLostError(StateError):
    pass


class LockHeldError(StateError):
    exit_code = 4


class JournalUnwritableError(StateError):
    """A deploy that had changed something stopped because its journal could not be written (the state store
    refused or never answered): it neither went on nor rolled back; ``deployer resume`` finishes or undoes it."""

    exit_code = 3


class PinnedError(DeployerError):
    """A deploy refused while an emergency rollback's pin holds (``orchestrator/pins.py``): someone is in
    charge of this service, like a held lock. ``deploy --unpin`` or ``deployer unpin`` clears it."""

    exit_code = 4


class DriftError(DeployerError):
    pass


class FreezeError(DeployerError):
    """A deploy refused inside an active freeze window; ``--override-freeze --reason`` overrides it."""


class RollbackIncompleteError(DeployerError):
    exit_code = 3


class LocalCloudError(DeployerError):
    pass


class Interrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM after a command had changed something and left its journal for ``deployer resume``.

    Not a ``DeployerError``: it stays a ``KeyboardInterrupt`` (``finally`` blocks run, the CLI ends with the
    signal's exit code, 130 / 143); the CLI adds ``message`` (what was left) to its one ``error:`` line
    and prints ``hint`` (what to run)."""

    def __init__(self, message: str, *, hint: str) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
