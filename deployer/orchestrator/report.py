"""How a deploy reads while it runs and when it ends.

- ``Reporter``: what the orchestrator tells as it goes (a step started, a step finished with a one-line
  detail, a note). ``NullReporter`` says nothing (logs carry everything; CI), ``LineReporter`` prints
  one line per event (the demo's story, plain terminals), ``LiveReporter`` is a rich live view of the
  phases on a TTY.
- ``DeployResult``: the outcome as a value; ``render_result`` (human) and ``DeployResult.to_json``.

Nothing here holds a secret: details are built from names, percents and gate summaries only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text


class Reporter(Protocol):
    def step_started(self, label: str) -> None: ...

    def step_finished(self, label: str, ok: bool, seconds: float, detail: str) -> None: ...

    def note(self, text: str) -> None: ...

    def close(self) -> None: ...


class NullReporter:
    def step_started(self, label: str) -> None:
        pass

    def step_finished(self, label: str, ok: bool, seconds: float, detail: str) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class LineReporter:
    """One line per finished step (and per note), for the demo's story and non-rich terminals."""

    def __init__(self, stream: TextIO, *, indent: str = "  ") -> None:
        self.console = Console(file=stream, highlight=False, soft_wrap=True)
        self.indent = indent

    def step_started(self, label: str) -> None:
        pass

    def step_finished(self, label: str, ok: bool, seconds: float, detail: str) -> None:
        mark = Text("✓", style="green") if ok else Text("✗", style="bold red")
        line = Text(self.indent)
        line.append(mark)
        line.append(f" {label:<16}", style="bold")
        line.append(f"{seconds:5.1f} s  ", style="dim")
        line.append(detail)
        self.console.print(line)

    def note(self, text: str) -> None:
        self.console.print(Text(f"{self.indent}  {text}", style="dim"))

    def close(self) -> None:
        pass


class LiveReporter:
    """A live table of the phases (rich) while the deploy runs on a TTY."""

    def __init__(self, console: Console, title: str) -> None:
        self.console = console
        self.title = title
        self.rows: list[tuple[str, str, float, str]] = []  # label, state (run|ok|fail), seconds, detail
        self.notes: list[str] = []
        self._started: dict[str, float] = {}
        self.live = Live(self._render(), console=console, refresh_per_second=8, transient=False)
        self.live.start()

    def _render(self) -> Any:
        table = Table(box=None, show_header=False, pad_edge=False, title=self.title, title_justify="left")
        table.add_column(width=2)
        table.add_column(style="bold", no_wrap=True)
        table.add_column(justify="right", style="dim", no_wrap=True)
        table.add_column(overflow="fold")
        for label, state, seconds, detail in self.rows:
            if state == "run":
                icon: Any = Spinner("dots")
                elapsed = time.monotonic() - self._started.get(label, time.monotonic())
                table.add_row(icon, label, f"{elapsed:.1f} s", detail)
            else:
                icon = Text("✓", style="green") if state == "ok" else Text("✗", style="bold red")
                table.add_row(icon, label, f"{seconds:.1f} s", detail)
        notes = [Text(f"  {n}", style="dim") for n in self.notes[-3:]]
        return Group(table, *notes)

    def step_started(self, label: str) -> None:
        self._started[label] = time.monotonic()
        self.rows.append((label, "run", 0.0, ""))
        self.live.update(self._render())

    def step_finished(self, label: str, ok: bool, seconds: float, detail: str) -> None:
        for i in range(len(self.rows) - 1, -1, -1):
            if self.rows[i][0] == label and self.rows[i][1] == "run":
                self.rows[i] = (label, "ok" if ok else "fail", seconds, detail)
                break
        else:
            self.rows.append((label, "ok" if ok else "fail", seconds, detail))
        self.live.update(self._render())

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.live.update(self._render())

    def close(self) -> None:
        if self.live.is_started:
            self.live.update(self._render())
            self.live.stop()


