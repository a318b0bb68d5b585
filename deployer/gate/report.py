"""How a verdict reads: a short rich table for humans, JSON evidence for CI and the deploy journal,
and a live progress line on a TTY while connections are held."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from deployer.gate.probe import Progress
from deployer.gate.verdict import Outcome, Verdict

_STYLE = {
    Outcome.PASSED: "bold green",
    Outcome.FAILED: "bold red",
    Outcome.INCONCLUSIVE: "bold yellow",
    Outcome.ERROR: "bold magenta",
}
_STAGES = ("handshake", "connect", "tls", "upgrade", "ping", "app")


def to_json_text(verdict: Verdict, *, include_samples: bool = True) -> str:
    return json.dumps(verdict.to_json(include_samples=include_samples), indent=2, sort_keys=False)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render(verdict: Verdict, console: Console) -> None:
    """Verdict, counts, percentiles and failures grouped by reason, in a few lines."""
    c = verdict.counts
    target = verdict.context.get("target", {}) if isinstance(verdict.context, dict) else {}
    head = Text()
    head.append(verdict.outcome.value, style=_STYLE[verdict.outcome])
    if target.get("url"):
        head.append(f"  {target['url']}")
        if target.get("host"):
            head.append(f" (Host: {target['host']})")
    console.print(head)
    for reason in verdict.reasons:
        console.print(f"  {reason}")
    console.print(f"  connections: {c.attempted} attempted, {c.ok} ok, {c.failed} failed, {c.errors} could not measure")
    if verdict.close_codes:
        console.print("  close codes: " + ", ".join(f"{code} ×{n}" for code, n in sorted(verdict.close_codes.items())))

    rows = [(name, verdict.latency[name]) for name in _STAGES if name in verdict.latency]
    rows = [(name, s) for name, s in rows if s.n]
    if rows:
        table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
        for col in ("ms", "n", "p50", "p95", "max"):
            table.add_column(col, justify="left" if col == "ms" else "right")
        for name, s in rows:
            table.add_row(name, str(s.n), _ms(s.p50), _ms(s.p95), _ms(s.max))
        console.print(table)

    groups = [*verdict.failures, *verdict.errors]
    if groups:
        table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
        table.add_column("count", justify="right")
        table.add_column("reason")
        table.add_column("example")
        for g in groups:
            ex = g.examples[0] if g.examples else None
            example = ex.detail if ex is not None else ""
            if ex is not None and ex.body:
                example += f" — body: {ex.body[:80]!r}"
            table.add_row(str(g.count), f"{g.group}\n[dim]{g.meaning}[/dim]", example)
        console.print(table)


@contextmanager
def progress_line(console: Console, total: int, *, enabled: bool) -> Iterator[Any]:
    """A one-line live view (done/failed/open/holding) on a TTY; yields the ``on_progress`` callback
    (``None`` when disabled, so the probe does no extra work)."""
    if not enabled:
        yield None
        return
    from rich.live import Live

    def text(p: Progress) -> Text:
        return Text(
            f"gate: {p.done}/{p.total} done, {p.failed} failed, {p.open} open, {p.holding} holding", style="dim"
        )

    with Live(text(Progress(total)), console=console, transient=True, refresh_per_second=4) as live:

        def update(p: Progress) -> None:
            live.update(text(p))

        yield update
