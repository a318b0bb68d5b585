"""``make demo``: the seed's incident, replayed against a local Google Cloud, as a release engineer lives it.

    (a) the seed's own fix plan, refused by ``deployer check`` (the rules and their fixes);
    (b) a good release (``local/chat-backend:v2``) deployed by canary with gates;
    (c) a release that refuses WebSocket upgrades, caught by the candidate gate and rolled back;
    (d) a release that breaks only after 3 s (sockets closed with 1011), caught at a traffic step by
        the public gate's hold, and rolled back;
    (e) what is live at the end, and the deploy history from the journal.

Every step runs the real command code (``deployer check`` / ``plan`` / ``deploy`` functions, in this
process) against a ``LocalCloud`` with the load balancer and the seed's world
(``configs/local-world.yaml``): real Google client libraries over HTTP, revisions as real processes,
real WebSockets through the load balancer and Cloud Armor. Bake times and gate holds are short. The
local cloud (and every revision process) is stopped before the demo exits; the deploy journal lives in
a temporary directory. Exit 0 when the story went as told, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

ROOT = Path(__file__).resolve().parent.parent
WORLD = ROOT / "configs" / "local-world.yaml"
CONFIG = ROOT / "configs" / "local.yaml"
PROPOSAL = ROOT / "configs" / "examples" / "seed-proposal.yaml"

console = Console(highlight=False)
_FIRST_CLAUSE = re.compile(r': "|\. ')  # a finding's message up to its first quote of Google, or sentence


def chapter(letter: str, title: str) -> None:
    console.print()
    console.print(Text(f"({letter}) {title}", style="bold cyan"))


def say(text: str) -> None:
    console.print(f"    {text}", soft_wrap=True)


def _config_data(cloud: Any, state: Path, image: str, *, public_hold: float, steps: list[int]) -> dict[str, Any]:
    """configs/local.yaml pointed at this local cloud: its API endpoint, its load balancer as the
    public path, a temporary journal, and demo-sized bake times and gate holds."""
    data = yaml.safe_load(CONFIG.read_text())
    data["endpoint"] = cloud.endpoint
    data["service"]["image"] = image
    data["service"]["startup_probe"]["failure_threshold"] = 5
    data["rollout"] = {"steps": steps, "bake_seconds": 1, "tag": "candidate"}
    gate = {"connections": 6, "concurrency": 6, "min_samples": 6, "ping": 1, "p95_ms": 2000}
    data["gate"]["candidate"].update(gate, hold=1.0)
    data["gate"]["public"].update(gate, hold=public_hold, url=cloud.lb_url.replace("http://", "ws://") + "/ws")
    data["state"]["path"] = str(state)
    return data


def _write(data: dict[str, Any], path: Path) -> str:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def whoami(cloud: Any) -> str:
    """Which release answers a WebSocket through the load balancer."""
    import websockets

    async def ask() -> str:
        url = cloud.lb_url.replace("http://", "ws://") + "/ws"
        async with websockets.connect(url, open_timeout=5) as ws:
            await ws.send(json.dumps({"type": "whoami"}))
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
                if msg.get("type") == "whoami":
                    return f"{msg['version']} (revision {msg['revision']})"

    return asyncio.run(ask())


def wait_settled(cloud: Any) -> dict[str, Any]:
    from deployer.gcp.clients import Clients
    from deployer.gcp.observe import to_rest_json

    services = Clients(endpoint=cloud.endpoint).services()
    name = "projects/chat-staging/locations/us-central1/services/chat-backend"
    for _ in range(600):
        svc = to_rest_json(services.get_service(name=name))
        if not svc.get("reconciling"):
            return svc
        time.sleep(0.05)
    raise RuntimeError("the seeded service did not become ready")


def run_deploy(path: str) -> Any:
    """``deployer deploy -c PATH --yes``, in process, phases printed as they finish."""
    from deployer.config import load_config
    from deployer.orchestrator.deploy import DeployOptions, deploy
    from deployer.orchestrator.report import LineReporter

    return deploy(load_config(path), DeployOptions(reporter=LineReporter(sys.stdout, indent="    ")))


def show_result(result: Any) -> None:
    from deployer.orchestrator.report import render_result

    buf = Console(file=io.StringIO(), width=110, highlight=False)
    render_result(result, buf)
    for line in buf.file.getvalue().splitlines():  # type: ignore[attr-defined]
        say(line)


def chapter_check() -> bool:
    from deployer.check import run_check

    chapter("a", "The seed's own fix plan, checked before it touches anything")
    say(f"deployer check -c {PROPOSAL.relative_to(ROOT)}")
    out = io.StringIO()
    code = run_check(str(PROPOSAL), json_out=True, out=out)
    report = json.loads(out.getvalue())
    s = report["summary"]
    say(f"→ refused (exit {code}): {s['error']} errors, {s['warning']} warnings, {s['info']} info")
    for f in report["findings"]:
        if f["severity"] != "error":
            continue
        say(f"[red]✗ {f['code']}[/red] {f['field']} (line {f['line']})")
        say("    " + textwrap.shorten(_FIRST_CLAUSE.split(f["message"])[0], 100, placeholder="…"))
        say(f"    [green]fix:[/green] {f['fix']}")
    warned = sorted({f["code"] for f in report["findings"] if f["severity"] == "warning"})
    say(f"and {s['warning']} warnings ({', '.join(warned)}) — `deployer check` prints each with Google's words")
    return code == 1 and s["error"] > 0


def chapter_good(cloud: Any, tmp: Path, state: Path) -> bool:
    from deployer.config import load_config
    from deployer.orchestrator.command import make_live_plan, render_plan

    chapter("b", "A good release: local/chat-backend:v2, by canary with gates")
    say(f"users reach: {whoami(cloud)}")
    path = _write(
        _config_data(cloud, state, "local/chat-backend:v2", public_hold=1.0, steps=[10, 50, 100]), tmp / "v2.yaml"
    )
    say("deployer plan -c staging (the platform-correct config, configs/local.yaml):")
    plan, _observed, _warnings = make_live_plan(load_config(path))
    buf = Console(file=io.StringIO(), width=110, highlight=False)
    render_plan(plan, buf)
    for line in buf.file.getvalue().splitlines():  # type: ignore[attr-defined]
        say(f"  {line}")
    say("deployer deploy -c staging --yes:")
    result = run_deploy(path)
    show_result(result)
    say(f"users reach: {whoami(cloud)}")
    return bool(result.status == "succeeded")


def chapter_broken(cloud: Any, tmp: Path, state: Path) -> bool:
    chapter("c", "A release that refuses WebSocket upgrades (:broken-upgrade)")
    say("its /health answers 200, so a liveness check would pass it; the candidate gate opens real WebSockets")
    data = _config_data(cloud, state, "local/chat-backend:broken-upgrade", public_hold=1.0, steps=[10, 50, 100])
    result = run_deploy(_write(data, tmp / "broken.yaml"))
    show_result(result)
    say(f"users reach: {whoami(cloud)}")
    return bool(result.status == "rolled_back" and str(result.why).startswith("gate_candidate"))


def chapter_flaky(cloud: Any, tmp: Path, state: Path) -> bool:
    chapter("d", "A release that breaks only after 3 s (:flaky-1011)")
    say("it closes every socket with 1011 three seconds after it opened: a 1 s candidate gate passes it;")
    say("the public gate holds its sockets 4 s at each traffic step")
    data = _config_data(cloud, state, "local/chat-backend:flaky-1011", public_hold=4.0, steps=[10, 50, 100])
    result = run_deploy(_write(data, tmp / "flaky.yaml"))
    show_result(result)
    say(f"users reach: {whoami(cloud)}")
    return bool(result.status == "rolled_back" and str(result.why).startswith("gate_public"))


def chapter_final(cloud: Any, state: Path) -> None:
    from deployer.gcp.clients import Clients
    from deployer.gcp.observe import to_rest_json
    from deployer.orchestrator import traffic
    from deployer.orchestrator.journal import list_deploys, load
    from deployer.state.local import LocalStateStore

    chapter("e", "What is live now, and the history")
    svc = wait_settled(cloud)
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("revision", "traffic", "tag", "image", "ready"):
        table.add_column(col)
    revisions = Clients(endpoint=cloud.endpoint).revisions()
    served = traffic.effective(svc)
    for rev in revisions.list_revisions(parent=svc["name"]):
        doc = to_rest_json(rev)
        short = doc["name"].rsplit("/", 1)[-1]
        pct = sum(s.percent for s in served if s.revision == short)
        tags = ", ".join(s.tag for s in served if s.revision == short and s.tag)
        ready = next((c.get("state", "") for c in doc.get("conditions", []) if c.get("type") == "Ready"), "")
        table.add_row(short, f"{pct}%", tags, doc["containers"][0]["image"], ready.replace("CONDITION_", "").lower())
    buf = Console(file=io.StringIO(), width=110, highlight=False)
    buf.print(table)
    for line in buf.file.getvalue().splitlines():  # type: ignore[attr-defined]
        say(line)
    annotations = {k: v for k, v in (svc.get("annotations") or {}).items() if k.startswith("deployer.dev/")}
    say(f"service annotations: {annotations}")
    store = LocalStateStore(state)
    key = "chat-staging/us-central1/chat-backend"
    say("history (from the journal, newest first):")
    for deploy_id in list_deploys(store, key):
        j = load(store, key, deploy_id)
        took = (j.last_at - j.started.at).total_seconds()
        detail = j.finished.detail if j.finished else {}
        why = str(detail.get("why") or "")
        why = f" — {why[:77]}…" if len(why) > 78 else (f" — {why}" if why else "")
        say(f"  {deploy_id}  {j.status:<12} {detail.get('revision', '')}  {took:5.1f} s{why}")


def main() -> int:
    from deployer import logs
    from deployer.localcloud.server import LocalCloud

    logs.configure(json=False, level="error")
    started = time.monotonic()
    console.print(
        Text("deployer demo", style="bold"), "— the seed's WebSocket incident, replayed on a local Google Cloud"
    )
    world = yaml.safe_load(WORLD.read_text())
    ok: dict[str, bool] = {}
    with tempfile.TemporaryDirectory(prefix="deployer-demo-") as tmpdir:
        tmp = Path(tmpdir)
        state = tmp / "state"
        ok["check"] = chapter_check()
        cloud = LocalCloud(lb_port=0, seed_doc=world, runtime_options={"startup_timeout": 10.0, "stop_grace": 2.0})
        cloud.start()
        try:
            wait_settled(cloud)
            console.print()
            say(
                f"local cloud up with the seed's staging world: Google APIs on {cloud.endpoint}, "
                f"load balancer on {cloud.lb_url}"
            )
            say("chat-backend on Cloud Run (v1) behind backend service chat-backend-bs, Cloud Armor chat-armor")
            ok["good"] = chapter_good(cloud, tmp, state)
            ok["broken"] = chapter_broken(cloud, tmp, state)
            ok["flaky"] = chapter_flaky(cloud, tmp, state)
            chapter_final(cloud, state)
        finally:
            cloud.stop()
    console.print()
    took = time.monotonic() - started
    if all(ok.values()):
        console.print(
            Text(
                f"The story went as told in {took:.0f} s; the local cloud and every revision have stopped.",
                style="bold green",
            )
        )
        return 0
    failed = ", ".join(k for k, v in ok.items() if not v)
    console.print(Text(f"The demo did not go as told ({failed}); see above.", style="bold red"))
    return 1


if __name__ == "__main__":
    sys.exit(main())
