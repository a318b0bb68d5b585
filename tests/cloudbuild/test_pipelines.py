"""The Cloud Build pipelines and the Dockerfile, read as Cloud Build and Docker would read them.

Running each step's command against the local cloud is ``test_pipeline_runs.py``.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployer.config import load_config
from tests.cloudbuild.pipelines import (
    BUILD_KEYS,
    BUILTINS,
    DEPLOYER_BIN,
    OPTION_KEYS,
    PIPELINES,
    ROOT,
    STEP_KEYS,
    USER_SUBSTITUTION,
    cli_commands,
    help_listed_commands,
    invocation,
    load,
    references,
    resolve,
    run_order,
    step_argv,
    step_env,
    steps,
    subprocess_env,
)

TEST_BUILTINS = {"PROJECT_ID": "test-project", "BUILD_ID": "b-test-1"}


def test_the_four_pipelines_exist() -> None:
    assert PIPELINES == ["deploy.yaml", "fleet.yaml", "redeploy-scheduled.yaml", "rollback.yaml"]


@pytest.mark.parametrize("name", PIPELINES)
def test_pipeline_has_the_build_schema_shape(name: str) -> None:
    build = load(name)
    assert set(build) <= BUILD_KEYS, f"unknown top-level keys {set(build) - BUILD_KEYS}"
    assert set(build.get("options") or {}) <= OPTION_KEYS
    assert re.fullmatch(r"\d+s", str(build["timeout"])), "timeout is a Duration string like '3600s'"
    assert steps(build), "a build needs steps"
    ids = [s["id"] for s in steps(build)]
    assert len(ids) == len(set(ids)), "step ids are unique"
    for step in steps(build):
        assert set(step) <= STEP_KEYS, f"{step.get('id')}: unknown keys {set(step) - STEP_KEYS}"
        assert isinstance(step["name"], str) and step["name"]
        assert isinstance(step.get("args", []), list) and all(isinstance(a, str) for a in step.get("args", []))
        assert isinstance(step.get("entrypoint", ""), str)
        for item in [*step.get("env", []), *(build.get("options") or {}).get("env", [])]:
            assert re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", item), f"env entries are KEY=VALUE, got {item!r}"
        for dep in step.get("waitFor", []):
            assert dep == "-" or dep in ids[: ids.index(step["id"])], f"{step['id']} waits for unknown {dep!r}"
    run_order(build)  # no cycles


@pytest.mark.parametrize("name", PIPELINES)
def test_substitutions_are_declared_and_used(name: str) -> None:
    build = load(name)
    declared = set(build.get("substitutions") or {})
    assert declared and all(USER_SUBSTITUTION.match(k) for k in declared), declared
    text = (ROOT / "cloudbuild" / name).read_text()
    body = yaml.safe_dump({k: v for k, v in build.items() if k != "substitutions"})
    used = references(body) | {r for v in (build.get("substitutions") or {}).values() for r in references(str(v))}
    assert used - BUILTINS <= declared, f"used but not declared: {sorted(used - BUILTINS - declared)}"
    assert declared <= used, f"declared but never used: {sorted(declared - used)}"
    assert "$_" in text  # the pipeline is parameterized at all


@pytest.mark.parametrize("name", PIPELINES)
def test_every_deployer_step_runs_the_deployer_image_and_passes_the_build_id(name: str) -> None:
    build = load(name)
    values = resolve(build, {}, TEST_BUILTINS)
    assert values["_DEPLOYER_IMAGE"] == "us-central1-docker.pkg.dev/test-project/deployer/deployer:0.1.0"
    deployer_steps = [s for s in steps(build) if invocation(s) is not None]
    assert deployer_steps
    for step in deployer_steps:
        assert step["name"] == "$_DEPLOYER_IMAGE"
        assert step_env(build, step, values)["BUILD_ID"] == "b-test-1"  # the lock names the build


def test_deploy_is_check_then_plan_then_deploy_applying_the_saved_plan() -> None:
    build = load("deploy.yaml")
    waves = run_order(build)
    assert [[s["id"] for s in w] for w in waves] == [["workspace"], ["check"], ["plan"], ["deploy"]]
    values = resolve(build, {"_CONFIG": "c.yaml", "_IMAGE": "img:1"}, TEST_BUILTINS)
    by_id = {s["id"]: s for s in steps(build)}
    assert step_argv(by_id["check"], values) == ["deployer", "check", "-c", "c.yaml", "--live"]
    assert step_argv(by_id["plan"], values) == ["deployer", "plan", "-c", "c.yaml", "--out", ".deployer/plan.json"]
    assert step_argv(by_id["deploy"], values) == ["deployer", "deploy", "-c", "c.yaml", "--plan", ".deployer/plan.json"]
    assert step_env(build, by_id["deploy"], values)["IMAGE"] == "img:1"


def test_redeploy_is_one_if_changed_deploy() -> None:
    build = load("redeploy-scheduled.yaml")
    values = resolve(build, {"_CONFIG": "c.yaml"}, TEST_BUILTINS)
    assert [step_argv(s, values) for s in steps(build)] == [
        ["deployer", "deploy", "-c", "c.yaml", "--if-changed", "--yes"]
    ]
    text = (ROOT / "cloudbuild" / "redeploy-scheduled.yaml").read_text()
    for needle in ("gcloud builds triggers create manual", "gcloud scheduler jobs create http", ":run", "--oauth"):
        assert needle in text, f"the Cloud Scheduler how-to misses {needle!r}"


def test_rollback_needs_a_reason_before_it_runs(tmp_path: Path) -> None:
    build = load("rollback.yaml")
    guard, rollback = steps(build)
    assert rollback["waitFor"] == [guard["id"]]
    outcomes = {}
    for reason in ("", "   ", "5xx on /ws since 02:40; it's $(not run) `either`"):
        values = resolve(build, {"_REASON": reason}, TEST_BUILTINS)
        proc = subprocess.run(
            step_argv(guard, values),
            env=subprocess_env(step_env(build, guard, values)),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
        outcomes[reason] = (proc.returncode, proc.stderr)
    assert outcomes[""][0] == 2 and "_REASON is required" in outcomes[""][1]
    assert outcomes["   "][0] == 2
    tricky = outcomes["5xx on /ws since 02:40; it's $(not run) `either`"]
    assert tricky == (0, ""), tricky  # reached the shell as data, not as script
    values = resolve(build, {"_REASON": "bad release", "_CONFIG": "c.yaml"}, TEST_BUILTINS)
    assert step_argv(rollback, values) == ["deployer", "rollback", "-c", "c.yaml", "--reason", "bad release"]


def header_gcloud_commands(name: str) -> list[list[str]]:
    """The ``gcloud ...`` commands a pipeline's header comment documents, split as a POSIX shell splits them."""
    lines = [line[1:].strip() for line in (ROOT / "cloudbuild" / name).read_text().splitlines() if line.startswith("#")]
    commands: list[str] = []
    joined = ""
    for line in lines:
        joined = f"{joined} {line}".strip() if joined else line
        if joined.endswith("\\"):
            joined = joined[:-1]
            continue
        if joined.startswith("gcloud "):
            commands.append(joined)
        joined = ""
    return [shlex.split(c) for c in commands]


