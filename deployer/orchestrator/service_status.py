"""The Cloud Run service fields the API computes: never part of what a rollback or a resumed finalize
writes back. A module of its own so the emergency path (rollback_target.py) reads it without importing
anything heavier."""

from __future__ import annotations

STATUS_FIELDS: frozenset[str] = frozenset(
    {
        "uid",
        "generation",
        "createTime",
        "updateTime",
        "deleteTime",
        "expireTime",
        "creator",
        "lastModifier",
        "observedGeneration",
        "terminalCondition",
        "conditions",
        "latestReadyRevision",
        "latestCreatedRevision",
        "trafficStatuses",
        "uri",
        "urls",
        "reconciling",
        "etag",
        "satisfiesPzs",
    }
)
