"""The ``deployer`` command line.

Commands import what they need inside their bodies: ``deployer --help`` and an offline
``deployer check`` must start fast, and ``google.cloud.compute_v1`` alone takes over a second.
Every ``DeployerError`` ends as one ``error:`` line (and a ``hint:``) with its exit code.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer


def _flags_take_no_value() -> None:
    """``--help`` lists a boolean flag without a type: typer 0.29 prints ``--yes -y <bool>`` (even
    ``--help <bool>``), as if the flag took a value; it takes none (``--yes true`` is an extra argument).
    Only the help's type column changes; parsing is typer's own. Skipped if typer renders types otherwise."""
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None:
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag and not self.count else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_take_no_value()

app = typer.Typer(
    name="deployer",
    help="Deploy WebSocket services to Cloud Run behind a global external Application Load Balancer "
    "with Cloud Armor, gate them on real WebSocket handshakes, and roll everything back on failure.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
localcloud_app = typer.Typer(
    help="The embedded local Google Cloud (the default target for rehearsals).", no_args_is_help=True
)
app.add_typer(localcloud_app, name="localcloud")


@localcloud_app.command("up")
def localcloud_up(
    api_port: Annotated[
        int, typer.Option("--api-port", min=0, max=65535, help="Port of the Google APIs (0 = any free port).")
    ] = 8480,
    lb_port: Annotated[
        int | None,
        typer.Option("--lb-port", min=0, max=65535, help="Port of the load balancer (revisions run as processes)."),
    ] = None,
    seed: Annotated[str | None, typer.Option("--seed", help="World to create at start (YAML).")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
) -> None:
    """Run the local cloud in the foreground until Ctrl-C or SIGTERM."""
    from deployer import logs
    from deployer.localcloud.server import serve

    logs.configure()
    serve(api_port=api_port, lb_port=lb_port, seed_file=seed, host=host)


@app.command("gate")
def gate(
    url: Annotated[str, typer.Argument(help="ws:// or wss:// URL of the WebSocket endpoint.")],
    connections: Annotated[int, typer.Option("--connections", "-n", help="Connections in total.")] = 20,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", help="Connections at once.")] = 50,
    hold: Annotated[float, typer.Option("--hold", help="Seconds to keep each connection open.")] = 0.0,
    ping: Annotated[int, typer.Option("--ping", help="WebSocket pings per connection.")] = 1,
    send: Annotated[str | None, typer.Option("--send", help="Text to send after the upgrade.")] = None,
    expect: Annotated[str | None, typer.Option("--expect", help="Regex a reply to --send must match.")] = None,
    header: Annotated[list[str] | None, typer.Option("--header", "-H", help="Extra header 'Name: value'.")] = None,
    bearer_env: Annotated[
        str | None, typer.Option("--bearer-env", help="Environment variable holding a bearer token.")
    ] = None,
    id_token: Annotated[
        bool, typer.Option("--id-token", help="Send a Google ID token (IAM-protected Cloud Run).")
    ] = False,
    audience: Annotated[
        str | None, typer.Option("--audience", help="ID token audience (default https://<host>).")
    ] = None,
    subprotocol: Annotated[list[str] | None, typer.Option("--subprotocol", help="Offered subprotocol.")] = None,
    origin: Annotated[str | None, typer.Option("--origin", help="Origin header.")] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Host header, e.g. TAG---SERVICE.localhost for a tagged revision.")
    ] = None,
    p95_ms: Annotated[float | None, typer.Option("--p95-ms", help="Handshake p95 limit (default 5000).")] = None,
    min_samples: Annotated[
        int | None,
        typer.Option("--min-samples", help="Fewer measured: Inconclusive (default 10, or --connections if fewer)."),
    ] = None,
    open_timeout: Annotated[float, typer.Option("--open-timeout", help="Seconds for connect+TLS+upgrade.")] = 10.0,
    ping_timeout: Annotated[float, typer.Option("--ping-timeout", help="Seconds to wait for each pong.")] = 5.0,
    app_timeout: Annotated[float, typer.Option("--app-timeout", help="Seconds to wait for --expect.")] = 5.0,
    max_failure_ratio: Annotated[float, typer.Option("--max-failure-ratio", help="Failure budget (0..1).")] = 0.0,
    max_error_ratio: Annotated[
        float, typer.Option("--max-error-ratio", help="'Could not measure' budget (0..1).")
    ] = 0.1,
    ca_file: Annotated[str | None, typer.Option("--ca-file", help="Extra CA bundle for wss://.")] = None,
    compression: Annotated[
        bool, typer.Option("--compression/--no-compression", help="Offer permessage-deflate.")
    ] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Full JSON evidence on stdout.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log each failed connection.")] = False,
) -> None:
    """Probe a WebSocket endpoint with real connections: exit 0 Passed, 1 Failed, 3 Inconclusive or Error."""
    from deployer.gate.command import build_spec, run_command

    spec = build_spec(
        url,
        connections=connections,
        concurrency=concurrency,
        hold_s=hold,
        pings=ping,
        send=send,
        expect=expect,
        headers=header or [],
        bearer_env=bearer_env,
        id_token=id_token,
        audience=audience,
        subprotocols=subprotocol or [],
        origin=origin,
        host=host,
        p95_ms=p95_ms,
        min_samples=min_samples,
        open_timeout_s=open_timeout,
        ping_timeout_s=ping_timeout,
        app_timeout_s=app_timeout,
        max_failure_ratio=max_failure_ratio,
        max_error_ratio=max_error_ratio,
        ca_file=ca_file,
        compression=compression,
    )
    raise typer.Exit(run_command(spec, json_out=json_out, verbose=verbose))


@app.command("check")
def check(
    config: Annotated[str, typer.Option("--config", "-c", help="The deploy config (YAML).")],
    live: Annotated[
        bool, typer.Option("--live", help="Also read the live state (the config's endpoint, or Google).")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="The findings as JSON on stdout.")] = False,
    allow_env_removal: Annotated[
        bool,
        typer.Option("--allow-env-removal", help="Env vars the live revision has and the config drops: intended."),
    ] = False,
) -> None:
    """Check a config against Google's documented rules: exit 0 no errors, 1 errors, 2 unloadable config."""
    from deployer.check import run_check

    raise typer.Exit(run_check(config, live=live, json_out=json_out, allow_env_removal=allow_env_removal))


