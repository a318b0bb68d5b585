"""``deployer check``: load a config, optionally read what is live, run the preflight rules, report.

Offline (the default) this imports no Google library: config, rules and rendering only. ``--live``
reads through ``deployer.gcp.clients.Clients(endpoint=config.endpoint)`` — the local cloud when the
config names one, Google otherwise.

Exit codes: 0 no errors (warnings and info allowed), 1 errors, 2 the config cannot be loaded
(``ConfigError``, reported by the CLI as one ``file:line: key: ...`` line).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from deployer.config import DeployConfig, load_config
from deployer.model import Observed
from deployer.preflight import Finding, Severity, run_rules, summary

ENV_REMOVAL_CODE = "CR010"


def run_check(
    path: str,
    *,
    live: bool = False,
    json_out: bool = False,
    allow_env_removal: bool = False,
    out: TextIO | None = None,
) -> int:
    """Run ``check`` and write its report; returns the exit code."""
    stream = out or sys.stdout
    config = load_config(path)
    observed = read_live(config) if live else None
    findings = run_rules(config, observed, acknowledge=[ENV_REMOVAL_CODE] if allow_env_removal else [])
    if json_out:
        stream.write(json.dumps(report_json(path, config, findings, live=live), indent=2) + "\n")
    else:
        render_table(path, findings, live=live, stream=stream)
    return 1 if any(f.severity is Severity.ERROR for f in findings) else 0


def read_live(config: DeployConfig) -> Observed:
    from deployer.gcp.clients import Clients
    from deployer.gcp.observe import observe

    _log_to_stderr()

    return observe(config, Clients(endpoint=config.endpoint, project=config.project))


def _log_to_stderr() -> None:
    """Retry events (``gcp.retry``) must go to stderr, never into the report on stdout; structlog's
    unconfigured default prints to stdout. A command that configured logging already keeps its own."""
    import structlog

    from deployer import logs

    if not structlog.is_configured():
        logs.configure()  # its default stream: whatever sys.stderr is at each write


def report_json(path: str, config: DeployConfig, findings: list[Finding], *, live: bool) -> dict[str, Any]:
    counts = summary(findings)
    return {
        "config": path,
        "project": config.project,
        "service": config.service.name,
        "live": live,
        "ok": counts["error"] == 0,
        "summary": counts,
        "findings": [f.to_dict() for f in findings],
    }


_KEY_WIDTH = 30  # config keys fold past this; the finding column gets the rest
_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}


def _table(resource: str, items: list[Finding]) -> Any:
    from rich.table import Table
    from rich.text import Text

    # The title is printed by render_table, not as the Table's: rich pads a table title to the table's width
    table = Table(show_lines=True)
    table.add_column("", no_wrap=True)
    table.add_column("code", no_wrap=True)
    table.add_column("config key", overflow="fold", max_width=_KEY_WIDTH)
    table.add_column("finding and fix", overflow="fold")
    for f in items:
        where = f"{f.field}\nline {f.line}" if f.line else f.field
        body = Text(f.message)
        body.append("\nfix: ", style="bold green")
        body.append(f.fix)
        body.append(f"\n{f.doc_url}", style="dim")
        table.add_row(Text(f.severity.value, style=_STYLE[f.severity]), f.code, where, body)
    return table


def _grouped(findings: Iterable[Finding]) -> dict[str, list[Finding]]:
    groups: dict[str, list[Finding]] = {}
    for f in findings:
        groups.setdefault(f.resource, []).append(f)
    return dict(sorted(groups.items(), key=lambda kv: (min(f.severity.rank for f in kv[1]), kv[0])))


def render_table(path: str, findings: list[Finding], *, live: bool, stream: TextIO, width: int | None = None) -> None:
    """A table per resource: severity, code, config key (with its line), the finding and its fix.

    Nothing a reviewer must read is cut: every column folds a word too long for it (``overflow="fold"``)
    instead of ending it with ``…``. On a terminal the tables fit its width; anywhere else (a pipe, a CI
    log) there is no terminal to fit, so the console is made wide enough that every documentation URL
    stays on one line, whole and copyable. ``width`` overrides both (tests)."""
    from rich.console import Console
    from rich.measure import Measurement
    from rich.text import Text

    groups = _grouped(findings)
    tables = [_table(resource, items) for resource, items in groups.items()]
    if width is None:
        width = max(shutil.get_terminal_size((120, 24)).columns, 100)
        if not (hasattr(stream, "isatty") and stream.isatty()):
            probe = Console(file=stream, width=10_000)
            needed = [Measurement.get(probe, probe.options, t).minimum for t in tables]
            width = max([width, *needed])
    console = Console(file=stream, width=width, soft_wrap=False, highlight=False)
    mode = "live" if live else "offline"
    for resource, table in zip(groups, tables, strict=True):
        console.print(Text(resource, style="bold"))
        console.print(table)
    counts = summary(findings)
    verdict = Text("refused" if counts["error"] else "ok", style="bold red" if counts["error"] else "bold green")
    line = Text(f"{path} ({mode}): ")
    line.append(verdict)
    line.append(f" — {counts['error']} errors, {counts['warning']} warnings, {counts['info']} info")
    console.print(line)
