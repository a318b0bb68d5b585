"""The ``deployer`` command line.

Commands import what they need inside their bodies: ``deployer --help`` and an offline
``deployer check`` must start fast, and ``google.cloud.compute_v1`` alone takes over a second.
Every ``DeployerError`` ends as one ``error:`` line (and a ``hint:``) with its exit code.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

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
    api_port: Annotated[int, typer.Option("--api-port", help="Port of the Google APIs (0 = any free port).")] = 8480,
    lb_port: Annotated[
        int | None, typer.Option("--lb-port", help="Port of the load balancer (revisions run as processes).")
    ] = None,
    seed: Annotated[str | None, typer.Option("--seed", help="World to create at start (YAML).")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
) -> None:
    """Run the local cloud in the foreground until Ctrl-C or SIGTERM."""
    from deployer import logs
    from deployer.localcloud.server import serve

    logs.configure()
    serve(api_port=api_port, lb_port=lb_port, seed_file=seed, host=host)


def _report(exc: Any) -> int:
    print(f"error: {exc.message}", file=sys.stderr)
    if getattr(exc, "hint", None):
        print(f"hint: {exc.hint}", file=sys.stderr)
    return int(exc.exit_code)


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the Typer app and turns deployer errors into one line and an exit code."""
    from deployer.errors import DeployerError

    try:
        app(args=argv, standalone_mode=False)
    except DeployerError as exc:
        return _report(exc)
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except typer.TyperException as exc:  # click's usage errors: one line, exit 2
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        return int(getattr(exc, "exit_code", 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