@app.command("plan")
def plan(
    config: Annotated[str, typer.Option("--config", "-c", help="The deploy config (YAML).")],
    out: Annotated[str | None, typer.Option("--out", help="Write the applyable plan here (for deploy --plan).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="The plan as JSON (secrets masked).")] = False,
    detailed_exitcode: Annotated[
        bool,
        typer.Option("--detailed-exitcode", help="Exit 2 when there are changes, 0 none, 1 any error (Terraform's)."),
    ] = False,
) -> None:
    """Show what a deploy would change (secrets masked): exit 0, or 2 with --detailed-exitcode on changes."""
    from deployer.orchestrator.command import run_plan

    raise typer.Exit(run_plan(config, out=out, json_out=json_out, detailed_exitcode=detailed_exitcode))


@app.command("deploy")
def deploy(
    config: Annotated[str, typer.Option("--config", "-c", help="The deploy config (YAML).")],
    plan_file: Annotated[
        str | None, typer.Option("--plan", help="Apply exactly this saved plan (refused if anything moved).")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="The result as JSON on stdout.")] = False,
    if_changed: Annotated[
        bool, typer.Option("--if-changed", help="Plan first; nothing to change: exit 0 without any write.")
    ] = False,
    override_freeze: Annotated[
        bool, typer.Option("--override-freeze", help="Deploy inside a freeze window (needs --reason; journaled).")
    ] = False,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why the freeze is overridden, or the pin cleared (journaled).")
    ] = None,
    unpin: Annotated[
        bool, typer.Option("--unpin", help="Clear an emergency rollback's pin first (journaled) instead of refusing.")
    ] = False,
) -> None:
    """Canary deploy with gates, rolled back on failure: exit 0 deployed, 1 rolled back, 3 incomplete, 4 locked."""
    from deployer.orchestrator.command import run_deploy

    raise typer.Exit(
        run_deploy(
            config,
            plan_file=plan_file,
            yes=yes,
            json_out=json_out,
            if_changed=if_changed,
            override_freeze=override_freeze,
            reason=reason,
            unpin=unpin,
        )
    )


