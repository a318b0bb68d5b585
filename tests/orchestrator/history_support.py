"""Hand-built journals for the history / why / status tests: records made directly (no store, no
network), on a clock that advances exactly as each test says, and written to a store when a test
needs the reader."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from deployer.orchestrator.journal import (
    Decision,
    EffectDone,
    EffectFailed,
    EffectStarted,
    ErrorInfo,
    Finished,
    GateResult,
    JournalDocument,
    PhaseEntered,
    PreImage,
    Record,
    RollbackStep,
    Started,
    journal_key,
)
from deployer.orchestrator.owner import Owner
from deployer.plan import ANNOTATION_DEPLOY_ID, ANNOTATION_LAST_GOOD, ANNOTATION_PREVIOUS, Action
from deployer.state import StateStore, dump_json

ROOT = Path(__file__).resolve().parents[2]
KEY = "chat-staging/us-central1/chat-backend"
SERVICE_NAME = "projects/chat-staging/locations/us-central1/services/chat-backend"
BS = "projects/chat-staging/global/backendServices/chat-backend-bs"
RULE_50 = "projects/chat-staging/global/securityPolicies/chat-armor/rules/50"
T0 = datetime(2026, 3, 2, 9, 30, 0, tzinfo=UTC)
OWNER = Owner(user="ana", host="laptop", pid=4242)
CI = Owner(user="cloudbuild", host="worker-1", pid=1, build_id="b-7f3e")


def text_of(render: Callable[..., None], *args: Any, width: int = 200, **kw: Any) -> str:
    """What ``render(*args, console, **kw)`` prints on a plain terminal ``width`` columns wide."""
    buf = io.StringIO()
    render(*args, Console(file=buf, width=width, highlight=False, color_system=None), **kw)
    return buf.getvalue()


def offline_config(tmp_path: Path, state: Path) -> Path:
    """configs/local.yaml with its state in ``state`` and the discard port as its endpoint (``history``,
    ``why`` and ``status``'s journal side read the state store only; a call would fail loudly)."""
    data = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    data["endpoint"] = "http://127.0.0.1:9"
    data["state"]["path"] = str(state)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(data))
    return cfg


def evidence(
    verdict: str,
    *,
    ok: int,
    failed: int = 0,
    errors: int = 0,
    p50: float | None = 12.0,
    p95: float | None = 30.0,
    failures: list[tuple[str, int, str]] | None = None,
    reasons: list[str] | None = None,
    url: str = "ws://lb.example/ws",
    host: str | None = None,
) -> dict[str, Any]:
    """A gate evidence dict shaped as ``Verdict.to_json`` makes it."""
    attempted = ok + failed + errors
    return {
        "verdict": verdict,
        "reasons": reasons or [f"{ok}/{attempted} connections passed every step"],
        "counts": {"attempted": attempted, "measured": ok + failed, "ok": ok, "failed": failed, "errors": errors},
        "checks": [],
        "latency_ms": {"handshake": {"n": ok, "p50": p50, "p95": p95, "max": p95}},
        "close_codes": {"1000": ok} if ok else {},
        "failures": [
            {"group": g, "kind": g.split()[0], "meaning": m, "count": n, "examples": []} for g, n, m in failures or []
        ],
        "errors": [],
        "thresholds": {},
        "context": {"target": {"url": url, "host": host}, "duration_s": 0.25},
    }


