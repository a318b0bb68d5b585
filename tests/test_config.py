"""The deploy config loader: typed values, and one ConfigError (file:line: key: what) for anything wrong."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deployer.config import (
    ArmorConfig,
    DeployConfig,
    GateConfig,
    LoadBalancerConfig,
    RolloutConfig,
    SecretRef,
    ServiceConfig,
    StateConfig,
    config_from_data,
    format_key,
    load_config,
    parse_config,
    parse_key,
    substitute,
)
from deployer.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

MINIMAL = """\
project: p
region: us-central1
service:
  name: chat
  image: r/chat:v1
"""


def load(text: str, environ: dict[str, str] | None = None) -> DeployConfig:
    return parse_config(textwrap.dedent(text), file="cfg.yaml", environ=environ or {})


def error_of(text: str, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(text, environ)
    return info.value


# ---- the shipped configs load ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["staging.yaml", "local.yaml", "examples/seed-proposal.yaml"])
def test_shipped_configs_load(name: str) -> None:
    config = load_config(ROOT / "configs" / name, environ={})
    assert isinstance(config.service, ServiceConfig)
    assert config.source.file.endswith(name)


def test_local_config_gates_outlast_the_flaky_image_the_readme_rehearses() -> None:
    # README: set service.image to :flaky-1011 "and deploy again" — its sockets close 3 s after opening,
    # so a gate hold shorter than that passes it (it did, with hold 2).
    images = yaml.safe_load((ROOT / "configs" / "local-images.yaml").read_text())["images"]
    fail_after = float(images["local/chat-backend:flaky-1011"]["env"]["CHAT_FAIL_AFTER"])
    c = load_config(ROOT / "configs" / "local.yaml", environ={})
    assert c.gate.public is not None and c.gate.public.hold > fail_after


def test_local_config_names_the_local_world() -> None:
    c = load_config(ROOT / "configs" / "local.yaml", environ={})
    assert (c.project, c.region, c.service.name, c.service.image) == (
        "chat-staging",
        "us-central1",
        "chat-backend",
        "local/chat-backend:v2",
    )
    assert c.load_balancer is not None and c.armor is not None
    assert (c.load_balancer.backend_service, c.load_balancer.url_map, c.armor.policy) == (
        "chat-backend-bs",
        "chat-lb",
        "chat-armor",
    )
    assert c.endpoint == "http://127.0.0.1:8480"
    assert (c.state.backend, c.state.path) == ("local", str(ROOT / "configs" / ".deployer"))  # beside the config


def test_model_classes_hold_each_section() -> None:
    c = load_config(ROOT / "configs" / "staging.yaml", environ={})
    assert isinstance(c.load_balancer, LoadBalancerConfig)
    assert isinstance(c.armor, ArmorConfig)
    assert isinstance(c.rollout, RolloutConfig)
    assert isinstance(c.gate, GateConfig)
    assert isinstance(c.state, StateConfig)
    assert c.state.backend == "gcs" and c.state.bucket


# ---- values -------------------------------------------------------------------------------------


def test_defaults() -> None:
    c = load(MINIMAL)
    assert c.service.timeout is None and c.service.concurrency is None
    assert c.service.cpu_throttling is None and c.service.billing is None and c.service.port_name == "http1"
    assert c.service.cpu_idle is True  # Cloud Run's default: CPU only during requests (§1.4)
    assert c.rollout.steps == [10, 50, 100]
    assert c.state.backend == "local" and c.state.path == ".deployer/"
    assert c.endpoint is None and c.freeze == []


@pytest.mark.parametrize(("written", "seconds"), [("3600", 3600), ('"3600s"', 3600), ('"60m"', 3600), ('"1h"', 3600)])
def test_timeout_as_seconds_or_duration_string(written: str, seconds: int) -> None:
    assert load(MINIMAL + f"  timeout: {written}\n").service.timeout == seconds


def test_out_of_platform_range_values_still_load() -> None:
    # Platform rules are for `check` to explain, not for the loader to refuse.
    c = load(
        MINIMAL + "  timeout: 86400\n  concurrency: 5000\nload_balancer:\n  backend_service: bs\n  timeout_sec: 86400\n"
        "  custom_request_headers: ['Connection: upgrade']\n  log_sample_rate: 1.5\n"
    )
    assert c.service.timeout == 86400 and c.service.concurrency == 5000
    assert c.load_balancer is not None and c.load_balancer.timeout_sec == 86400


def test_env_scalars_become_text_and_secrets_are_refs() -> None:
    c = load(
        MINIMAL
        + """\
  env:
    WEBSOCKET_HEARTBEAT_INTERVAL: 25
    ENABLED: true
    RATIO: 0.5
    NAME: chat
    DB_PASSWORD: {secret: db-password}
    API_KEY: {secret: api-key, version: 3}