def gcloud_dict_items(value: str) -> list[str]:
    """How gcloud splits a dict flag's value (``gcloud topic escaping``): on ``,``, or on the delimiter X
    of a value written ``^X^...``."""
    delimiter = ","
    if value.startswith("^"):
        delimiter, _, value = value[1:].partition("^")
    return value.split(delimiter)


@pytest.mark.parametrize("name", PIPELINES)
def test_header_substitutions_split_into_declared_keys_as_gcloud_splits_them(name: str) -> None:
    # gcloud splits --substitutions on commas: a reason with a comma in it needs the ^~^ delimiter syntax
    declared = set(load(name).get("substitutions") or {})
    found = 0
    for argv in header_gcloud_commands(name):
        for arg in argv:
            if arg.startswith("--substitutions="):
                for item in gcloud_dict_items(arg.removeprefix("--substitutions=")):
                    key, eq, _value = item.partition("=")
                    assert eq and key in declared, f"{name}: {arg!r} gives gcloud the item {item!r}"
                    found += 1
    assert found  # every pipeline's header shows how to pass its substitutions


def test_rollback_header_passes_a_reason_with_a_comma_whole() -> None:
    runs = [a for a in header_gcloud_commands("rollback.yaml") if a[:4] == ["gcloud", "builds", "triggers", "run"]]
    (subs,) = [a.removeprefix("--substitutions=") for a in runs[0] if a.startswith("--substitutions=")]
    assert gcloud_dict_items(subs) == ["_REASON=5xx on /ws since 02:40, release 2025-09-07"]


