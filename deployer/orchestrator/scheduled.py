"""What ``deployer deploy`` decides before it deploys: ``--if-changed`` and freeze windows (issue 7).

- ``--if-changed`` (scheduled redeploys, ``cloudbuild/redeploy-scheduled.yaml``): observe and plan
  first, with reads only; an empty plan ends the run here, exit 0, "no changes" — no mutating call to
  the cloud, and no write to the state store either (the lock is not even taken: nothing will act) —
  unless the newest deploy ended ``rollback_incomplete``: refused, exit 4, ``deployer resume`` first.
  A plan with changes goes on to the ordinary deploy, which takes the lock, observes and plans again
  under it (so what it applies is what is live then).
- Freeze windows (config ``freeze:``): a deploy inside one is refused before anything is read,
  unless ``--override-freeze --reason TEXT``; ``--if-changed`` looks first, so a frozen scheduled run
  with nothing to do still exits 0. ``deploy()`` checks again (the authoritative check, on its
  injected clock) and journals an override (decision ``override_freeze``: who, why, which windows).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TextIO

import structlog

from deployer.config import DeployConfig
from deployer.errors import UsageError
from deployer.orchestrator.freeze import FreezeOverride, check_freeze

_log = structlog.get_logger("deployer.deploy")


def _utcnow() -> datetime:
    return datetime.now(UTC)


def freeze_override(override_freeze: bool, reason: str | None) -> FreezeOverride | None:
    """The override the flags ask for; ``UsageError`` for ``--override-freeze`` without a reason."""
    text = (reason or "").strip()
    if override_freeze and not text:
        raise UsageError(
            "--override-freeze needs --reason TEXT (it is journaled with who overrode the freeze, and why)"
        )
    if text and not override_freeze:
        raise UsageError("--reason explains an override: use it with --override-freeze or --unpin")
    return FreezeOverride(text) if override_freeze else None


def before_deploy(
    config: DeployConfig,
    *,
    plan_file: str | None,
    if_changed: bool,
    override: FreezeOverride | None,
    json_out: bool,
    stream: TextIO,
    clock: Callable[[], datetime] = _utcnow,
) -> int | None:
    """An exit code when the deploy ends here (``--if-changed`` with nothing to change), else None.
    ``FreezeError`` when a freeze window holds and nothing overrides it."""
    if if_changed and plan_file is not None:
        raise UsageError("--if-changed plans the deploy itself; it does not take --plan FILE")
    if not if_changed:
        check_freeze(config, clock(), override=override)
        return None
    import json

    from deployer.orchestrator.command import _console, make_live_plan
    from deployer.orchestrator.deploy import check_resumed_unlocked, state_key
    from deployer.orchestrator.report import DeployResult, render_result
    from deployer.orchestrator.traffic import effective

    plan, observed, warnings = make_live_plan(config)  # reads only
    if not plan.is_empty:
        check_freeze(config, clock(), override=override)
        return None
    # "no changes" is not the answer while a deploy's rollback was incomplete: what it left is what the plan
    # compared with (the failed candidate's template, its tag). Refused as the deploy itself would (exit 4).
    check_resumed_unlocked(config)
    key = state_key(config)
    _log.info("deploy.no_changes", service=key, if_changed=True, checked=len(plan.changes), warnings=warnings)
    served = [s.to_json() for s in effective(observed.service or {})]
    result = DeployResult(
        service=key,
        status="no_changes",
        exit_code=0,
        plan_summary=plan.summary(),
        traffic_before=served,
        traffic_after=served,
    )
    if json_out:
        stream.write(json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n")
    else:
        console = _console(stream)
        for w in warnings:
            console.print(f"[yellow]warning:[/yellow] {w}")
        render_result(result, console)
    return 0
