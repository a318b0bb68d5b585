"""How deployer waits for long-running operations: fast, explicit polling, never the library default.

The client libraries poll a not-done operation with jittered back-off starting at ``uniform(0, 1 s)``
(clientlibs.md §0 item 8: "each extra poll adds about 0.5–1.5 s"), which would add seconds to every
deploy step. ``POLL`` is deployer's schedule: first poll after 50 ms, ×1.5, at most 250 ms apart —
with Google's 80 ms reads that is at most ~0.3 s past the moment an operation ends.

``FAST_POLLING`` is the same schedule as a ``google.api_core`` ``Retry`` for ``op.result(polling=...)``
(sync callers); the orchestrator polls with ``PollSchedule.delays()`` in its own asyncio loop so that
an abort (Ctrl-C, a failed sibling step) is noticed between polls.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PollSchedule:
    initial: float = 0.05
    maximum: float = 0.25
    multiplier: float = 1.5
    timeout: float = 900.0  # the libraries' own default polling timeout (clientlibs.md §3)

    def delays(self) -> Iterator[float]:
        delay = self.initial
        while True:
            yield delay
            delay = min(delay * self.multiplier, self.maximum)

    def as_retry(self) -> Any:
        """The schedule as ``op.result(polling=...)`` takes it."""
        from google.api_core import retry as gretry
        from google.api_core.future import polling

        return gretry.Retry(
            predicate=polling.POLLING_PREDICATE,
            initial=self.initial,
            maximum=self.maximum,
            multiplier=self.multiplier,
            timeout=self.timeout,
        )


POLL = PollSchedule()