@app.command("rollback")
def rollback(
    config: Annotated[str, typer.Option("--config", "-c", help="The deploy config (YAML).")],
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why (journaled, and shown with the pin). Required.")
    ] = None,
    to: Annotated[str | None, typer.Option("--to", help="The revision to move traffic to (default: last good).")] = (
        None
    ),
    infra: Annotated[
        bool, typer.Option("--infra", help="Also put the backend service and owned Cloud Armor rules back.")
    ] = False,
    verify: Annotated[bool, typer.Option("--verify", help="Run the public gate after the move.")] = False,
    pin_for: Annotated[
        str | None, typer.Option("--pin-for", help="How long the pin refuses deploys (default 24h; e.g. 30m, 7d).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="The result as JSON on stdout.")] = False,
) -> None:
    """Emergency rollback: 100% of traffic to the last good revision now, preempting a deploy, and pin it.

    Exit 0 done, 1 failed (nothing changed), 3 incomplete, 2 usage, 4 a live rollback/resume holds the lock."""
    from deployer.orchestrator.recovery import run_rollback

    raise typer.Exit(
        run_rollback(
            config, reason=reason, to_revision=to, infra=infra, verify=verify, pin_for=pin_for, json_out=json_out
        )
    )


@app.command("resume")
def resume(
    config: Annotated[str, typer.Option("--config", "-c", help="The deploy config (YAML).")],
    verify: Annotated[bool, typer.Option("--verify", help="After an undo, run the gate on the restored path.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="The result as JSON on stdout.")] = False,
) -> None:
    """Finish or undo a deploy or rollback whose process died, from its journal.

    Exit 0 finished (succeeded or rolled back), 3 something remains changed, 4 its process still runs."""
    from deployer.orchestrator.recovery import run_resume

    raise typer.Exit(run_resume(config, verify=verify, json_out=json_out))


@app.command("unpin")
def unpin(
    config: Annotated[str, typer.Option("--config", "-c", help="The deploy config (YAML).")],
    reason: Annotated[str | None, typer.Option("--reason", help="Why (journaled). Required.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="The result as JSON on stdout.")] = False,
) -> None:
    """Clear an emergency rollback's pin (journaled), so deploys may run again."""
    from deployer.orchestrator.recovery import run_unpin

    raise typer.Exit(run_unpin(config, reason=reason, json_out=json_out))


@app.command("unlock")
def unlock(
    config: Annotated[str, typer.Option("--config", "-c", help="The deploy config (YAML).")],
    force: Annotated[bool, typer.Option("--force", help="Remove the lease whoever holds it (required).")] = False,
    reason: Annotated[str | None, typer.Option("--reason", help="Why (journaled). Required with --force.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="The result as JSON on stdout.")] = False,
) -> None:
    """Remove the service lock by force (journaled); a holder that is still running stops at its next check."""
    from deployer.orchestrator.recovery import run_unlock

    raise typer.Exit(run_unlock(config, force=force, reason=reason, json_out=json_out))


@app.command("status")
def status(
    config: Annotated[str, typer.Option("--config", "-c", help="The deploy config (YAML).")],
    json_out: Annotated[bool, typer.Option("--json", help="The whole status as JSON on stdout.")] = False,
) -> None:
    """What serves now (traffic by revision and tag), the last deploy, the lock, any pin, and drift from the config."""
    from deployer.orchestrator.show import run_status

    raise typer.Exit(run_status(config, json_out=json_out))


@app.command("history")
def history(
    config: Annotated[str, typer.Option("--config", "-c", help="The deploy config (YAML).")],
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many deploys, newest first.")] = 20,
    json_out: Annotated[bool, typer.Option("--json", help="The deploys as JSON on stdout.")] = False,
) -> None:
    """Deploys and rollbacks of the service from the journal, newest first: outcome, who, when, duration."""
    from deployer.orchestrator.show import run_history

    raise typer.Exit(run_history(config, limit=limit, json_out=json_out))


@app.command("why")
def why(
    deploy_id: Annotated[str, typer.Argument(help="A deploy id from `deployer history` (or 'last').")],
    config: Annotated[str, typer.Option("--config", "-c", help="The deploy config (YAML).")],
    json_out: Annotated[bool, typer.Option("--json", help="Everything the journal says, as JSON.")] = False,
) -> None:
    """Every phase of one deploy with timings, gate evidence, the decision taken and what was rolled back."""
    from deployer.orchestrator.show import run_why

    raise typer.Exit(run_why(config, deploy_id, json_out=json_out))


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _quiet_logs() -> None:
    """Before the last line: no log event from a worker thread may follow it."""
    logs = sys.modules.get("deployer.logs")
    if logs is not None:
        logs.silence()


def _report(exc: Any) -> int:
    _quiet_logs()
    print(f"error: {_one_line(exc.message)}", file=sys.stderr)
    if getattr(exc, "hint", None):
        print(f"hint: {_one_line(exc.hint)}", file=sys.stderr)
    return int(exc.exit_code)


class Terminated(KeyboardInterrupt):
    """SIGTERM where SIGINT is ignored: raised like Ctrl-C so that ``finally`` blocks run."""


# What a signal ends the process with (128 + the signal number, the shell's convention).
INTERRUPTED_EXIT = 130
TERMINATED_EXIT = 143


_SIGTERM_SEEN: list[bool] = []


def _on_sigterm(_signum: int, _frame: Any) -> None:
    """SIGTERM is handled as Ctrl-C is: re-sent as SIGINT, so asyncio cancels its task cleanly (a Python
    exception raised inside the event loop's callbacks would not); ``main`` tells the two apart."""
    import signal

    _SIGTERM_SEEN.append(True)
    if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL, None):
        raise Terminated()  # SIGINT ignored (a background job): stop here instead
    signal.raise_signal(signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the Typer app and turns deployer errors into one line and an exit code.

    The app runs through click's context directly (not ``app()``), because Typer's own ``main`` turns
    Ctrl-C into a silent exit 130 and prints click's usage errors as three lines: here a usage error,
    a ``DeployerError``, Ctrl-C and SIGTERM each end as one ``error:`` line (and a ``hint:``).
    Anything else is a bug and keeps its traceback.
    """
    import signal

    from typer._click.exceptions import NoArgsIsHelpError
    from typer._click.exceptions import UsageError as ClickUsageError
    from typer.main import get_command

    from deployer.errors import DeployerError

    args = list(sys.argv[1:] if argv is None else argv)
    if (logs_module := sys.modules.get("deployer.logs")) is not None:
        logs_module.unsilence()  # a previous command in this process ended with an error
    _SIGTERM_SEEN.clear()
    old_term = signal.getsignal(signal.SIGTERM)
    if old_term is signal.SIG_DFL and _main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    command = get_command(app)
    try:
        with command.make_context("deployer", args) as ctx:
            from deployer import logs

            logs.ensure_configured()  # logs to stderr, never into a command's output on stdout
            result = command.invoke(ctx)
    except DeployerError as exc:
        return _error_exit(args, _report(exc))
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except KeyboardInterrupt as exc:
        _quiet_logs()
        # errors.Interrupted: the command had acted and left its journal unfinished: what, and what to run
        message, hint = getattr(exc, "message", None), getattr(exc, "hint", None)
        left = f": {_one_line(message)}" if message else ""
        if isinstance(exc, Terminated) or _SIGTERM_SEEN:
            print(f"error: terminated by SIGTERM before the command finished{left}", file=sys.stderr)
            code = TERMINATED_EXIT
        else:
            print(f"error: interrupted by Ctrl-C (SIGINT) before the command finished{left}", file=sys.stderr)
            code = INTERRUPTED_EXIT
        if hint:
            print(f"hint: {_one_line(hint)}", file=sys.stderr)
        return code
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        return INTERRUPTED_EXIT
    except EOFError:  # end of input at a confirmation prompt: the answer is "no"
        print("error: no answer (end of input); nothing was changed", file=sys.stderr)
        return 1
    except NoArgsIsHelpError as exc:  # `deployer` alone: the help, as click prints it
        exc.show()
        return 2
    except ClickUsageError as exc:  # a wrong flag or argument: one line, the command's --help as the hint
        print(f"error: {_one_line(exc.format_message())}", file=sys.stderr)
        path = exc.ctx.command_path if exc.ctx is not None else "deployer"
        if path == "deployer" and args and args[0] in getattr(command, "commands", {}):
            path = f"deployer {args[0]}"  # click names no context for e.g. `-c` without its value
        print(f"hint: see `{path} --help`", file=sys.stderr)
        return _error_exit(args, int(exc.exit_code))
    except typer.TyperException as exc:  # click's other errors (e.g. a file option it could not open)
        print(f"error: {_one_line(exc.format_message())}", file=sys.stderr)
        return _error_exit(args, int(getattr(exc, "exit_code", 1)))
    except BrokenPipeError:  # stdout closed early (`deployer plan | head`): stop quietly, as a pipe expects
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    finally:
        if _main_thread() and signal.getsignal(signal.SIGTERM) is _on_sigterm:
            signal.signal(signal.SIGTERM, old_term)
    return result if isinstance(result, int) else 0


def _error_exit(args: list[str], code: int) -> int:
    """The exit code of a command that failed (a usage error, a config error, any ``DeployerError``).

    ``plan --detailed-exitcode`` keeps Terraform's meaning — 0 no changes, 1 error, 2 changes — so a CI
    job can tell changes from a broken config: there, every error is 1 (usage and config errors are 2
    elsewhere). The flag is looked for in the raw arguments, since a usage error stops before parsing."""
    if code == 2 and args[:1] == ["plan"] and "--detailed-exitcode" in args[1:]:
        return 1
    return code


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