@dataclass
class DeployResult:
    """How one ``deployer deploy`` ended."""

    service: str
    status: str  # succeeded | rolled_back | rollback_incomplete | failed | aborted | no_changes
    exit_code: int
    deploy_id: str | None = None
    why: str | None = None
    revision: str | None = None
    previous: str | None = None
    plan_summary: str = ""
    traffic_before: list[dict[str, Any]] = field(default_factory=list)
    traffic_after: list[dict[str, Any]] = field(default_factory=list)
    gates: list[dict[str, Any]] = field(default_factory=list)
    pins: list[str] = field(default_factory=list)
    restored: list[dict[str, Any]] = field(default_factory=list)
    remaining: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    journal: str | None = None  # its key in the state store
    journal_location: str | None = None  # where it is: gs://bucket/prefix/<key> or the file (StateStore.where)
    # ``deployer resume -c CONFIG`` when the rollback left something changed: it tries again from the journal
    # (the first thing to run; ``hints`` are the by-hand commands)
    resume: str | None = None

    @property
    def what_to_run(self) -> list[str]:
        return ([self.resume] if self.resume else []) + self.hints

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "deploy_id": self.deploy_id,
            "status": self.status,
            "exit_code": self.exit_code,
            "why": self.why,
            "revision": self.revision,
            "previous_revision": self.previous,
            "traffic_before": self.traffic_before,
            "traffic_after": self.traffic_after,
            "gates": self.gates,
            "pinned_latest_to": self.pins,
            "restored": self.restored,
            "remaining": self.remaining,
            "what_to_run": self.what_to_run,
            "steps": self.steps,
            "timings_s": self.timings,
            "journal": self.journal,
            "journal_location": self.journal_location,
        }


def _split(traffic: list[dict[str, Any]]) -> str:
    parts = []
    for t in traffic:
        if t.get("percent"):
            parts.append(f"{t['revision']} {t['percent']}%")
    tags = [f"{t['tag']}→{t['revision']}" for t in traffic if t.get("tag")]
    text = ", ".join(parts) or "nothing"
    return text + (f"  (tags: {', '.join(tags)})" if tags else "")


_HEAD = {
    "succeeded": ("deployed", "bold green"),
    "no_changes": ("no changes", "bold green"),
    "rolled_back": ("rolled back", "bold yellow"),
    "failed": ("failed, nothing changed", "bold red"),
    "rollback_incomplete": ("ROLLBACK INCOMPLETE", "bold red"),
    "aborted": ("aborted", "bold red"),
}


def render_result(result: DeployResult, console: Console) -> None:
    """The end of a deploy in a few lines: outcome, why, traffic, what remains and what to run."""
    word, style = _HEAD.get(result.status, (result.status, "bold"))
    head = Text()
    head.append(word, style=style)
    head.append(f"  {result.service}")
    if result.deploy_id:
        head.append(f"  ({result.deploy_id})", style="dim")
    console.print(head)
    if result.status == "no_changes":
        console.print(f"  {result.plan_summary}")
        return
    if result.why:
        console.print(f"  why: {result.why}")
    if result.traffic_after:
        console.print(f"  traffic now: {_split(result.traffic_after)}")
    for pin in result.pins:
        console.print(
            f"  note: the service's LATEST target was written as a pin to {pin}, so a newer ready revision "
            "does not take users; send traffic to LATEST again on purpose when you want that"
        )
    for item in result.restored:
        console.print(
            f"  restored {item['kind']} {item['resource'].rsplit('/', 1)[-1]}: {item['stage']} — {item['detail']}"
        )
    if result.remaining:
        console.print(Text("  still changed:", style="bold red"))
        for line in result.remaining:
            console.print(f"    - {line}")
    if result.what_to_run:
        console.print(Text("  what to run:", style="bold"))
        if result.resume:
            console.print(f"    {result.resume}   (tries again, from the journal, to put back what remains)")
        for line in result.hints:
            console.print(f"    {'or by hand: ' if result.resume else ''}{line}")
    if result.journal:
        console.print(Text(f"  journal: {result.journal_location or result.journal}", style="dim"))
