"""The recovery commands as the CLI runs them: ``rollback``, ``resume``, ``unpin``, ``unlock --force``.

Each loads the config, runs the operation (``emergency``, ``resume``, ``pins``, ``lock``), prints the
outcome (one short readable block, or ``--json`` on stdout) and returns the exit code. Logs go to
stderr (Cloud Logging JSON when stderr is not a TTY). Kept apart from ``cli.py`` so the CLI stays a
list of thin commands and ``deployer --help`` imports none of this.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from deployer.config import DeployConfig, load_config
from deployer.errors import CorruptStateError, DeployerError, StateError, UsageError


class _RecoveryEnviron(Mapping[str, str]):
    """The environment, where a ``${VAR}`` that is not set (or is set but empty) reads as a placeholder:
    rollback, resume, unpin and unlock never use the config's image (they put back what the journal
    recorded), and an emergency must not stop at 3 a.m. because ``IMAGE`` is not set."""

    def __getitem__(self, name: str) -> str:
        return os.environ.get(name) or f"unset-{name.lower()}"

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str)

    def __iter__(self) -> Iterator[str]:
        return iter(os.environ)

    def __len__(self) -> int:
        return len(os.environ)


def _load(path: str) -> DeployConfig:
    return load_config(path, environ=_RecoveryEnviron())


def _out(stream: TextIO | None) -> TextIO:
    return stream or sys.stdout


def _reason(reason: str | None, command: str, *, kept: str = "it is journaled, and shown with the pin") -> str:
    text = " ".join((reason or "").split())
    if not text:
        raise UsageError(f"{command} needs --reason TEXT ({kept})")
    return text


def _setup_logs(stream: TextIO) -> None:
    from deployer import logs

    logs.configure(json=not sys.stderr.isatty(), level="warning")


def _key(config: DeployConfig) -> str:
    from deployer.orchestrator.deploy import state_key

    return state_key(config)


# ---- rollback --------------------------------------------------------------------------------------------


def run_rollback(
    path: str,
    *,
    reason: str | None,
    to_revision: str | None = None,
    infra: bool = False,
    verify: bool = False,
    pin_for: str | None = None,
    json_out: bool = False,
    stream: TextIO | None = None,
) -> int:
    from deployer.orchestrator.emergency import RollbackOptions, rollback
    from deployer.orchestrator.pins import DEFAULT_PIN_TTL, parse_duration

    out = _out(stream)
    why = _reason(reason, "rollback")
    if to_revision is not None and not to_revision.strip():  # `--to "$REV"` with REV unset: never the default
        raise UsageError("--to needs a revision name (leave --to out to roll back to the last good revision)")
    ttl = parse_duration(pin_for) if pin_for else DEFAULT_PIN_TTL
    config = _load(path)
    _setup_logs(out)
    result = rollback(
        config, RollbackOptions(reason=why, to_revision=to_revision, infra=infra, verify=verify, pin_for=ttl)
    )
    if json_out:
        out.write(json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n")
        return result.exit_code
    if result.status == "failed":  # nothing changed: an error like any other refusal (one line on stderr)
        raise DeployerError(
            f"rollback of {config.service.name} failed, nothing was changed: {result.why}",
            hint=result.hints[0] if result.hints else f"its journal: {result.journal_location or result.journal}",
        )
    now = datetime.now(UTC)
    lines = []
    if result.status == "succeeded":
        source = "" if result.source == "--to" else f"; from the {result.source}"
        lines.append(f"rolled back {config.service.name}: 100% to {result.revision} ({result.why}{source})")
    else:
        lines.append(f"rollback of {config.service.name} INCOMPLETE: {result.why or result.verdict}")
    if result.preempted:
        lines.append(f"  preempted deploy {result.preempted} (it stops without rolling back)")
    for closed in result.superseded:
        lines.append(f"  closed the journal of {closed} (superseded)")
    if result.traffic_after:
        shown = ", ".join(
            f"{t['revision']} {t['percent']}%" + (f" tag {t['tag']}" if t["tag"] else "") for t in result.traffic_after
        )
        lines.append(f"  traffic: {shown}")
    for item in result.restored:
        lines.append(f"  {item.get('stage')}: {item.get('kind')} {str(item.get('resource', '')).rsplit('/', 1)[-1]}")
    if result.pin is not None:
        lines.append(f"  {result.pin.describe(now)}")
        lines.append("  deploys refuse while the pin holds: `deployer deploy --unpin` or `deployer unpin --reason ...`")
    for line in result.remaining:
        lines.append(f"  remaining: {line}")
    if result.resume:
        lines.append(f"  what to run: {result.resume}   (tries again, from the journal, to finish it)")
    for hint in result.hints:
        lines.append(f"  {'or ' if result.resume else ''}to finish by hand: {hint}")
    if result.verdict:
        lines.append(f"  verify: {result.verdict}")
    lines.append(f"  journal: {result.journal_location or result.journal}")
    out.write("\n".join(lines) + "\n")
    return result.exit_code


# ---- resume ----------------------------------------------------------------------------------------------


def run_resume(path: str, *, verify: bool = False, json_out: bool = False, stream: TextIO | None = None) -> int:
    from deployer.orchestrator.resume import ResumeOptions, resume

    out = _out(stream)
    config = _load(path)
    _setup_logs(out)
    result = resume(config, ResumeOptions(verify=verify))
    if json_out:
        out.write(json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n")
        return result.exit_code
    lines = [result.message or f"{result.deploy_id}: {result.status}"]
    for line in result.settled:
        lines.append(f"  settled {line}")
    for item in result.restored:
        lines.append(f"  {item.get('stage')}: {item.get('kind')} {str(item.get('resource', '')).rsplit('/', 1)[-1]}")
    for line in result.remaining:
        lines.append(f"  remaining: {line}")
    if result.status == "rollback_incomplete":  # a call failed again: once its cause is fixed, the same again
        lines.append(f"  what to run: deployer resume -c {path}   (again, once what failed is fixed)")
    for hint in result.hints:
        lines.append(f"  {'or ' if result.status == 'rollback_incomplete' else ''}to finish by hand: {hint}")
    if result.journal_location:
        lines.append(f"  journal: {result.journal_location}")
    out.write("\n".join(lines) + "\n")
    return result.exit_code


# ---- unpin -----------------------------------------------------------------------------------------------


def run_unpin(path: str, *, reason: str | None, json_out: bool = False, stream: TextIO | None = None) -> int:
    from deployer.gcp.clients import Clients
    from deployer.orchestrator.owner import Owner
    from deployer.orchestrator.pins import unpin
    from deployer.state import open_store

    out = _out(stream)
    why = _reason(reason, "unpin")
    config = _load(path)
    _setup_logs(out)
    store = open_store(config.state, Clients(endpoint=config.endpoint, project=config.project))
    result = unpin(store, _key(config), reason=why, owner=Owner.current())
    now = datetime.now(UTC)
    if json_out:
        doc: dict[str, Any] = {
            "service": _key(config),
            "unpinned": result.pin.model_dump(mode="json") if result.pin else None,
            "journal": result.journal_id,
        }
        out.write(json.dumps(doc, indent=2) + "\n")
    else:
        out.write(result.message(now) + "\n")
    return 0


# ---- unlock --force --------------------------------------------------------------------------------------


def run_unlock(
    path: str, *, force: bool, reason: str | None, json_out: bool = False, stream: TextIO | None = None
) -> int:
    from deployer.gcp.clients import Clients
    from deployer.orchestrator.journal import FORCE_UNLOCK, Journal, new_deploy_id
    from deployer.orchestrator.lock import ServiceLock
    from deployer.orchestrator.owner import Owner
    from deployer.state import open_store

    out = _out(stream)
    if not force:
        raise UsageError("unlock removes another process's lease: say so with --force (and --reason)")
    why = _reason(reason, "unlock --force", kept="it is journaled with the lock's removal")
    config = _load(path)
    _setup_logs(out)
    key = _key(config)
    store = open_store(config.state, Clients(endpoint=config.endpoint, project=config.project))
    lock = ServiceLock(store, key)
    owner = Owner.current()
    now = datetime.now(UTC)
    try:
        holder = lock.read()
    except CorruptStateError as exc:  # an unreadable lease: --force removes it too, journaled with why
        return _unlock_unreadable(store, lock, key, exc, why=why, owner=owner, json_out=json_out, out=out, path=path)
    if holder is None:
        out.write(json.dumps({"service": key, "unlocked": None}) + "\n" if json_out else f"{key} is not locked\n")
        return 0
    op_id = new_deploy_id(now)
    journal = Journal.begin(
        store, service=key, deploy_id=op_id, config_digest="", owner=owner, operation="unlock", reason=why
    )
    journal.decision(FORCE_UNLOCK, why, holder=holder.model_dump(mode="json"), by=owner.describe())
    removed = lock.force_unlock(reason=why, by=owner)
    journal.finish(
        "succeeded",
        f"removed the lease of {holder.deploy_id}" if removed else "the lease was already gone",
        holder=holder.deploy_id,
    )
    if json_out:
        out.write(
            json.dumps({"service": key, "unlocked": holder.model_dump(mode="json"), "journal": op_id}, indent=2) + "\n"
        )
        return 0
    out.write(
        f"removed the lease of {holder.describe(now)}; journal {op_id}\n"
        f"if that {holder.purpose} died halfway, `deployer resume -c {path}` finishes or rolls it back\n"
    )
    return 0


def _unlock_unreadable(
    store: Any,
    lock: Any,
    key: str,
    unreadable: StateError,
    *,
    why: str,
    owner: Any,
    json_out: bool,
    out: TextIO,
    path: str,
) -> int:
    from deployer.orchestrator.journal import FORCE_UNLOCK, Journal, new_deploy_id

    op_id = new_deploy_id(datetime.now(UTC))
    journal = Journal.begin(
        store, service=key, deploy_id=op_id, config_digest="", owner=owner, operation="unlock", reason=why
    )
    journal.decision(FORCE_UNLOCK, why, holder=None, unreadable=unreadable.message, by=owner.describe())
    removed = lock.force_unlock_unreadable(reason=why, by=owner)
    journal.finish("succeeded", "removed an unreadable lease" if removed else "the lease was already gone")
    if json_out:
        doc = {"service": key, "unlocked": None, "unreadable": unreadable.message, "journal": op_id}
        out.write(json.dumps(doc, indent=2) + "\n")
        return 0
    out.write(
        f"removed the unreadable lease of {key} ({unreadable.message}); journal {op_id}\n"
        f"if a deploy or rollback died halfway, `deployer resume -c {path}` finishes or rolls it back\n"
    )
    return 0