class Builder:
    """Appends records with consecutive seq numbers; ``after(s)`` moves the clock on by s seconds."""

    def __init__(
        self,
        deploy_id: str = "d-20260302-093000-a1b2",
        *,
        at: datetime = T0,
        owner: Owner = OWNER,
        operation: str = "deploy",
        plan: dict[str, Any] | None = None,
        reason: str | None = None,
    ) -> None:
        self.deploy_id = deploy_id
        self.now = at
        self.records: list[Record] = [
            Started(
                seq=0,
                at=at,
                deploy_id=deploy_id,
                service=KEY,
                operation=operation,  # type: ignore[arg-type]
                config_digest="sha256:c0ffee",
                plan=plan,
                owner=owner,
                reason=reason,
            )
        ]

    @property
    def revision(self) -> str:
        from deployer.orchestrator.deploy import revision_name

        return revision_name("chat-backend", self.deploy_id)

    def after(self, seconds: float) -> Builder:
        self.now += timedelta(seconds=seconds)
        return self

    def _seq(self) -> int:
        return len(self.records)

    def phase(self, name: str, percent: int | None = None) -> Builder:
        detail = {"percent": percent} if percent is not None else {}
        self.records.append(PhaseEntered(seq=self._seq(), at=self.now, name=name, detail=detail))
        return self

    def effect(
        self,
        effect: str,
        kind: str,
        resource_id: str,
        method: str,
        *,
        intended: dict[str, Any] | None = None,
        outcome: str = "applied",
        error: str | None = None,
    ) -> Builder:
        self.records.append(
            PreImage(seq=self._seq(), at=self.now, effect=effect, kind=kind, resource_id=resource_id, resource={"x": 1})
        )
        self.records.append(
            EffectStarted(
                seq=self._seq(),
                at=self.now,
                effect=effect,
                kind=kind,
                resource_id=resource_id,
                action=Action.UPDATE,
                method=method,
                intended=intended,
            )
        )
        if outcome == "applied":
            self.records.append(EffectDone(seq=self._seq(), at=self.now, effect=effect, result={"ok": True}))
        elif outcome in ("not_applied", "unknown_failed"):
            self.records.append(
                EffectFailed(
                    seq=self._seq(),
                    at=self.now,
                    effect=effect,
                    error=ErrorInfo(type="CloudError", message=error or "HTTP 400", method=method, status=400),
                    outcome="not_applied" if outcome == "not_applied" else "unknown",
                )
            )
        return self  # outcome "unknown": started, never finished (a killed process)

    def service_update(
        self, effect: str, *, revision: str | None = None, finalize_previous: str | None = None
    ) -> Builder:
        annotations = {ANNOTATION_DEPLOY_ID: "d-20260101-000000-0000", ANNOTATION_PREVIOUS: "chat-backend-old"}
        if finalize_previous is not None:
            annotations = {
                ANNOTATION_DEPLOY_ID: self.deploy_id,
                ANNOTATION_LAST_GOOD: self.revision,
                ANNOTATION_PREVIOUS: finalize_previous,
            }
        intended = {"template.revision": revision or self.revision, "traffic": [], "annotations": annotations}
        return self.effect(effect, "run.service", SERVICE_NAME, "run.services.patch", intended=intended)

    def gate(self, target: str, verdict: str, ev: dict[str, Any]) -> Builder:
        self.records.append(GateResult(seq=self._seq(), at=self.now, target=target, verdict=verdict, evidence=ev))
        return self

    def decision(self, decision: str, reason: str, **detail: Any) -> Builder:
        self.records.append(Decision(seq=self._seq(), at=self.now, decision=decision, reason=reason, detail=detail))
        return self

    def undo(self, effects: tuple[str, ...], kind: str, resource_id: str, stage: str, **detail: Any) -> Builder:
        self.records.append(
            RollbackStep(
                seq=self._seq(),
                at=self.now,
                effects=effects,
                kind=kind,
                resource_id=resource_id,
                stage=stage,  # type: ignore[arg-type]
                detail=detail,
            )
        )
        return self

    def finish(self, status: str, summary: str, **detail: Any) -> Builder:
        self.records.append(
            Finished(
                seq=self._seq(),
                at=self.now,
                status=status,  # type: ignore[arg-type]
                summary=summary,
                remaining=tuple(detail.pop("remaining", ())),
                detail=detail,
            )
        )
        return self

    def write(self, store: StateStore) -> None:
        doc = JournalDocument(deploy_id=self.deploy_id, service=KEY, records=tuple(self.records))
        store.write(journal_key(KEY, self.deploy_id), dump_json(doc.model_dump(mode="json")), if_generation=None)


PUBLIC_OK = evidence("Passed", ok=10)
CANDIDATE_403 = evidence(
    "Failed",
    ok=0,
    failed=10,
    p50=None,
    p95=None,
    failures=[("upgrade_refused HTTP 403", 10, "upgrade refused")],
    reasons=["10/10 measured connections failed (budget 0): upgrade_refused HTTP 403 ×10"],
    host="candidate---chat-backend.localhost",
)


