"""What ``plan`` and ``status`` say beside the plan, as pure decisions: the refusal a deploy would raise over
traffic moved by hand (``deploy.drift_refusal``, the one function both use), and the service's template
when it is not what serves (``plan.unserved_template``), through ``status.build_status`` and its renderer."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from deployer.errors import DriftError
from deployer.orchestrator import traffic
from deployer.orchestrator.command import LivePlan
from deployer.orchestrator.deploy import drift_hint, drift_refusal
from deployer.orchestrator.status import build_status, render_status
from deployer.plan import Plan, unserved_template
from tests.orchestrator.deploy_support import make_config
from tests.orchestrator.history_support import KEY, SERVICE_NAME, T0

REVISION = "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION"
LATEST = "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST"
ENV = [{"name": "LOG_LEVEL", "value": "info"}]
CONTAINER = {"image": "local/chat-backend:v1", "env": ENV, "ports": [{"containerPort": 8080}]}


def _config() -> Any:
    import yaml

    from tests.orchestrator.deploy_support import ROOT

    return make_config(yaml.safe_load((ROOT / "configs" / "local.yaml").read_text()))


def _service(statuses: list[dict[str, Any]], *, template: dict[str, Any], latest: str = "chat-new") -> dict[str, Any]:
    return {
        "name": SERVICE_NAME,
        "latestReadyRevision": f"{SERVICE_NAME}/revisions/{latest}",
        "latestCreatedRevision": f"{SERVICE_NAME}/revisions/{latest}",
        "trafficStatuses": statuses,
        "template": template,
    }


def _revision(name: str, containers: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "name": f"{SERVICE_NAME}/revisions/{name}",
        "uid": "u-1",
        "createTime": "2026-03-02T09:00:00Z",
        "containers": containers,
        "maxInstanceRequestConcurrency": 80,
        **extra,
    }


PINNED_OLD = [{"type": REVISION, "revision": "chat-old", "percent": 100}]


# ---- the drift refusal: one decision for deploy and plan ---------------------------------------------------


def test_no_refusal_without_a_service_a_last_deploy_or_any_move():
    config = _config()
    last = traffic.LastDeploy("annotations", "d-20261126-120000-abcd", {"chat-old": 100})
    served = _service(PINNED_OLD, template={"containers": [CONTAINER]})
    assert drift_refusal(config, None, last) is None
    assert drift_refusal(config, served, None) is None
    assert drift_refusal(config, served, last) is None


def test_traffic_moved_by_hand_is_refused_with_the_deploys_words_and_hint():
    config = _config()
    last = traffic.LastDeploy("journal", "d-20261126-120000-abcd", {"chat-new": 100})
    served = _service(PINNED_OLD, template={"containers": [CONTAINER]})
    refusal = drift_refusal(config, served, last)
    assert refusal is not None
    assert refusal.message == (
        f"{config.service.name}: traffic is pinned to chat-old 100%, but the last deploy (d-20261126-120000-abcd, "
        "from the journal) left chat-new 100%; someone moved traffic by hand (a manual rollback?), and deploying "
        "now would report success while that split keeps serving"
    )
    assert refusal.hint == drift_hint(refusal.found, config.source.file)
    assert "--to chat-old" in refusal.hint
    error = refusal.error()
    assert isinstance(error, DriftError) and error.exit_code == 1
    assert (error.message, error.hint) == (refusal.message, refusal.hint)
    doc = refusal.to_json()
    assert doc["reason"] == "drift" and doc["live"] == {"chat-old": 100}
    assert doc["last_deploy_left"] == {"chat-new": 100} and doc["last_deploy"] == "d-20261126-120000-abcd"
    assert doc["message"] == refusal.message and doc["hint"] == refusal.hint


def test_the_live_plan_lists_the_refusal_first_then_warnings_then_the_template_note():
    config = _config()
    last = traffic.LastDeploy("annotations", "d-1", {"chat-new": 100})
    served = _service(PINNED_OLD, template={"containers": [{**CONTAINER, "image": "local/chat-backend:v2"}]})
    note = unserved_template(served, _revision("chat-old", [CONTAINER]))
    plan = Plan(service=SERVICE_NAME, created_at=T0, config_digest="sha256:0")
    made = LivePlan(plan, None, ["CR010 service.env: x"], drift_refusal(config, served, last), note)
    notes = made.notes()
    assert notes[0].startswith(f"drift: {config.service.name}: traffic is pinned to chat-old 100%")
    assert notes[0].endswith("(deploy will refuse)")
    assert notes[1] == "CR010 service.env: x"
    assert notes[2].startswith("template: the service's template (latest created chat-new, 0% traffic)")
    assert LivePlan(plan, None, []).notes() == []


# ---- the service's template against what serves ------------------------------------------------------------


def test_a_template_changed_by_hand_while_traffic_stays_pinned_is_named():
    env = [*ENV, {"name": "API_TOKEN", "value": "s3cr3t-v4lue"}]
    served = _service(
        [*PINNED_OLD, {"type": REVISION, "revision": "chat-new", "tag": "previous"}],
        template={"revision": "", "containers": [{**CONTAINER, "env": env}]},
    )
    note = unserved_template(served, _revision("chat-old", [CONTAINER]))
    assert note is not None
    assert (note.revision, note.latest_created, note.percent, note.serving) == ("chat-new", True, 0, "chat-old")
    assert note.fields == ("template.containers[0].env[1]",)
    assert note.describe() == (
        "the service's template (latest created chat-new, 0% traffic) differs from what serves (chat-old): "
        "a traffic move to LATEST would ship it"
    )
    assert "s3cr3t-v4lue" not in str(note.to_json())  # paths, never values


def test_no_note_when_the_templates_revision_serves_or_the_template_is_what_serves():
    template = {"containers": [CONTAINER]}
    serving_new = [{"type": LATEST, "percent": 100}]
    # LATEST resolves to the latest created: it serves
    assert unserved_template(_service(serving_new, template=template), _revision("chat-new", [CONTAINER])) is None
    # split by hand: the template's revision still serves a share
    split = [{"revision": "chat-old", "percent": 50}, {"revision": "chat-new", "percent": 50}]
    changed = {"containers": [{**CONTAINER, "image": "local/chat-backend:v2"}]}
    assert unserved_template(_service(split, template=changed), _revision("chat-old", [CONTAINER])) is None
    # a rolled-back deploy: the template names the serving revision again, the candidate stays latest created
    restored = {"revision": "chat-old", "containers": [CONTAINER]}
    assert unserved_template(_service(PINNED_OLD, template=restored), _revision("chat-old", [CONTAINER])) is None
    # same fields; the revision's server defaults (a port name, scaling) are no difference
    defaults = [{**CONTAINER, "ports": [{"containerPort": 8080, "name": "http1"}], "resources": {"limits": {}}}]
    same = _revision("chat-old", defaults, scaling={"maxInstanceCount": 100})
    assert unserved_template(_service(PINNED_OLD, template=template), same) is None
    # nothing serves, or no service
    assert unserved_template(_service([], template=changed), None) is None
    assert unserved_template(None, _revision("chat-old", [CONTAINER])) is None


def test_a_removed_env_var_is_a_difference_too():
    served = _service(PINNED_OLD, template={"containers": [{**CONTAINER, "env": []}]})
    note = unserved_template(served, _revision("chat-old", [CONTAINER]))
    assert note is not None and note.fields == ("template.containers[0].env[0]",)


# ---- status: the note beside "drift none" ---------------------------------------------------------------------


def test_status_says_drift_none_in_what_serves_and_the_template_note():
    env = [*ENV, {"name": "FEATURE_X", "value": "on"}]
    served = _service(PINNED_OLD, template={"containers": [{**CONTAINER, "env": env}]})
    plan = Plan(service=SERVICE_NAME, created_at=T0, config_digest="sha256:0")
    status = build_status(
        service=KEY,
        service_name=SERVICE_NAME,
        at=T0,
        observed_service=served,
        plan=plan,
        serving_revision=_revision("chat-old", [CONTAINER]),
    )
    assert status.in_sync and status.template is not None
    doc = status.to_json()["drift"]
    assert doc["in_sync"] is True
    assert doc["template"]["revision"] == "chat-new" and doc["template"]["fields"] == ["template.containers[0].env[1]"]
    assert doc["template"]["text"] == status.template.describe()
    out = io.StringIO()
    render_status(status, Console(file=out, width=200, highlight=False))
    text = out.getvalue()
    assert "drift none in what serves: the 0 resources the config owns match it" in text
    assert "note: the service's template (latest created chat-new, 0% traffic) differs from what serves" in text
    assert "~ template.containers[0].env[1]" in text
    assert "match what is live" not in text

    plain = build_status(
        service=KEY,
        service_name=SERVICE_NAME,
        at=T0,
        observed_service=served,
        plan=plan,
        serving_revision=_revision("chat-old", [{**CONTAINER, "env": env}]),
    )
    assert plain.template is None and plain.to_json()["drift"]["template"] is None
    out = io.StringIO()
    render_status(plain, Console(file=out, width=200, highlight=False))
    assert "drift none: the 0 resources the config owns match what is live" in out.getvalue()
    assert "note:" not in out.getvalue()