"""
    )
    env = c.service.env
    assert env["WEBSOCKET_HEARTBEAT_INTERVAL"] == "25" and env["ENABLED"] == "true" and env["RATIO"] == "0.5"
    assert env["DB_PASSWORD"] == SecretRef(secret="db-password", version="latest")
    assert env["API_KEY"] == SecretRef(secret="api-key", version="3")
    assert c.service.plain_env() == {
        "WEBSOCKET_HEARTBEAT_INTERVAL": "25",
        "ENABLED": "true",
        "RATIO": "0.5",
        "NAME": "chat",
    }


def test_cpu_numbers_become_quantities() -> None:
    assert load(MINIMAL + "  cpu: 2\n").service.cpu == "2"
    assert load(MINIMAL + "  cpu: 0.5\n").service.cpu == "500m"
    assert load(MINIMAL + '  cpu: "1000m"\n').service.cpu == "1000m"


def test_ingress_accepts_gcloud_and_enum_spellings() -> None:
    a = load(MINIMAL + "  ingress: internal-and-cloud-load-balancing\n").service
    b = load(MINIMAL + "  ingress: INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER\n").service
    assert a.ingress == b.ingress == "internal-and-cloud-load-balancing"
    assert a.ingress_enum == "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER"


def test_armor_actions_accept_gcloud_spellings() -> None:
    c = load(
        MINIMAL
        + """\
armor:
  policy: pol
  rules:
    - {priority: 10, action: deny-403, src_ip_ranges: ["1.2.3.4/32"]}
    - {priority: 20, action: rate-based-ban, expression: "true", rate_limit: {count: 5, interval_sec: 60,
       exceed_action: deny-429}}
