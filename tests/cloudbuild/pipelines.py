"""Reading Cloud Build pipelines the way Cloud Build does, and the deployer CLI the way a step sees it.

- Substitutions (https://cloud.google.com/build/docs/configuring-builds/substitute-variable-values):
  ``$NAME`` / ``${NAME}`` are replaced in step args, env, name, entrypoint and ``options.env``; ``$$`` is a
  literal ``$`` (for the step's shell). User-defined ones start with ``_``; the built-ins below are
  provided by Cloud Build. With ``options.dynamicSubstitutions`` a substitution's value may itself
  reference others (``_DEPLOYER_IMAGE: ${_REGION}-docker.pkg.dev/...``).
- A step runs ``entrypoint`` (default: the image's, ``deployer`` for the deployer image) with ``args``,
  in ``/workspace`` (the repository checkout), with ``options.env`` then the step's ``env``.
- What the CLI offers is read from the Typer app itself (the same object ``deployer --help`` renders);
  a test checks the two agree.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
PIPELINES_DIR = ROOT / "cloudbuild"
PIPELINES = sorted(p.name for p in PIPELINES_DIR.glob("*.yaml"))
DEPLOYER_BIN = ROOT / ".venv" / "bin" / "deployer"

# Cloud Build's default substitutions (substitute-variable-values: "for all builds" and "for builds
# invoked by triggers").
BUILTINS = frozenset(
    {
        "PROJECT_ID",
        "BUILD_ID",
        "PROJECT_NUMBER",
        "LOCATION",
        "TRIGGER_NAME",
        "COMMIT_SHA",
        "REVISION_ID",
        "SHORT_SHA",
        "REPO_NAME",
        "REPO_FULL_NAME",
        "BRANCH_NAME",
        "TAG_NAME",
        "REF_NAME",
        "TRIGGER_BUILD_CONFIG_PATH",
        "SERVICE_ACCOUNT_EMAIL",
        "SERVICE_ACCOUNT",
    }
)
USER_SUBSTITUTION = re.compile(r"^_[A-Z0-9_]+$")
_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")

# The Build resource's top-level fields and a BuildStep's fields (build-config-file-schema).
BUILD_KEYS = frozenset(
    {
        "steps",
        "timeout",
        "queueTtl",
        "logsBucket",
        "options",
        "substitutions",
        "tags",
        "serviceAccount",
        "secrets",
        "availableSecrets",
        "artifacts",
        "images",
    }
)
STEP_KEYS = frozenset(
    {
        "name",
        "args",
        "env",
        "allowFailure",
        "allowExitCodes",
        "dir",
        "id",
        "waitFor",
        "entrypoint",
        "secretEnv",
        "volumes",
        "timeout",
        "script",
        "automapSubstitutions",
    }
)
OPTION_KEYS = frozenset(
    {
        "env",
        "secretEnv",
        "volumes",
        "sourceProvenanceHash",
        "machineType",
        "diskSizeGb",
        "substitutionOption",
        "dynamicSubstitutions",
        "automapSubstitutions",
        "logStreamingOption",
        "logging",
        "defaultLogsBucketBehavior",
        "pool",
        "requestedVerifyOption",
    }
)


def load(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((PIPELINES_DIR / name).read_text())
    assert isinstance(doc, dict), f"{name} is not a mapping"
    return doc


def references(text: str) -> set[str]:
    """Every substitution ``text`` references (``$$`` escapes excluded)."""
    return {m.group(1) or m.group(2) for m in _REF.finditer(text) if m.group(0) != "$$"}


def substitute(text: str, values: Mapping[str, str]) -> str:
    """Cloud Build's substitution of ``text``; an unknown reference is a KeyError (the build would fail)."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return values[match.group(1) or match.group(2)]

    return _REF.sub(one, text)


def resolve(build: Mapping[str, Any], overrides: Mapping[str, str], builtins: Mapping[str, str]) -> dict[str, str]:
    """The substitution values of one build: declared defaults, then ``overrides`` (what a trigger or
    ``--substitutions`` passes), values referencing others resolved (dynamic substitutions)."""
    declared = {k: str(v) for k, v in (build.get("substitutions") or {}).items()}
    values = {**builtins, **declared, **overrides}
    for _ in range(len(values)):
        changed = False
        for key, value in list(values.items()):
            new = substitute(value, values)
            if new != value:
                values[key], changed = new, True
        if not changed:
            break
    return values


