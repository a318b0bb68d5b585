"""Cloud Run traffic, pure: what serves now, and the traffic lists a deploy writes.

Everything here works on REST-shaped JSON (``run_v2.Service`` as ``to_json`` renders it: camelCase,
enums by name) and returns new lists; nothing is read or written.

- ``effective(service)``: who serves, from ``trafficStatuses``. On the wire a LATEST status carries
  no revision name (the real recording ``compute-serverless-neg-cloudrun.http.log``): it is resolved
  through ``latestReadyRevision`` ("Allocates instances to the Service's latest ready Revision",
  gcp-facts §4.1).
- ``no_traffic(...)``: gcloud's ``--no-traffic --tag`` recipe (gcp-facts §4.4): each LATEST target
  becomes a REVISION target pinned to the revision LATEST resolves to, the other targets stay, and
  the new revision gets a 0 % target carrying the tag.
- ``step(...)`` / ``final(...)``: a canary step (new revision p %, the previous serving revisions
  scaled to 100 − p) and the finalize list (100 % to the new revision, the rollback target tagged).
- ``restore(...)``: the pre-image's traffic written back exactly, except that a LATEST target is
  pinned to the revision it resolved to in the pre-image (after a candidate became Ready, LATEST
  would send users to it). The pin is returned so the caller can journal and report it.
- ``drift(...)``: whether the live split is what the last deploy left.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

LATEST = "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST"
REVISION = "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION"

JSON = dict[str, Any]


def short(name: str | None) -> str:
    """``projects/…/revisions/R`` → ``R`` (a short name stays as it is)."""
    return (name or "").rsplit("/", 1)[-1]


def _is_latest(entry: Mapping[str, Any]) -> bool:
    kind = str(entry.get("type") or "")
    # proto3 leaves an unset type out; the API reads a target without a type and without a revision
    # as LATEST (rules.normalize_traffic), so do we.
    return kind.endswith("LATEST") or kind in ("1",) or (not kind and not entry.get("revision"))


@dataclass(frozen=True, order=True)
class Served:
    """One effective traffic status: revision (short name), percent, tag ("" when none)."""

    revision: str
    percent: int
    tag: str = ""

    def to_json(self) -> JSON:
        return {"revision": self.revision, "percent": self.percent, "tag": self.tag}


def effective(service: Mapping[str, Any]) -> tuple[Served, ...]:
    """The service's traffic statuses with LATEST resolved, in the API's order."""
    latest = short(service.get("latestReadyRevision"))
    out = []
    for status in service.get("trafficStatuses") or []:
        revision = short(status.get("revision")) or (latest if _is_latest(status) else "")
        out.append(Served(revision, int(status.get("percent") or 0), str(status.get("tag") or "")))
    return tuple(out)


def split(served: Iterable[Served]) -> dict[str, int]:
    """Revision → percent for the revisions that receive traffic (duplicates summed), in order."""
    out: dict[str, int] = {}
    for s in served:
        if s.percent > 0 and s.revision:
            out[s.revision] = out.get(s.revision, 0) + s.percent
    return out


def tags(served: Iterable[Served]) -> dict[str, str]:
    """Tag → revision."""
    return {s.tag: s.revision for s in served if s.tag}


def main_revision(served: Iterable[Served]) -> str | None:
    """The revision with the largest share (the first of equals), or None when nothing serves."""
    best: tuple[int, str] | None = None
    for revision, percent in split(served).items():
        if best is None or percent > best[0]:
            best = (percent, revision)
    return best[1] if best else None


def target(revision: str, percent: int = 0, tag: str = "") -> JSON:
    """A REVISION ``TrafficTarget`` (zero values left out, as the client sends them)."""
    out: JSON = {"type": REVISION, "revision": revision}
    if percent:
        out["percent"] = percent
    if tag:
        out["tag"] = tag
    return out


# ---- lists a deploy writes -----------------------------------------------------------------------


def pin_latest(traffic: Sequence[Mapping[str, Any]], latest_ready: str) -> tuple[list[JSON], str | None]:
    """``traffic`` with every LATEST target written as a REVISION target on ``latest_ready`` (1:1, so
    percents and tags stay where they were); returns the list and the pinned revision (None: no LATEST)."""
    out: list[JSON] = []
    pinned = None
    for entry in traffic:
        percent, tag = int(entry.get("percent") or 0), str(entry.get("tag") or "")
        if _is_latest(entry):
            if not latest_ready:
                raise ValueError("a LATEST traffic target cannot be pinned: the service has no ready revision")
            pinned = short(latest_ready)
            out.append(target(pinned, percent, tag))
        else:
            out.append(target(short(entry.get("revision")), percent, tag))
    return out, pinned


def _without_tags(traffic: Iterable[JSON], drop: Iterable[str]) -> list[JSON]:
    """Remove tags in ``drop``; a target left with 0 % and no tag is dropped."""
    dropped = set(drop)
    out = []
    for entry in traffic:
        entry = dict(entry)
        if entry.get("tag") in dropped:
            entry.pop("tag")
        if entry.get("percent") or entry.get("tag"):
            out.append(entry)
    return out


def no_traffic(service: Mapping[str, Any], new_revision: str, tag: str) -> tuple[list[JSON], str | None]:
    """The traffic of the candidate update (gcp-facts §4.4): the live list with LATEST pinned, ``tag``
    moved to a 0 % target on ``new_revision``. Returns the list and the pinned revision."""
    pinned_list, pinned = pin_latest(service.get("traffic") or [], short(service.get("latestReadyRevision")))
    return [*_without_tags(pinned_list, [tag]), target(new_revision, 0, tag)], pinned


def scale(base: Mapping[str, int], total: int) -> dict[str, int]:
    """``base`` percents scaled to sum to ``total`` (largest remainder; ties go to the earlier entry)."""
    whole = sum(base.values())
    if whole <= 0 or total <= 0:
        return {r: 0 for r in base}
    exact = {r: p * total / whole for r, p in base.items()}
    out = {r: int(v) for r, v in exact.items()}
    left = total - sum(out.values())
    order = sorted(base, key=lambda r: (-(exact[r] - out[r]), list(base).index(r)))
    for r in order[:left]:
        out[r] += 1
    return out


def step(before: Sequence[Served], new_revision: str, percent: int, *, candidate_tag: str) -> list[JSON]:
    """A canary step: ``new_revision`` at ``percent`` (tagged ``candidate_tag``), the revisions that
    served ``before`` scaled to ``100 - percent``, every other tag kept on a 0 % target."""
    if not 0 <= percent <= 100:
        raise ValueError(f"a traffic step is 0..100 percent (got {percent})")
    base = {r: p for r, p in split(before).items() if r != new_revision}
    out = [target(new_revision, percent, candidate_tag)]
    for revision, share in scale(base, 100 - percent).items():
        if share:
            out.append(target(revision, share))
    for tag, revision in tags(before).items():
        if tag != candidate_tag:
            out.append(target(revision, 0, tag))
    return out


def final(
    before: Sequence[Served], new_revision: str, *, candidate_tag: str, previous_tag: str | None
) -> tuple[list[JSON], str | None]:
    """Finalize: 100 % to ``new_revision``, the revision that served most ``before`` tagged
    ``previous_tag`` (the rollback target), other tags kept, ``candidate_tag`` gone. Returns the list
    and the previous revision."""
    previous = main_revision(before)
    if previous == new_revision:
        previous = None
    out = [target(new_revision, 100)]
    if previous and previous_tag:
        out.append(target(previous, 0, previous_tag))
    for tag, revision in tags(before).items():
        if tag not in (candidate_tag, previous_tag):
            out.append(target(revision, 0, tag))
    return out, previous


@dataclass(frozen=True)
class Restore:
    """The traffic that puts a service back, and the LATEST pin it needed (None: none)."""

    traffic: list[JSON]
    pinned: str | None


def restore(pre_image: Mapping[str, Any]) -> Restore:
    """The pre-image's traffic, 1:1, LATEST pinned to the revision it resolved to in the pre-image.

    The pre-image's *spec* (``traffic``) is written, so an entry keeps its percent and tag; the
    effective traffic it leads to is the pre-image's ``trafficStatuses``."""
    traffic, pinned = pin_latest(pre_image.get("traffic") or [], short(pre_image.get("latestReadyRevision")))
    return Restore(traffic, pinned)