def good_deploy(deploy_id: str = "d-20260302-093000-a1b2", *, at: datetime = T0, owner: Owner = OWNER) -> Builder:
    """apply 40 s (service + rule), candidate gate 5 s, shift 50 % 1 s, public gate 5 s, shift 100 % 2 s,
    public gate 5 s: 59 s in all (1 s before apply)."""
    b = Builder(deploy_id, at=at, owner=owner)
    b.after(1).phase("apply").service_update("e1").effect(
        "e2", "armor.rule", RULE_50, "compute.securityPolicies.addRule"
    )
    b.after(40).phase("gate_candidate").after(5).gate("candidate", "Passed", evidence("Passed", ok=10))
    b.phase("shift", 50).service_update("e3").after(1).phase("gate_public", 50).after(5).gate(
        "public 50%", "Passed", PUBLIC_OK
    )
    b.phase("shift", 100).service_update("e4", finalize_previous="chat-backend-00001-abc").after(2)
    b.phase("gate_public", 100).after(5).gate("public 100%", "Passed", PUBLIC_OK)
    return b.after(0).finish(
        "succeeded",
        f"deployed {b.revision}",
        revision=b.revision,
        why=None,
        traffic_after=[{"revision": b.revision, "percent": 100, "tag": ""}],
    )


def rolled_back_deploy(deploy_id: str = "d-20260302-100000-c3d4", *, at: datetime | None = None) -> Builder:
    """apply 30 s (service + backend service), the candidate gate fails (2 s), rollback 3 s, verify 4 s:
    40 s in all (1 s before apply)."""
    b = Builder(deploy_id, at=at or T0 + timedelta(minutes=30), owner=CI)
    b.after(1).phase("apply").service_update("e1").effect(
        "e2", "compute.backendService", BS, "compute.backendServices.patch"
    )
    b.after(30).phase("gate_candidate").after(2).gate("candidate", "Failed", CANDIDATE_403)
    why = "gate_candidate failed: candidate gate Failed: 10/10 measured connections failed (budget 0)"
    b.phase("rollback").decision("rollback", why)
    b.after(1).undo(("e2",), "compute.backendService", BS, "started")
    b.undo(("e2",), "compute.backendService", BS, "done", detail="customRequestHeaders back as before (patch)")
    b.after(2).undo(("e1",), "run.service", SERVICE_NAME, "started")
    b.undo(
        ("e1",),
        "run.service",
        SERVICE_NAME,
        "done",
        detail="traffic back to chat-backend-00001-abc 100%",
        pinned_latest_to="chat-backend-00001-abc",
    )
    b.phase("verify").after(4).gate("restored", "Passed", PUBLIC_OK)
    return b.finish(
        "rolled_back",
        "rolled back: every touched resource is back to its pre-image",
        revision=b.revision,
        why=why,
        pinned_latest_to=["chat-backend-00001-abc"],
    )


def as_json(records: list[Record]) -> str:
    return json.dumps([r.model_dump(mode="json") for r in records])


def emergency_rollback(deploy_id: str = "d-20260302-103000-e5f6", *, at: datetime | None = None) -> Builder:
    """``deployer rollback``'s journal shape (emergency.py): decision rollback → one traffic update → pin."""
    b = Builder(deploy_id, at=at or T0 + timedelta(hours=1), owner=OWNER, operation="rollback", reason="5xx on /ws")
    b.decision("rollback", "5xx on /ws", to_revision="chat-backend-00001-abc", source="journal")
    b.after(1).effect(
        "e1",
        "run.service",
        SERVICE_NAME,
        "run.services.patch",
        intended={"traffic": [{"revision": "chat-backend-00001-abc", "percent": 100}]},
    )
    b.decision("pin", "5xx on /ws", revision="chat-backend-00001-abc")
    return b.after(1).finish(
        "succeeded",
        "traffic moved to chat-backend-00001-abc",
        to_revision="chat-backend-00001-abc",
        why="the last good revision from the journal",
    )