def steps(build: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(build.get("steps") or [])


def step_argv(step: Mapping[str, Any], values: Mapping[str, str]) -> list[str]:
    entrypoint = substitute(str(step.get("entrypoint") or "deployer"), values)
    return [entrypoint, *(substitute(str(a), values) for a in step.get("args") or [])]


def step_env(build: Mapping[str, Any], step: Mapping[str, Any], values: Mapping[str, str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in [*((build.get("options") or {}).get("env") or []), *(step.get("env") or [])]:
        key, _, value = substitute(str(item), values).partition("=")
        env[key] = value
    return env


def run_order(build: Mapping[str, Any]) -> list[list[dict[str, Any]]]:
    """Steps in waves, as Cloud Build schedules them: a step without ``waitFor`` waits for every step
    before it; ``waitFor: ["-"]`` starts at once; otherwise after the ids it names."""
    done: set[str] = set()
    ids = [s.get("id") or f"#{i}" for i, s in enumerate(steps(build))]
    deps: dict[str, set[str]] = {}
    for i, step in enumerate(steps(build)):
        wait = step.get("waitFor")
        if wait is None:
            deps[ids[i]] = set(ids[:i])
        elif wait == ["-"]:
            deps[ids[i]] = set()
        else:
            deps[ids[i]] = set(wait)
    by_id = dict(zip(ids, steps(build), strict=True))
    waves: list[list[dict[str, Any]]] = []
    while len(done) < len(ids):
        wave = [i for i in ids if i not in done and deps[i] <= done]
        assert wave, f"waitFor has a cycle among {sorted(set(ids) - done)}"
        waves.append([by_id[i] for i in wave])
        done.update(wave)
    return waves


# ---- the deployer CLI ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Invocation:
    """A deployer command a step runs: the subcommand and the long options it passes."""

    command: str
    flags: tuple[str, ...]

    def __str__(self) -> str:
        return " ".join(["deployer", self.command, *self.flags])


def invocation(step: Mapping[str, Any]) -> Invocation | None:
    """The deployer command of a step (``None`` for a step that does not run deployer)."""
    if (step.get("entrypoint") or "deployer") != "deployer":
        return None
    args = [str(a) for a in step.get("args") or []]
    return Invocation(args[0], tuple(a.split("=", 1)[0] for a in args[1:] if a.startswith("--")))


@functools.cache
def cli_commands() -> dict[str, frozenset[str]]:
    """Each command ``deployer --help`` lists, with the long options ``deployer COMMAND --help`` lists."""
    import typer.main

    from deployer.cli import app

    group: Any = typer.main.get_command(app)
    out: dict[str, frozenset[str]] = {}
    for name, command in group.commands.items():
        if command.hidden:
            continue
        opts = {o for p in command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}
        out[name] = frozenset(opts)
    return out


def missing(inv: Invocation) -> list[str]:
    """What of ``inv`` the CLI does not offer yet (empty: it can run)."""
    offered = cli_commands()
    if inv.command not in offered:
        return [f"command {inv.command!r}"]
    return [f"option {flag} of {inv.command}" for flag in inv.flags if flag not in offered[inv.command]]


def help_listed_commands(help_text: str) -> set[str]:
    """The command names in the Commands panel of ``deployer --help`` output."""
    names: set[str] = set()
    in_panel = False
    for line in help_text.splitlines():
        if "Commands" in line and line.lstrip().startswith(("╭", "+")):
            in_panel = True
            continue
        if in_panel and line.lstrip().startswith(("╰", "+")):
            break
        match = re.match(r"^\W\s([a-z][a-z0-9-]*)\s{2,}", line) if in_panel else None
        if match:
            names.add(match.group(1))
    return names


def subprocess_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment a step's process gets here: ours, the venv's ``deployer`` first on PATH, no proxy
    for loopback, and the step's variables."""
    env = dict(os.environ)
    env["PATH"] = f"{DEPLOYER_BIN.parent}{os.pathsep}{env.get('PATH', '')}"
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env