def norm_spec(entries: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, int, str]]:
    """A traffic *spec* as comparable values: (LATEST | REVISION, short revision, percent, tag), sorted
    (the API renders enums by name or number and leaves zero values out)."""
    out = []
    for e in entries:
        kind = "LATEST" if _is_latest(e) else "REVISION"
        out.append((kind, short(e.get("revision")), int(e.get("percent") or 0), str(e.get("tag") or "")))
    return sorted(out)


def same_effective(a: Sequence[Served], b: Sequence[Served]) -> bool:
    """Equal effective traffic: the same (revision, percent, tag) statuses, in any order."""
    return sorted(a) == sorted(b)


# ---- drift ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LastDeploy:
    """What the last deploy left: where it was read from, its id, and the split it left."""

    source: str  # "annotations" | "journal"
    deploy_id: str
    split: Mapping[str, int]


@dataclass(frozen=True)
class Drift:
    """Live traffic that differs from what the last deploy left."""

    expected: Mapping[str, int]
    live: Mapping[str, int]
    last: LastDeploy

    def describe(self) -> str:
        def show(s: Mapping[str, int]) -> str:
            return ", ".join(f"{r} {p}%" for r, p in s.items()) or "nothing"

        kind = "pinned to" if len(self.live) == 1 else "split"
        return (
            f"traffic is {kind} {show(self.live)}, but the last deploy ({self.last.deploy_id}, "
            f"from the {self.last.source}) left {show(self.expected)}"
        )


def drift(service: Mapping[str, Any], last: LastDeploy | None) -> Drift | None:
    """``None`` when there is no last deploy to compare with, or the live split is what it left."""
    if last is None:
        return None
    live = split(effective(service))
    if dict(live) == dict(last.split):
        return None
    return Drift(expected=dict(last.split), live=live, last=last)
