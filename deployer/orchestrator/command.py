"""``deployer plan`` and ``deployer deploy``: config → plan or deploy → rendered result → exit code.

Kept out of ``deployer/cli.py`` so the CLI stays a list of thin commands (the demo calls these too).

``plan``: 0 no changes; with ``--detailed-exitcode`` 2 when there are changes (Terraform's
convention); 1 when deploy would refuse: preflight finds errors, or traffic moved by hand since the last
deploy (``deploy.drift_refusal``: the deploy's own words and hint printed before the plan, in ``--json`` as
``deploy_would_refuse``; ``--out`` writes nothing). A usage or config error is 2, except
with ``--detailed-exitcode``, where every error is 1 (``deployer.cli._error_exit`` decides that, for
click's usage errors too, which happen before this runs). The readable diff and ``--json``
mask secret env values; ``--out FILE`` writes the applyable plan (it holds the literal env values a
deploy writes, like a Terraform plan file: it is created 0600).

``deploy``: 0 deployed (or nothing to do), 1 rolled back or refused, 3 rollback incomplete, 4 lock
held. On a TTY a live view of the phases; otherwise Cloud Logging JSON lines on stderr. ``--json``
prints the result (gates, traffic, what was restored) on stdout.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from deployer.config import DeployConfig, load_config
from deployer.errors import UsageError


def _console(stream: TextIO) -> Any:
    from rich.console import Console

    console = Console(file=stream, highlight=False)
    if not console.is_terminal:
        console = Console(file=stream, highlight=False, width=160)
    return console


@dataclass(frozen=True)
class LivePlan:
    """A plan of config × live, with what ``plan`` says beside it: the preflight warnings, the refusal a
    deploy would raise now (``deploy.drift_refusal``, the same decision and words), and the service's
    template when it is not what serves (``plan.unserved_template``)."""

    plan: Any
    observed: Any
    warnings: list[str]
    refusal: Any = None  # deploy.DriftRefusal | None
    template: Any = None  # plan.UnservedTemplate | None

    def notes(self) -> list[str]:
        """Everything to say beside the plan, one line each (a refusal first)."""
        out = [f"drift: {self.refusal.message} (deploy will refuse)"] if self.refusal is not None else []
        out.extend(self.warnings)
        if self.template is not None:
            out.append(f"template: {self.template.describe()}")
        return out


def live_plan(config: DeployConfig) -> LivePlan:
    """Observe, run the live rules, plan, and decide as a deploy would. Preflight errors raise ``PreflightError``."""
    from deployer.desired import desired_state
    from deployer.errors import PreflightError
    from deployer.gcp.clients import Clients
    from deployer.gcp.observe import observe
    from deployer.orchestrator.deploy import config_digest, drift_refusal, last_deploy, state_key
    from deployer.plan import make_plan, unserved_template
    from deployer.preflight import Severity, run_rules
    from deployer.state import open_store

    clients = Clients(endpoint=config.endpoint, project=config.project)
    store = open_store(config.state, clients)  # first: an unusable state path is refused before any call
    observed = observe(config, clients)
    findings = run_rules(config, observed)
    errors = [f for f in findings if f.severity is Severity.ERROR]
    if errors:
        listed = "; ".join(f"{f.code} {f.field}: {f.message}" for f in errors[:5])
        raise PreflightError(
            f"preflight found {len(errors)} error(s); deploy would refuse this config: {listed}",
            hint=f"`deployer check -c {config.source.file} --live` shows each rule and its fix",
        )
    warnings = [f"{f.code} {f.field}: {f.message}" for f in findings if f.severity is Severity.WARNING]
    last, owned = last_deploy(store, state_key(config), observed.service)
    desired = desired_state(config)
    plan = make_plan(
        desired,
        observed,
        created_at=datetime.now(UTC),
        config_digest=config_digest(desired),
        owned_armor_priorities=owned,
    )
    return LivePlan(
        plan=plan,
        observed=observed,
        warnings=warnings,
        refusal=drift_refusal(config, observed.service, last),
        template=unserved_template(observed.service, observed.serving_revision),
    )


def make_live_plan(config: DeployConfig) -> tuple[Any, Any, list[str]]:
    """``live_plan`` as (plan, observed, notes): the refusal a deploy would raise and the template note are
    among the notes (the interactive deploy and ``--if-changed`` print them as warnings)."""
    made = live_plan(config)
    return made.plan, made.observed, made.notes()


def render_plan(plan: Any, console: Any) -> None:
    from rich.text import Text

    from deployer.redact import SecretMask

    styles = {"+": "green", "~": "yellow", "-": "red", "=": "dim"}
    for line in plan.summary(SecretMask()).splitlines():
        stripped = line.lstrip()
        style = styles.get(stripped[:1], "bold") if stripped else ""
        console.print(Text(line, style=style))


def run_plan(
    path: str,
    *,
    out: str | None = None,
    json_out: bool = False,
    detailed_exitcode: bool = False,
    stream: TextIO | None = None,
) -> int:
    from deployer.redact import SecretMask

    stream = stream or sys.stdout
    check_plan_out(out)  # offline, before the config and the cloud: a wrong --out is exit 2 at once
    config = load_config(path)
    made = live_plan(config)
    plan, refusal = made.plan, made.refusal
    if json_out:
        doc = json.loads(plan.masked_copy(SecretMask()).to_json())
        doc["warnings"] = made.warnings
        doc["deploy_would_refuse"] = refusal.to_json() if refusal is not None else None
        doc["template"] = made.template.to_json() if made.template is not None else None
        stream.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    else:
        console = _console(stream)
        if refusal is not None:
            console.print(f"[bold red]deploy would refuse:[/bold red] {refusal.message}", soft_wrap=True)
            console.print(f"  hint: {refusal.hint}", soft_wrap=True)
        for w in made.warnings:
            console.print(f"[yellow]warning:[/yellow] {w}")
        if made.template is not None:
            console.print(f"[yellow]note:[/yellow] {made.template.describe()}", soft_wrap=True)
        render_plan(plan, console)
    if refusal is not None:  # a plan that cannot be applied: exit 1 (Terraform's), its file never written
        if out and not json_out:
            _console(stream).print(f"nothing saved to {out}: deploy would refuse this plan")
        return 1
    if out:
        write_plan_file(plan, out)
        if not json_out:
            _console(stream).print(
                f"saved the plan to {out}; apply exactly it with `deployer deploy -c {path} --plan {out}`"
            )
    if plan.is_empty:
        return 0
    return 2 if detailed_exitcode else 0


def check_plan_out(out: str | None) -> None:
    """What can be wrong with ``--out FILE`` without writing it: no name, a directory, no such directory."""
    if out is None:
        return
    if not out.strip():
        raise UsageError("--out needs a file name (where to save the applyable plan)")
    target = Path(out)
    if target.is_dir():
        raise UsageError(f"cannot write the plan to {out}: it is a directory")
    if not target.parent.exists():
        raise UsageError(f"cannot write the plan to {out}: the directory {target.parent} does not exist")
    if not target.parent.is_dir():
        raise UsageError(f"cannot write the plan to {out}: {target.parent} is not a directory")


def write_plan_file(plan: Any, out: str) -> None:
    """Write the applyable plan atomically, mode 0600 (it holds literal env values), even over an old file:
    a temporary file beside it, fsync, rename. An interrupted write leaves the old file, never half a plan."""
    import contextlib
    import tempfile

    target = Path(out)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(plan.to_json() + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise UsageError(f"cannot write the plan to {out}: {exc.strerror or exc}") from exc


def run_deploy(
    path: str,
    *,
    plan_file: str | None = None,
    yes: bool = False,
    json_out: bool = False,
    stream: TextIO | None = None,
    if_changed: bool = False,
    override_freeze: bool = False,
    reason: str | None = None,
    clock: Callable[[], datetime] | None = None,
    unpin: bool = False,
) -> int:
    from deployer import logs
    from deployer.orchestrator.deploy import DeployOptions, deploy
    from deployer.orchestrator.report import LiveReporter, NullReporter, Reporter, render_result
    from deployer.orchestrator.scheduled import before_deploy, freeze_override

    stream = stream or sys.stdout
    # --reason explains a freeze override, or (with --unpin alone) why the pin is cleared
    override = freeze_override(override_freeze, reason if override_freeze or not unpin else None)
    config = load_config(path)
    interactive = stream.isatty() and sys.stdin.isatty()
    logs.configure(json=not stream.isatty(), level="warning" if stream.isatty() else "info")
    now = clock or (lambda: datetime.now(UTC))
    early = before_deploy(
        config,
        plan_file=plan_file,
        if_changed=if_changed,
        override=override,
        json_out=json_out,
        stream=stream,
        clock=now,
    )
    if early is not None:  # --if-changed and nothing to change: no mutating call, no lock
        return early
    plan = None
    if plan_file is None and not yes:
        if not interactive:
            raise UsageError(
                "deploy changes live resources: pass --yes to run without confirming "
                "(or --plan FILE from `deployer plan`)"
            )
        console = _console(stream)
        plan, _observed, warnings = make_live_plan(config)
        for w in warnings:
            console.print(f"[yellow]warning:[/yellow] {w}")
        render_plan(plan, console)
        if plan.is_empty:
            from deployer.orchestrator.deploy import check_resumed_unlocked

            check_resumed_unlocked(config)  # "no changes" over an incomplete rollback: resume it first (exit 4)
            return 0
        if console.input("Deploy this? [y/N] ").strip().lower() not in ("y", "yes"):
            console.print("nothing was changed")
            return 1
    reporter: Reporter = NullReporter()
    if stream.isatty() and not json_out:
        reporter = LiveReporter(_console(stream), f"deploy {config.service.name} ({config.project}/{config.region})")
    options = DeployOptions(
        plan_file=plan_file,
        plan=plan,
        reporter=reporter,
        handle_signals=True,
        freeze_override=override,
        clock=now,
        unpin=unpin,
        unpin_reason=reason,
    )
    try:
        result = deploy(config, options)
    finally:
        reporter.close()
    if json_out:
        stream.write(json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n")
    else:
        render_result(result, _console(stream))
    return result.exit_code