"""
    )
    assert c.armor is not None
    assert [r.action for r in c.armor.rules] == ["deny(403)", "rate_based_ban"]
    assert c.armor.rules[1].rate_limit is not None and c.armor.rules[1].rate_limit.exceed_action == "deny(429)"


# ---- ${VAR} substitution in the image ------------------------------------------------------------


def test_image_substitution_from_the_environment() -> None:
    c = load(
        MINIMAL.replace("r/chat:v1", "gcr.io/${PROJECT_ID}/chat:${SHORT_SHA}"), {"PROJECT_ID": "p", "SHORT_SHA": "abc"}
    )
    assert c.service.image == "gcr.io/p/chat:abc"


def test_missing_substitution_names_the_variable_and_line() -> None:
    err = error_of(MINIMAL.replace("r/chat:v1", "r/chat:${SHORT_SHA}"))
    assert "SHORT_SHA" in err.message and "not set" in err.message
    assert err.line == 5 and err.key == "service.image"
    assert err.message.startswith("cfg.yaml:5: service.image: ")


@pytest.mark.parametrize("image", ["${IMAGE}", "r/chat:${IMAGE}"])
def test_an_empty_image_variable_is_a_config_error_naming_it(image: str) -> None:
    # cloudbuild/*.yaml default `_IMAGE: ""`: a forgotten substitution must not deploy image '' (or 'r/chat:')
    err = error_of(MINIMAL.replace("r/chat:v1", image), {"IMAGE": ""})
    assert "IMAGE is set but empty" in err.message and "${IMAGE}" in err.message
    assert (err.line, err.key) == (5, "service.image")


def test_check_of_a_fleet_config_with_an_empty_image_is_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from deployer.cli import main

    monkeypatch.setenv("IMAGE", "")
    assert main(["check", "-c", str(ROOT / "configs/fleet/netra-backend-europe-west1.yaml")]) == 2
    assert "service.image: environment variable IMAGE is set but empty" in capsys.readouterr().err


def test_an_empty_value_stays_legitimate_for_substitute_itself() -> None:
    # only the image refuses it (substitute's other callers may mean an empty value)
    assert substitute("a${X}b", {"X": ""}) == "ab"
    with pytest.raises(ValueError, match="X is set but empty"):
        substitute("a${X}b", {"X": ""}, empty_ok=False)


def test_recovery_commands_read_an_empty_variable_as_a_placeholder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # rollback/resume/unpin/unlock never use the image: an emergency must not stop at an empty IMAGE
    from deployer.orchestrator.recovery import _load

    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent(MINIMAL.replace("r/chat:v1", "${IMAGE}")))
    monkeypatch.setenv("IMAGE", "")
    assert _load(str(path)).service.image == "unset-image"


STATE = "project: p\nregion: us-central1\nservice: {name: s, image: r/chat:v1}\nstate:\n"


@pytest.mark.parametrize(
    ("state", "line", "key", "says"),
    [
        ("  backend: gcs\n  bucket: gs://deployer-state\n", 6, "state.bucket", "without gs://"),
        ("  backend: gcs\n  bucket: Deployer_State\n", 6, "state.bucket", "is not a valid bucket name"),
        ("  backend: gcs\n  bucket: ab\n", 6, "state.bucket", "3-63 characters"),
        ("  backend: gcs\n  bucket: a..b\n", 6, "state.bucket", "two dots"),
        ("  backend: gcs\n  bucket: goog-state\n", 6, "state.bucket", "'goog'"),
        ("  backend: gcs\n  bucket: deployer-state\n  prefix: /abs/\n", 7, "state.prefix", "starts with '/'"),
        ("  backend: gcs\n  bucket: deployer-state\n  prefix: a//b\n", 7, "state.prefix", "empty, '.' or '..'"),
        ("  backend: gcs\n  bucket: deployer-state\n  prefix: a/../b\n", 7, "state.prefix", "'..'"),
        ("  backend: gcs\n  bucket: deployer-state\n  path: .deployer/\n", 7, "state.path", "backend: local"),
        ("  path: .deployer/\n  prefix: deployer\n", 6, "state.prefix", "backend: gcs"),
    ],
)
def test_state_values_are_checked_at_load(state: str, line: int, key: str, says: str) -> None:
    err = error_of(STATE + state)
    assert (err.line, err.key, says in err.message) == (line, key, True), err.message


def test_a_good_gcs_state_loads_as_written() -> None:
    state = load(STATE + "  backend: gcs\n  bucket: deployer_state.v2\n  prefix: deployer/chat/\n").state
    assert (state.bucket, state.prefix) == ("deployer_state.v2", "deployer/chat/")


def test_check_refuses_a_gs_url_as_state_bucket_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from deployer.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(STATE + "  backend: gcs\n  bucket: gs://deployer-state\n")
    assert main(["check", "-c", str(path)]) == 2
    assert f"{path}:6: state.bucket: 'gs://deployer-state' is a URL" in capsys.readouterr().err


def test_dollar_dollar_is_a_literal_dollar() -> None:
    assert substitute("a$$b${X}", {"X": "1"}) == "a$b1"
    with pytest.raises(ValueError, match="not a variable reference"):
        substitute("${1X}", {})


# ---- errors: file, line, key, allowed values -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "key", "words"),
    [
        (MINIMAL + "  timout: 3600\n", 6, "service.timout", ["unknown key", "did you mean 'timeout'"]),
        (MINIMAL + "  timeout: soon\n", 6, "service.timeout", ["expected seconds", "'3600s'"]),
        (MINIMAL + "  concurrency: true\n", 6, "service.concurrency", ["expected an integer", "boolean"]),
        (MINIMAL + "  concurrency: -1\n", 6, "service.concurrency", [">= 0", "-1"]),
        (MINIMAL + "  port_name: h3\n", 6, "service.port_name", ["must be one of", "'http1'", "'h2c'"]),
        (MINIMAL + "  memory: 4GB\n", 6, "service.memory", ["memory quantity", "'4Gi'"]),
        (MINIMAL + "  env:\n    A: [1]\n", 7, "service.env.A", ["expected a string", "list"]),
        (MINIMAL + "  env:\n    B: {secre: x}\n", 7, "service.env.B.secre", ["unknown key", "did you mean 'secret'"]),
        (
            MINIMAL + "load_balancer:\n  backend_service: bs\n  session_affinity: COOKIE\n",
            8,
            "load_balancer.session_affinity",
            ["must be one of", "GENERATED_COOKIE", "NONE"],
        ),
        (MINIMAL + "rollout:\n  steps: [10, 5]\n", 7, "rollout.steps", ["increase"]),
        (MINIMAL + "rollout:\n  steps: [10, 50]\n", 7, "rollout.steps", ["last step must be 100"]),
        (MINIMAL + "state: {backend: gcs}\n", 6, "state", ["needs a bucket"]),
        (MINIMAL + "gate:\n  public: {min_samples: 50}\n", 7, "gate.public", ["never pass"]),
        (MINIMAL + "gate:\n  public: {expect: '('}\n", 7, "gate.public.expect", ["regular expression"]),
        (MINIMAL + "endpoint: localhost:8480\n", 6, "endpoint", ["http://"]),
        (
            MINIMAL + "armor:\n  policy: pol\n  rules:\n    - {priority: 1, action: allow}\n",
            9,
            "armor.rules[0]",
            ["exactly one of 'expression' or 'src_ip_ranges'"],
        ),
        (
            MINIMAL + "armor:\n  policy: pol\n  rules:\n    - {priority: 1, action: block, expression: 'true'}\n",
            9,
            "armor.rules[0].action",
            ["must be one of", "deny(STATUS)"],
        ),
        (
            MINIMAL + "freeze:\n  - {days: [mon], from: '18:00', to: '20:00', timezone: Mars/Base}\n",
            7,
            "freeze[0].timezone",
            ["unknown time zone"],
        ),
        ("project: p\nregion: r\n", 1, None, ["required key 'service' is missing"]),
        (MINIMAL + "project: q\n", 6, "project", ["duplicate key", "first at line 1"]),
    ],
)
def test_config_errors_name_file_line_key_and_what_is_allowed(
    text: str, line: int, key: str | None, words: list[str]
) -> None:
    err = error_of(text)
    assert err.file == "cfg.yaml" and err.line == line and err.key == key
    prefix = f"cfg.yaml:{line}: " + (f"{key}: " if key else "")
    assert err.message.startswith(prefix), err.message
    for word in words:
        assert word in err.message + (err.hint or ""), (word, err.message, err.hint)
    assert "\n" not in err.message and err.exit_code == 2


def test_unknown_key_hint_lists_the_allowed_keys() -> None:
    err = error_of(MINIMAL + "  timout: 3600\n")
    assert err.hint is not None and "timeout" in err.hint and "concurrency" in err.hint


def test_several_problems_report_the_first_by_line_and_count_the_rest() -> None:
    err = error_of(MINIMAL + "  timeout: soon\n  concurrency: lots\n")
    assert err.line == 6 and "(and 1 more problem)" in err.message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", ["mapping", "empty"]),
        ("- a\n- b\n", ["mapping", "list"]),
        ("just text", ["mapping", "string"]),
        ("a: b: c\n", ["not valid YAML"]),
        ("a: [1, 2\n", ["not valid YAML"]),
        ("a: 1\n---\nb: 2\n", ["not valid YAML"]),
        ("a: !!python/object:os.system x\n", ["not valid YAML"]),
    ],
)
def test_not_a_config_at_all(text: str, words: list[str]) -> None:
    err = error_of(text)
    for word in words:
        assert word in err.message


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="directory"):
        load_config(tmp_path)
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(bad)


def test_line_of_a_finding_key() -> None:
    c = load(
        MINIMAL + "  env:\n    WEBSOCKET_TIMEOUT: 86400\narmor:\n  policy: p\n  rules:\n    - priority: 1\n"
        "      action: allow\n      expression: 'true'\n"
    )
    assert c.line_of("service.env.WEBSOCKET_TIMEOUT") == 7
    assert c.line_of("armor.rules[0].expression") == 13
    assert c.line_of("armor.rules[0].preview") == 11  # not in the file: the rule's own line
    assert c.line_of("service") == 3


@pytest.mark.parametrize("key", ["service.env.A", "armor.rules[0].rate_limit.count", "freeze[2]", "project"])
def test_key_paths_round_trip(key: str) -> None:
    assert format_key(parse_key(key)) == key


# ---- freeze windows (modelled here, honoured by issue 7) -------------------------------------------


def test_freeze_span_window() -> None:
    c = load(
        MINIMAL + "freeze:\n  - {reason: holidays, start: 2025-12-20T00:00:00Z, end: '2026-01-02T00:00:00+00:00'}\n"
    )
    w = c.freeze[0]
    assert w.active(datetime(2025, 12, 25, tzinfo=UTC))
    assert not w.active(datetime(2026, 1, 2, tzinfo=UTC))


def test_freeze_weekly_window_in_its_time_zone_and_over_midnight() -> None:
    # Unquoted 22:00 is YAML 1.1 sexagesimal (1320); it still means 22:00.
    c = load(MINIMAL + "freeze:\n  - {days: [fri], from: 22:00, to: '06:00', timezone: Europe/Berlin}\n")
    w = c.freeze[0]
    friday_late = datetime(2025, 9, 5, 21, 30, tzinfo=UTC)  # 23:30 in Berlin (CEST), a Friday
    saturday_early = datetime(2025, 9, 6, 3, 0, tzinfo=UTC)  # 05:00 Saturday in Berlin
    saturday_noon = datetime(2025, 9, 6, 10, 0, tzinfo=UTC)
    assert w.active(friday_late) and w.active(saturday_early) and not w.active(saturday_noon)


def test_freeze_window_must_be_one_form() -> None:
    err = error_of(MINIMAL + "freeze:\n  - {start: 2025-12-20T00:00:00Z, days: [mon]}\n")
    assert "either start/end" in err.message


@pytest.mark.parametrize("times", ["from: '10:00', to: '10:00'", "from: 10:00, to: '10:00:00'"])
def test_a_weekly_freeze_window_from_a_time_to_the_same_time_is_empty_and_refused(times: str) -> None:
    # from <= t < to holds for no t: such a window would freeze nothing while looking like a freeze
    err = error_of(MINIMAL + f"freeze:\n  - {{days: [thu], {times}}}\n")
    assert (err.line, err.key) == (7, "freeze[0]")
    assert "from 10:00 to the same time is empty" in err.message


# ---- property tests: whatever comes in, only ConfigError (or a config) comes out -------------------

yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20))
yaml_values = st.recursive(
    yaml_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
KEYS = [
    "project", "region", "service", "name", "image", "env", "timeout", "concurrency", "cpu", "memory",
    "load_balancer", "backend_service", "custom_request_headers", "armor", "policy", "rules", "priority",
    "action", "expression", "rate_limit", "rollout", "steps", "gate", "public", "state", "backend", "freeze",
]  # fmt: skip
config_like = st.recursive(
    yaml_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), children, max_size=5),
    ),
    max_leaves=25,
)


def _only_config_errors(text: str) -> None:
    try:
        result = parse_config(text, file="fuzz.yaml", environ={})
    except ConfigError as exc:
        assert exc.message.startswith("fuzz.yaml")
        assert "Traceback" not in exc.message and "\n" not in exc.message
        return
    assert isinstance(result, DeployConfig)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_random_text_gives_only_config_errors(text: str) -> None:
    _only_config_errors(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config_like)
def test_random_structures_as_yaml_give_only_config_errors(doc: object) -> None:
    _only_config_errors(yaml.safe_dump(doc, allow_unicode=True))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(yaml_values)
def test_random_structures_as_data_give_only_config_errors(doc: object) -> None:
    try:
        config_from_data(doc, environ={})
    except ConfigError as exc:
        assert exc.message.startswith("<config>") and "\n" not in exc.message


BASE_DOC = yaml.safe_load((ROOT / "configs" / "staging.yaml").read_text())


def _paths(doc: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_one_wrong_value_in_a_real_config_names_its_line(data: st.DataObject) -> None:
    """Replace one value of configs/staging.yaml with junk: the error (if any) names a line in the file."""
    import copy

    doc = copy.deepcopy(BASE_DOC)
    path = data.draw(st.sampled_from(_paths(doc)))
    junk = data.draw(yaml_values)
    node = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = junk
    text = yaml.safe_dump(doc, sort_keys=False)
    try:
        parse_config(text, file="mut.yaml", environ={})
    except ConfigError as exc:
        assert exc.line is not None and 1 <= exc.line <= text.count("\n") + 1
        assert exc.message.startswith(f"mut.yaml:{exc.line}: ")
