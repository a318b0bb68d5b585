"""The read-only commands: ``deployer status``, ``deployer history`` and ``deployer why``.

Each reads (the live resources for ``status``; the journals, the lock and the pin in the state store),
builds a value with the pure modules (``status``, ``history``, ``why``) and renders it: readable on a
TTY (rich), the same lines plain otherwise, ``--json`` the whole value. None of them writes anything,
to the cloud or to the state store.

Exit codes (README "Exit codes"): 0 when the answer could be given; 2 for a config that cannot be
loaded or a deploy id that is not in the journal (a wrong argument); 1 when the state or the cloud
cannot be read.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from deployer.config import DeployConfig, load_config
from deployer.errors import DeployerError, StateError, UsageError

if TYPE_CHECKING:
    from deployer.orchestrator.lock import LockInfo
    from deployer.orchestrator.pins import Pin
    from deployer.orchestrator.status import LockView, PinView


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _console(stream: TextIO) -> Any:
    from rich.console import Console

    console = Console(file=stream, highlight=False)
    if not console.is_terminal:
        console = Console(file=stream, highlight=False, width=160)
    return console


def _write_json(stream: TextIO, doc: Any) -> None:
    stream.write(json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n")


def _store(config: DeployConfig, clients: Any = None) -> Any:
    from deployer.state import open_store

    if clients is None and config.state.backend == "gcs":
        from deployer.gcp.clients import Clients

        clients = Clients(endpoint=config.endpoint, project=config.project)
    return open_store(config.state, clients)


def _key(config: DeployConfig) -> str:
    from deployer.orchestrator.deploy import state_key

    return state_key(config)


# ---- status ------------------------------------------------------------------------------------------


def pin_view(pin: Pin | None) -> PinView | None:
    """A ``status.PinView`` from a ``pins.Pin`` (None: no pin)."""
    from deployer.orchestrator.status import PinView

    if pin is None:
        return None
    return PinView(
        revision=pin.revision,
        who=pin.owner.describe(),
        reason=pin.reason,
        at=pin.pinned_at,
        expires_at=pin.expires_at,
        rollback_id=pin.rollback_id,
    )


def read_pin_view(store: Any, key: str) -> tuple[PinView | None, str | None]:
    """The pin as a ``PinView`` (None: no pin), or why it could not be read."""
    from deployer.orchestrator.pins import read_pin

    try:
        return pin_view(read_pin(store, key)), None
    except StateError as exc:
        return None, exc.message


def read_lock(store: Any, key: str, at: datetime) -> tuple[LockInfo | None, bool | None, LockView]:
    """The service lock as read, whether its holder's process lives (``lock.holder_alive``: ``None`` when
    this host cannot tell, or the lock is free or unreadable), and its ``LockView``."""
    from deployer.orchestrator.lock import ServiceLock, holder_alive
    from deployer.orchestrator.status import LockView

    try:
        info = ServiceLock(store, key).read()
    except StateError as exc:
        return None, None, LockView.unreadable(exc.message)
    alive = holder_alive(info) if info is not None else None
    return info, alive, LockView.of(info, at, holder_alive=alive)


def gather_status(config: DeployConfig, *, clients: Any = None, now: datetime | None = None) -> Any:
    """Read everything ``status`` shows (reads only) and build the ``ServiceStatus``."""
    return _gather_status(config, clients=clients, now=now)[0]


def _gather_status(
    config: DeployConfig, *, clients: Any = None, now: datetime | None = None
) -> tuple[Any, StateError | None]:
    """The ``ServiceStatus``, and the error that kept the state store from being read (the status then
    shows what is live and says why the journal part is missing)."""
    from deployer.desired import desired_state
    from deployer.gcp.clients import Clients
    from deployer.gcp.observe import observe
    from deployer.orchestrator import traffic
    from deployer.orchestrator.deploy import config_digest, last_deploy
    from deployer.orchestrator.history import mark_gone, read_history
    from deployer.orchestrator.status import build_status
    from deployer.plan import make_plan

    at = now or _utcnow()
    clients = clients or Clients(endpoint=config.endpoint, project=config.project)
    observed = observe(config, clients)
    store = _store(config, clients)
    key = _key(config)
    state_error: StateError | None = None
    lock: LockView | None = None
    pin: PinView | None = None
    pin_error: str | None = None
    try:
        history = read_history(store, key, limit=10)
        last, owned = last_deploy(store, key, observed.service)
    except StateError as exc:  # the store as a whole (a missing bucket): show what is live, and why not the rest
        state_error, history, last, owned = exc, [], None, []
    if state_error is None:
        info, alive, lock = read_lock(store, key, at)
        if lock.error is None:
            history = mark_gone(history, info, now=at, holder_alive=alive)
        pin, pin_error = read_pin_view(store, key)
    found = traffic.drift(observed.service, last) if observed.service is not None else None
    desired = desired_state(config)
    plan = make_plan(
        desired, observed, created_at=at, config_digest=config_digest(desired), owned_armor_priorities=owned
    )
    return build_status(
        service=key,
        service_name=config.service_path,
        at=at,
        observed_service=observed.service,
        plan=plan,
        history=history,
        lock=lock,
        pin=pin,
        pin_error=pin_error,
        traffic_drift=found.describe() if found is not None else None,
        serving_revision=observed.serving_revision,
        state_error=state_error.message if state_error is not None else None,
    ), state_error


def run_status(path: str, *, json_out: bool = False, stream: TextIO | None = None) -> int:
    from deployer.orchestrator.status import render_status

    stream = stream or sys.stdout
    config = load_config(path)
    status, state_error = _gather_status(config)
    if json_out:
        _write_json(stream, status.to_json())
    else:
        render_status(status, _console(stream))
    if state_error is not None:  # shown what is live; still exit 1 with the one error line (and its hint)
        raise state_error
    return 0


# ---- history -----------------------------------------------------------------------------------------


def run_history(path: str, *, limit: int = 20, json_out: bool = False, stream: TextIO | None = None) -> int:
    from deployer.orchestrator.history import mark_gone, read_history, render_history

    if limit < 1:
        raise UsageError(f"--limit must be at least 1 (got {limit})")
    stream = stream or sys.stdout
    config = load_config(path)
    key = _key(config)
    store = _store(config)
    items = read_history(store, key, limit=limit)
    now = _utcnow()
    if any(i.status == "running" for i in items):
        info, alive, lock = read_lock(store, key, now)
        if lock.error is None:
            items = mark_gone(items, info, now=now, holder_alive=alive)
    if json_out:
        _write_json(stream, {"service": key, "deploys": [i.to_json(now) for i in items]})
    else:
        render_history(items, _console(stream), service=key, now=now)
    return 0


# ---- why ---------------------------------------------------------------------------------------------

LAST = ("last", "latest")


def resolve_deploy_id(ids: list[str], wanted: str, key: str) -> str:
    """``wanted`` if it is one of ``ids`` (``last`` = the newest); else a ``UsageError`` that says which
    ids exist."""
    from deployer.orchestrator.journal import DEPLOY_ID_RE

    if wanted in LAST:
        if not ids:
            raise UsageError(f"no deploys of {key} in the journal yet")
        return ids[0]
    if wanted in ids:
        return wanted
    shape = "" if DEPLOY_ID_RE.fullmatch(wanted) else " (deploy ids look like d-YYYYMMDD-HHMMSS-xxxx)"
    newest = ", ".join(ids[:3])
    raise UsageError(
        f"no deploy {wanted} of {key} in the journal{shape}",
        hint=f"`deployer history -c CONFIG` lists them; the newest: {newest}" if ids else "no deploys recorded yet",
    )


def run_why(path: str, deploy_id: str, *, json_out: bool = False, stream: TextIO | None = None) -> int:
    from deployer.orchestrator.journal import list_deploys, newest_first_or_error, read_records
    from deployer.orchestrator.why import explain, render_why

    stream = stream or sys.stdout
    config = load_config(path)
    key = _key(config)
    store = _store(config)
    ids = list_deploys(store, key)
    wanted = deploy_id.strip()
    if wanted in LAST and ids:  # the newest by when it started, not by the id's random suffix
        wanted = next(newest_first_or_error(store, key))[0]
    wanted = resolve_deploy_id(ids, wanted, key)
    try:
        records, _generation = read_records(store, key, wanted)
        explanation = explain(records)
    except DeployerError as exc:
        raise StateError(f"the journal of {wanted} cannot be read: {exc.message}") from exc
    if json_out:
        _write_json(stream, explanation.to_json())
    else:
        render_why(explanation, _console(stream))
    return 0