def test_fleet_runs_the_canary_region_first_then_the_others_in_parallel() -> None:
    build = load("fleet.yaml")
    values = resolve(build, {}, TEST_BUILTINS)
    config_of = {s["id"]: step_argv(s, values)[3] for s in steps(build)}
    region_of = {sid: load_region(cfg) for sid, cfg in config_of.items()}
    waves = run_order(build)
    assert len(waves) == 2, "canary wave, then everything else"
    canary_ids = {s["id"] for s in waves[0]}
    canary_regions = {region_of[i] for i in canary_ids}
    assert len(canary_regions) == 1, f"the first wave is one region: {canary_regions}"
    others = [s for s in steps(build) if s["id"] not in canary_ids]
    assert len(others) >= 2 and all(region_of[s["id"]] not in canary_regions for s in others)
    for step in others:
        assert set(step["waitFor"]) == canary_ids, f"{step['id']} must wait for exactly the canary steps"
    for step in waves[0]:
        assert step["waitFor"] == ["-"]
    # one step per service and region, each with the same command but its own config
    assert len({(cfg, region_of[sid]) for sid, cfg in config_of.items()}) == len(config_of)
    shapes = {tuple(a for a in step_argv(s, values) if a != config_of[s["id"]]) for s in steps(build)}
    assert shapes == {("deployer", "deploy", "-c", "--yes")}


def load_region(config_path: str) -> str:
    data: Any = yaml.safe_load((ROOT / config_path).read_text())
    return str(data["region"])


def test_fleet_configs_are_staging_in_another_region(monkeypatch: pytest.MonkeyPatch) -> None:
    staging = load_config(ROOT / "configs/staging.yaml").model_dump(exclude={"source"}, warnings=False)
    build = load("fleet.yaml")
    values = resolve(build, {}, TEST_BUILTINS)
    env = {"IMAGE": "gcr.io/netra-staging/netra-backend-staging:2025-09-07-8c1d4e2"}
    regions = []
    for step in steps(build):
        loaded = load_config(ROOT / step_argv(step, values)[3], environ=env)
        config = loaded.model_dump(exclude={"source"}, warnings=False)
        regions.append(config.pop("region"))
        assert config == {k: v for k, v in staging.items() if k != "region"}
    assert regions[0] == staging["region"] and len(set(regions)) == len(regions)


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs" / "fleet").glob("*.yaml")))
def test_fleet_configs_pass_check(path: str) -> None:
    proc = subprocess.run(
        [str(DEPLOYER_BIN), "check", "-c", path],
        cwd=ROOT,
        env=subprocess_env({"IMAGE": "gcr.io/netra-staging/netra-backend-staging:2025-09-07-8c1d4e2"}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_deployer_help_lists_what_the_tests_introspect() -> None:
    proc = subprocess.run([str(DEPLOYER_BIN), "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0
    assert help_listed_commands(proc.stdout) == set(cli_commands())
    assert {"check", "gate"} <= set(cli_commands())


# ---- the Dockerfile --------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def test_dockerfile_is_slim_non_root_runtime_only_with_deployer_as_entrypoint() -> None:
    instructions = dockerfile()
    froms = [args for word, args in instructions if word == "FROM"]
    assert froms and all(re.fullmatch(r"python:3\.11-slim(\S*)?( AS \w+)?", f) for f in froms), froms
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    users = [args for word, args in instructions[last_from:] if word == "USER"]
    assert users, "the final stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), "the image must not run as root"
    runs = " ".join(args for word, args in instructions if word == "RUN")
    installs = re.findall(r"pip install ([^&;]+)", runs)
    assert installs and all(re.search(r"(^|\s)\.(\s|$)", i) for i in installs), installs
    assert not re.search(r"\.\[|pytest|hypothesis|mypy|ruff|\bdev\b", " ".join(installs)), installs
    entrypoints = [args for word, args in instructions if word == "ENTRYPOINT"]
    assert entrypoints[-1] == '["deployer"]', "exec form, so Cloud Build args go straight to deployer"
    copies = [args for word, args in instructions if word == "COPY"]
    assert not any(c.split()[0] in (".", "./") for c in copies), "copy what the package needs, not the tree"


def test_dockerignore_keeps_the_venv_and_tests_out() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".venv", ".git", "tests"} <= ignored


def test_the_package_imports_no_dev_dependency() -> None:
    # The image installs `pip install .` only: nothing under deployer/ may import a dev extra.
    dev = re.compile(r"^\s*(import|from)\s+(pytest|hypothesis|mypy|ruff)\b", re.M)
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "deployer").rglob("*.py") if dev.search(p.read_text())]
    assert offenders == []
