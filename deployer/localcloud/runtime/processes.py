"""Revisions as local processes: the ``RevisionRuntime`` the Cloud Run API drives.

One revision = at most one instance (a process) at a time. ``start`` (called by the Cloud Run API
when it creates a revision) resolves the image (images.py) and its secrets (secrets.py) at once —
failures are reported immediately, like Cloud Run's — then boots an instance in the background:
a free port, ``PORT`` and the template's env, the command under the watchdog (supervise.py, own
process group, dies with the local cloud), the startup probe (probe.py). ``state`` answers what the
API polls: PENDING while booting, READY once a probe passed, FAILED with Cloud Run's reason and
message (failures.py) otherwise.

After that first boot the instance comes and goes like Cloud Run's (gcp-facts §1.6): a revision with
no traffic, no tag and no open request is stopped after ``idle_stop`` seconds; one with
``min_instance_count`` ≥ 1 that has traffic or a tag is kept (restarted if it dies); a request to a
stopped revision starts it again (a cold start, through ``lease``). A revision stays Ready while scaled
to zero, as on Cloud Run.

Min instances only for a revision with traffic or a tag: Google's Knative serving page (the Cloud Run API's
model) says "Minimum instances are started only if the revision is addressable. A revision is addressable
if either of the following is true: It receives a percentage of the traffic. It was assigned a revision
tag." Cloud Run's own revisions page only says "Revisions that are not receiving requests don't consume any
resources … However, if your revision has minimum instances configured, there are billing
considerations" — a doubt, not a contradiction; a third party calls revision-level min instances a cost
"per accumulated tag" (PolicyEngine/policyengine-api#3744), which fits the Knative rule. Without it, every
release of a min-instances service left one more process running here for good.

Each revision keeps its stdout/stderr (and system lines such as Cloud Run's "Container called
exit(1).") in a ring buffer, served at ``/_localcloud/revisions/{name}/logs``.

Threads: the API calls ``start``/``state``/``stop`` from any thread; everything that touches a
process runs on the local cloud's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from deployer.localcloud.runtime import failures, routing
from deployer.localcloud.runtime.images import ImageMap, Launch
from deployer.localcloud.runtime.options import RuntimeOptions
from deployer.localcloud.runtime.probe import ProbePlan, ProbeResult, http_attempt, plan_for, run_probe, tcp_attempt
from deployer.localcloud.runtime.secrets import SecretStore
from deployer.localcloud.world import Readiness, RevisionState, World

log = structlog.get_logger("localcloud.runtime")

SUPERVISOR = Path(__file__).with_name("supervise.py")
DEFAULT_CONTAINER_PORT = 8080
BASE_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "SYSTEMROOT")
PENDING = RevisionState(Readiness.PENDING)
READY = RevisionState(Readiness.READY)


class Unavailable(Exception):
    """No instance of the revision can serve (the LB answers 503)."""


@dataclass
class Instance:
    proc: asyncio.subprocess.Process
    port: int
    started: float
    ready: bool = False
    pumps: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class RevisionRecord:
    name: str  # projects/P/locations/L/services/S/revisions/R
    service: str  # projects/P/locations/L/services/S
    image: str
    launch: Launch | None
    env: dict[str, str]
    container_port: int
    plan: ProbePlan
    timeout_s: float
    session_affinity: bool
    min_instances: int
    state: RevisionState = PENDING
    instance: Instance | None = None
    boot: asyncio.Task[bool] | None = None
    logs: deque[dict[str, str]] = field(default_factory=deque)
    open_requests: int = 0
    last_activity: float = field(default_factory=time.monotonic)
    boots: int = 0
    exits: list[int] = field(default_factory=list)

    @property
    def short(self) -> str:
        return self.name.rsplit("/", 1)[-1]

    @property
    def service_id(self) -> str:
        return self.service.rsplit("/", 1)[-1]

    def describe(self) -> dict[str, Any]:
        inst = self.instance
        return {
            "name": self.name,
            "revision": self.short,
            "service": self.service_id,
            "image": self.image,
            "state": self.state.readiness.value,
            "reason": self.state.reason,
            "message": self.state.message,
            "running": inst is not None,
            "ready": bool(inst and inst.ready),
            "pid": inst.pid if inst else None,
            "port": inst.port if inst else None,
            "open_requests": self.open_requests,
            "boots": self.boots,
            "exit_codes": list(self.exits),
            "timeout_s": self.timeout_s,
            "session_affinity": self.session_affinity,
            "min_instances": self.min_instances,
        }


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _seconds(duration: Any, default: float) -> float:
    if duration is None:
        return default
    if hasattr(duration, "total_seconds"):
        value = float(duration.total_seconds())
    else:
        value = float(getattr(duration, "seconds", 0) or 0) + float(getattr(duration, "nanos", 0) or 0) / 1e9
    return value if value > 0 else default


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class ProcessRuntime:
    """The ``RevisionRuntime`` that runs revisions as processes (see module doc)."""

    def __init__(
        self,
        world: World,
        loop: asyncio.AbstractEventLoop,
        options: RuntimeOptions,
        *,
        host: str = "127.0.0.1",
        images: ImageMap | None = None,
        secrets: SecretStore | None = None,
    ) -> None:
        self.world = world
        self.loop = loop
        self.options = options
        self.host = host
        self.images = images if images is not None else ImageMap.load(options.images_file)
        self.secrets = secrets if secrets is not None else SecretStore()
        if options.secrets_file and secrets is None:
            self.secrets.load_file(options.secrets_file)
        self.api_url: str = ""  # set by the server once the API listens (for Logs URLs)
        self._records: dict[str, RevisionRecord] = {}
        self._lock = threading.RLock()
        self._sweeper: asyncio.Task[None] | None = None
        self._stopping: set[asyncio.Task[None]] = set()
        self._closed = False

    # ---- RevisionRuntime ------------------------------------------------------------------
    def start(self, revision: Any, service: Any) -> None:
        name = str(revision.name)
        with self._lock:
            if name in self._records or self._closed:
                return
            record = self._record_for(revision, service)
            self._records[name] = record
        self._log_system(record, f"Revision {record.short} created with image {record.image}.")
        if record.state.readiness is Readiness.FAILED:
            log.info("runtime.revision_failed", revision=record.short, reason=record.state.reason)
            return
        self.loop.call_soon_threadsafe(self._begin_boot, record)

    def state(self, revision_name: str) -> RevisionState:
        with self._lock:
            record = self._records.get(revision_name)
        if record is not None:
            return record.state
        revision, service = self._lookup(revision_name)
        if revision is None:
            short = routing.short_name(revision_name)
            return RevisionState(Readiness.FAILED, "UNKNOWN", f"Revision '{short}' is unknown.")
        self.start(revision, service)
        with self._lock:
            rec = self._records.get(revision_name)
        return rec.state if rec else PENDING

    def stop(self, revision_name: str) -> None:
        with self._lock:
            record = self._records.pop(revision_name, None)
        if record is not None:
            self.loop.call_soon_threadsafe(self._stop_soon, record, "Revision deleted.")

    def close(self) -> None:
        """Stop every process now (SIGTERM, then SIGKILL after the grace); blocks up to the grace."""
        with self._lock:
            self._closed = True
            records = list(self._records.values())
            self._records.clear()
        if self._sweeper is not None:
            self.loop.call_soon_threadsafe(self._sweeper.cancel)
        pgids = [r.instance.pid for r in records if r.instance is not None]
        _signal_groups(pgids, signal.SIGTERM)
        deadline = time.monotonic() + self.options.stop_grace + 1
        while pgids and time.monotonic() < deadline:
            pgids = [p for p in pgids if _group_alive(p)]
            if pgids:
                time.sleep(0.05)
        _signal_groups(pgids, signal.SIGKILL)

    # ---- async lifecycle --------------------------------------------------------------------
    def start_sweeper(self) -> None:
        if self._sweeper is None:
            self._sweeper = self.loop.create_task(self._sweep_forever())

    async def aclose(self) -> None:
        """Graceful stop of everything (used when the load balancer shuts down)."""
        with self._lock:
            self._closed = True
            records = list(self._records.values())
        if self._sweeper is not None:
            self._sweeper.cancel()
        stops = (self._stop_instance(r, "Local cloud stopping.") for r in records)
        await asyncio.gather(*stops, return_exceptions=True)
        with self._lock:
            self._records.clear()

    def reset(self) -> None:
        """``World.reset``: forget every revision; their processes are stopped."""
        with self._lock:
            records = list(self._records.values())
            self._records.clear()
        for record in records:
            self.loop.call_soon_threadsafe(self._stop_soon, record, "Local cloud reset.")

    # ---- what the load balancer uses -----------------------------------------------------
    def record(self, revision_name: str) -> RevisionRecord | None:
        with self._lock:
            return self._records.get(revision_name)

    def records(self) -> list[RevisionRecord]:
        with self._lock:
            return list(self._records.values())

    def find(self, short_or_full: str) -> RevisionRecord | None:
        with self._lock:
            if short_or_full in self._records:
                return self._records[short_or_full]
            for record in self._records.values():
                if record.short == short_or_full:
                    return record
        return None

    @contextlib.asynccontextmanager
    async def lease(self, revision_name: str) -> AsyncIterator[Instance]:
        """A ready instance for one request (cold-starting it if needed); counts the open request."""
        record = self.record(revision_name)
        if record is None:
            revision, service = self._lookup(revision_name)
            if revision is None:
                raise Unavailable(f"revision {revision_name} does not exist")
            self.start(revision, service)
            record = self.record(revision_name)
            if record is None:
                raise Unavailable(f"revision {revision_name} cannot start")
        if record.state.readiness is Readiness.FAILED:
            raise Unavailable(record.state.message)
        record.open_requests += 1
        record.last_activity = time.monotonic()
        try:
            instance = await self._ensure_instance(record)
            yield instance
        finally:
            record.open_requests -= 1
            record.last_activity = time.monotonic()

    def logs(self, revision: str) -> RevisionRecord | None:
        return self.find(revision)

    # ---- internals: records -----------------------------------------------------------------
    def _lookup(self, revision_name: str) -> tuple[Any, Any]:
        run = self.world.apis.get("run")
        revisions = getattr(run, "revisions", {}) or {}
        services = getattr(run, "services", {}) or {}
        revision = revisions.get(revision_name)
        if revision is None:
            return None, None
        service_name = revision_name.split("/revisions/", 1)[0]
        return revision, services.get(service_name)

    def _record_for(self, revision: Any, service: Any) -> RevisionRecord:
        name = str(revision.name)
        service_name = name.split("/revisions/", 1)[0]
        project = name.split("/")[1] if name.startswith("projects/") else self.world.project
        containers = list(getattr(revision, "containers", []) or [])
        container = containers[0] if containers else None
        image = str(getattr(container, "image", "") or "")
        ports = list(getattr(container, "ports", []) or []) if container is not None else []
        container_port = int(getattr(ports[0], "container_port", 0) or 0) if ports else 0
        container_port = container_port or DEFAULT_CONTAINER_PORT
        scaling = getattr(revision, "scaling", None)
        record = RevisionRecord(
            name=name,
            service=service_name,
            image=image,
            launch=self.images.resolve(image),
            env={},
            container_port=container_port,
            plan=plan_for(getattr(container, "startup_probe", None) or None, self.options.startup_timeout),
            timeout_s=_seconds(getattr(revision, "timeout", None), 300.0),
            session_affinity=bool(getattr(revision, "session_affinity", False)),
            min_instances=int(getattr(scaling, "min_instance_count", 0) or 0),
            logs=deque(maxlen=max(1, self.options.log_lines)),
        )
        if record.launch is None:
            record.state = failures.image_not_found(image)
            return record
        env, missing = self._container_env(container, project)
        if missing:
            record.state = failures.secret_not_found(missing)
            return record
        record.env = {**record.launch.env, **env}
        return record

    def _container_env(self, container: Any, project: str) -> tuple[dict[str, str], list[tuple[int, str]]]:
        env: dict[str, str] = {}
        missing: list[tuple[int, str]] = []
        for index, var in enumerate(list(getattr(container, "env", []) or [])):
            ref = getattr(getattr(var, "value_source", None), "secret_key_ref", None)
            secret = str(getattr(ref, "secret", "") or "") if ref is not None else ""
            if secret:
                full, value = self.secrets.resolve(secret, str(getattr(ref, "version", "") or ""), project)
                if value is None:
                    missing.append((index, full))
                else:
                    env[str(var.name)] = value
            else:
                env[str(var.name)] = str(getattr(var, "value", "") or "")
        return env, missing

    def _settled(self) -> None:
        """A revision became Ready or Failed: let the Cloud Run API move its rollouts now."""
        reconcile = getattr(self.world.apis.get("run"), "reconcile", None)
        if reconcile is not None:
            try:
                reconcile()
            except Exception as exc:
                log.error("runtime.reconcile_failed", error=repr(exc))

    def _logs_url(self, record: RevisionRecord) -> str:
        return f"{self.api_url}/_localcloud/revisions/{record.short}/logs"

    def _log_system(self, record: RevisionRecord, text: str) -> None:
        record.logs.append({"time": _now_iso(), "stream": "system", "text": text})

    # ---- internals: instances -----------------------------------------------------------
    def _begin_boot(self, record: RevisionRecord) -> None:
        if record.boot is None and record.instance is None and not self._closed:
            record.boot = self.loop.create_task(self._boot(record))

    async def _ensure_instance(self, record: RevisionRecord) -> Instance:
        while True:
            inst = record.instance
            if inst is not None and inst.ready and inst.proc.returncode is None:
                return inst
            if self._closed:
                raise Unavailable("the local cloud is stopping")
            if record.boot is None:
                self._begin_boot(record)
            boot = record.boot
            if boot is None:
                raise Unavailable("the revision cannot start")
            ok = await asyncio.shield(boot)
            if not ok:
                raise Unavailable(record.state.message or f"revision {record.short} failed to start")

    def _env_for(self, record: RevisionRecord, port: int) -> dict[str, str]:
        env = {k: os.environ[k] for k in BASE_ENV_KEYS if k in os.environ}
        env["PYTHONUNBUFFERED"] = "1"  # local convenience: logs appear as they are written
        env.update(record.env)
        # The container contract's reserved variables (gcp-facts §4.5, facts.RUN_RESERVED_ENV).
        env.update(
            {
                "PORT": str(port),
                "K_SERVICE": record.service_id,
                "K_REVISION": record.short,
                "K_CONFIGURATION": record.service_id,
            }
        )
        return env

    async def _boot(self, record: RevisionRecord) -> bool:
        launch = record.launch
        assert launch is not None
        first = record.state.readiness is Readiness.PENDING
        record.boots += 1
        port = free_port(self.host)
        argv = [sys.executable, str(SUPERVISOR), str(os.getpid()), str(self.options.stop_grace), "--", *launch.argv]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=str(launch.cwd),
                env=self._env_for(record, port),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            self._log_system(record, f"Cannot start the container: {exc}")
            if first:
                record.state = failures.failed_to_listen(record.container_port, self._logs_url(record))
            record.boot = None
            return False
        inst = Instance(proc=proc, port=port, started=time.monotonic())
        record.instance = inst
        inst.pumps = [
            self.loop.create_task(self._pump(record, proc.stdout, "stdout")),
            self.loop.create_task(self._pump(record, proc.stderr, "stderr")),
        ]
        self._log_system(record, f"Starting new instance (pid {proc.pid}, PORT={port}).")
        log.info("runtime.instance_starting", revision=record.short, pid=proc.pid, port=port)
        plan = record.plan

        async def attempt(timeout_s: float) -> bool:
            if plan.kind == "http":
                return await http_attempt("127.0.0.1", port, plan.path, plan.headers, timeout_s)
            return await tcp_attempt("127.0.0.1", port, timeout_s)

        probe = self.loop.create_task(run_probe(plan, attempt))
        waiter = self.loop.create_task(proc.wait())
        try:
            await asyncio.wait({probe, waiter}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            probe.cancel()
            waiter.cancel()
            raise
        ready = probe.done() and not probe.cancelled() and probe.result() is ProbeResult.READY and not waiter.done()
        if ready:
            inst.ready = True
            record.state = READY
            record.boot = None
            record.last_activity = time.monotonic()
            self._log_system(record, f"Instance ready after {time.monotonic() - inst.started:.2f}s.")
            log.info("runtime.instance_ready", revision=record.short, pid=proc.pid, port=port)
            self.loop.create_task(self._watch_exit(record, inst, waiter))
            if first:
                self._settled()
            return True
        probe.cancel()
        if waiter.done():
            self._note_exit(record, inst, waiter.result())
        else:
            waiter.cancel()
            self._log_system(record, "Startup probe failed; stopping the instance.")
            await self._terminate(inst)
        if record.instance is inst:
            record.instance = None
        if first:
            if plan.configured and plan.kind == "http":
                record.state = failures.failed_startup_probe(self._logs_url(record))
            else:
                record.state = failures.failed_to_listen(record.container_port, self._logs_url(record))
            log.info("runtime.revision_failed", revision=record.short, reason=record.state.reason)
            record.boot = None
            self._settled()
        record.boot = None
        return False

    async def _pump(self, record: RevisionRecord, stream: asyncio.StreamReader | None, name: str) -> None:
        if stream is None:
            return
        while True:
            try:
                line = await stream.readline()
            except (ValueError, asyncio.LimitOverrunError):
                line = await stream.read(64 * 1024)
            if not line:
                return
            record.logs.append({"time": _now_iso(), "stream": name, "text": line.decode(errors="replace").rstrip("\n")})

    def _note_exit(self, record: RevisionRecord, inst: Instance, code: int) -> None:
        record.exits.append(code)
        # Cloud Run logs this line for a container that exits (v2 system log wording).
        self._log_system(record, f"Container called exit({code}).")
        log.info("runtime.instance_exited", revision=record.short, pid=inst.pid, code=code)
        _signal_groups([inst.pid], signal.SIGKILL)  # anything the command left behind in its group

    async def _watch_exit(self, record: RevisionRecord, inst: Instance, waiter: asyncio.Task[int]) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            code = await waiter
            if record.instance is inst:
                record.instance = None
                self._note_exit(record, inst, code)

    async def _terminate(self, inst: Instance) -> None:
        _signal_groups([inst.pid], signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(inst.proc.wait()), self.options.stop_grace + 1)
        _signal_groups([inst.pid], signal.SIGKILL)
        for pump in inst.pumps:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pump, 1)

    async def _stop_instance(self, record: RevisionRecord, why: str) -> None:
        if record.boot is not None:
            record.boot.cancel()
            with contextlib.suppress(BaseException):
                await record.boot
            record.boot = None
        inst = record.instance
        if inst is None:
            return
        record.instance = None
        self._log_system(record, f"{why} Shutting down the instance.")
        await self._terminate(inst)

    def _stop_soon(self, record: RevisionRecord, why: str) -> None:
        task = self.loop.create_task(self._stop_instance(record, why))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    # ---- the sweeper: idle stop and min instances ---------------------------------------------
    def _serving(self) -> set[str]:
        """Full names of revisions with traffic or a tag."""
        run = self.world.apis.get("run")
        out: set[str] = set()
        for name, service in list((getattr(run, "services", {}) or {}).items()):
            latest = str(getattr(service, "latest_ready_revision", "") or "")
            statuses = list(getattr(service, "traffic_statuses", []) or [])
            for short in routing.serving_revisions(statuses, latest):
                out.add(f"{name}/revisions/{short}")
        return out

    def sweep(self, now: float) -> None:
        """One pass: stop idle unserved instances, keep min instances up."""
        serving = self._serving()
        for record in self.records():
            if record.state.readiness is not Readiness.READY:
                continue
            wanted = record.min_instances > 0 and record.name in serving  # addressable only (module docstring)
            if wanted and record.instance is None and record.boot is None:
                self._log_system(record, "Starting an instance to keep min_instance_count.")
                self._begin_boot(record)
                continue
            idle = now - record.last_activity
            if (
                record.instance is not None
                and record.instance.ready
                and not wanted
                and record.name not in serving
                and record.open_requests == 0
                and idle >= self.options.idle_stop
            ):
                self._stop_soon(record, f"No traffic for {idle:.0f}s (no traffic share, no tag).")

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.options.sweep_interval)
            try:
                self.sweep(time.monotonic())
            except Exception as exc:  # a bad state must not kill the sweeper
                log.error("runtime.sweep_failed", error=repr(exc))


def _signal_groups(pgids: list[int], sig: int) -> None:
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
