"""The Cloud Run rules on their own (pure functions: no HTTP, no world), with property tests."""

from __future__ import annotations

from datetime import timedelta

import pytest
from google.cloud import run_v2
from hypothesis import given
from hypothesis import strategies as st

from deployer import facts
from deployer.localcloud.api.run import rules

LATEST, REVISION = rules.LATEST, rules.REVISION
LABEL = st.from_regex(r"[a-z]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
SERVICE_ID = st.from_regex(r"[a-z]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)


def target(type_=REVISION, revision="svc-1", percent=0, tag=""):
    return run_v2.TrafficTarget(type_=type_, revision=revision if type_ == REVISION else "", percent=percent, tag=tag)


@st.composite
def percents_summing_to_100(draw):
    n = draw(st.integers(1, 6))
    cuts = sorted(draw(st.lists(st.integers(0, 100), min_size=n - 1, max_size=n - 1)))
    return [b - a for a, b in zip([0, *cuts], [*cuts, 100], strict=True)]


@st.composite
def valid_traffic(draw):
    service_id = draw(SERVICE_ID)
    percents = draw(percents_summing_to_100())
    room = facts.RUN_TAG_PLUS_SERVICE_MAX - len(service_id)
    tags = draw(st.lists(LABEL.filter(lambda t: len(t) <= room), max_size=len(percents), unique=True))
    tags += [""] * (len(percents) - len(tags))
    kinds = draw(st.lists(st.sampled_from([LATEST, REVISION]), min_size=len(percents), max_size=len(percents)))
    traffic = [
        target(kind, f"{service_id}-{i}", pct, tag)
        for i, (kind, pct, tag) in enumerate(zip(kinds, percents, tags, strict=True))
    ]
    return service_id, traffic


@given(valid_traffic())
def test_valid_traffic_has_no_problems(case):
    service_id, traffic = case
    assert rules.traffic_problems(traffic, service_id) == []


@given(valid_traffic(), st.integers(-100, 100).filter(lambda d: d != 0))
def test_percents_that_do_not_sum_to_100_are_rejected(case, delta):
    service_id, traffic = case
    traffic[0].percent = traffic[0].percent + delta
    problems = rules.traffic_problems(traffic, service_id)
    assert any(p.field == "service.traffic" and "add up to 100" in p.description for p in problems)


@given(valid_traffic(), st.integers(101, 10_000))
def test_a_percent_above_100_is_rejected_even_if_the_sum_is_100(case, big):
    service_id, traffic = case
    traffic.append(target(LATEST, percent=big))
    traffic.append(target(LATEST, percent=-big))
    fields = {p.field for p in rules.traffic_problems(traffic, service_id)}
    assert f"service.traffic[{len(traffic) - 2}].percent" in fields
    assert f"service.traffic[{len(traffic) - 1}].percent" in fields


@given(valid_traffic(), LABEL)
def test_a_repeated_tag_is_rejected(case, tag):
    service_id, traffic = case
    traffic = [t for t in traffic if t.tag != tag]
    traffic += [target(LATEST, percent=0, tag=tag), target(LATEST, percent=0, tag=tag)]
    if len(tag) + len(service_id) > facts.RUN_TAG_PLUS_SERVICE_MAX:
        return
    problems = rules.traffic_problems(traffic, service_id)
    assert any("used by more than one target" in p.description for p in problems)


@given(SERVICE_ID, st.integers(1, 30))
def test_tag_plus_service_over_46_gives_googles_exact_message(service_id, extra):
    tag = "t" * max(1, facts.RUN_TAG_PLUS_SERVICE_MAX - len(service_id) + extra)
    problems = rules.traffic_problems([target(LATEST, percent=100, tag=tag)], service_id)
    assert [p.message for p in problems] == [
        f"spec.traffic.tag: traffic tag '{tag}' and service name '{service_id}' together are too long. "
        "Combined traffic tag and service name cannot exceed 46 characters."
    ]


@given(st.text(min_size=1, max_size=12).filter(lambda t: not rules.DNS_LABEL.match(t)))
def test_a_tag_that_is_not_a_dns_label_is_rejected(tag):
    problems = rules.traffic_problems([target(LATEST, percent=100, tag=tag)], "svc")
    assert any("valid DNS label" in p.description for p in problems)


def test_empty_traffic_means_100_percent_latest_and_untyped_targets_are_read_by_revision():
    assert [(t.type_, t.percent) for t in rules.normalize_traffic([])] == [(LATEST, 100)]
    typed = rules.normalize_traffic([run_v2.TrafficTarget(revision="svc-1", percent=100), run_v2.TrafficTarget()])
    assert [t.type_ for t in typed] == [REVISION, LATEST]
    assert rules.traffic_problems([], "svc") == []


def test_missing_revisions_and_resolution():
    traffic = [target(LATEST, percent=90), target(REVISION, "svc-2", 10, tag="canary")]
    assert rules.missing_revisions(traffic, {"svc-1"}) == ["svc-2"]
    statuses = rules.resolve_traffic(traffic, "svc-1", {"canary": "https://canary---svc"})
    assert [(s.type_, s.revision, s.percent, s.uri) for s in statuses] == [
        (LATEST, "svc-1", 90, ""),
        (REVISION, "svc-2", 10, "https://canary---svc"),
    ]


# ---- preconditions ---------------------------------------------------------------------------------


@given(st.text(max_size=16))
def test_no_etag_or_the_current_etag_never_conflicts(current):
    assert not rules.etag_conflicts("", current)
    assert not rules.etag_conflicts(current, current)


@given(st.text(min_size=1, max_size=16), st.text(max_size=16))
def test_any_other_etag_conflicts(given_etag, current):
    assert rules.etag_conflicts(given_etag, current) == (given_etag != current)


# ---- names and quantities --------------------------------------------------------------------------


@given(SERVICE_ID)
def test_dns_label_service_ids_under_50_are_accepted(service_id):
    assert rules.service_id_problem(service_id) is None


@given(st.text(max_size=60).filter(lambda s: not (rules.DNS_LABEL.match(s) and len(s) < 50)))
def test_other_service_ids_are_rejected_with_googles_words(service_id):
    problem = rules.service_id_problem(service_id)
    assert problem is not None and problem.description == rules.SERVICE_ID_DESCRIPTION


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("svc-blue", True),
        ("blue", False),
        ("svc-", False),
        ("svc-Blue", False),
        ("svc-" + "a" * 59, True),
        ("svc-" + "a" * 60, False),
    ],
)
def test_revision_names(name, ok):
    assert (rules.revision_name_problem(name, "svc") is None) is ok


@pytest.mark.parametrize(
    ("text", "cpu"),
    [("1", 1.0), ("1000m", 1.0), ("500m", 0.5), ("0.25", 0.25), ("2", 2.0), ("x", None), ("1.5m", 0.0015)],
)
def test_parse_cpu(text, cpu):
    assert rules.parse_cpu(text) == cpu


@pytest.mark.parametrize(
    ("text", "ok"),
    [("1", True), ("2000m", True), ("8", True), ("3", False), ("1.5", False), ("0", False), ("250m", True)],
)
def test_cpu_values(text, ok):
    assert (rules.cpu_problem(text) is None) is ok


def test_parse_memory():
    assert rules.parse_memory("512Mi") == 512 * 2**20
    assert rules.parse_memory("2Gi") == 2 * 2**30
    assert rules.parse_memory("1G") == 10**9
    assert rules.parse_memory("lots") is None


@pytest.mark.parametrize(
    ("key", "reserved"),
    [
        ("run.googleapis.com/x", True),
        ("x.run.googleapis.com/y", True),
        ("serving.knative.dev/creator", True),
        ("team", False),
        ("example.com/run", False),
    ],
)
def test_reserved_label_namespaces(key, reserved):
    assert rules.is_reserved_key(key) is reserved


# ---- template defaults -------------------------------------------------------------------------------

CONTAINERS = st.builds(
    run_v2.Container,
    image=st.just("gcr.io/p/app:1"),
    ports=st.lists(st.builds(run_v2.ContainerPort, container_port=st.integers(0, 9000)), max_size=1),
)


@given(
    st.builds(
        run_v2.RevisionTemplate,
        containers=st.lists(CONTAINERS, min_size=1, max_size=2),
        max_instance_request_concurrency=st.integers(0, 1000),
        timeout=st.one_of(st.none(), st.integers(0, 3600).map(lambda s: timedelta(seconds=s))),
    )
)
def test_normalizing_a_template_twice_changes_nothing_more(template):
    once = rules.normalize_template(template, service_account="sa")
    assert rules.normalize_template(once, service_account="sa") == once
    assert once.timeout.total_seconds() >= 1 and once.max_instance_request_concurrency >= 1
    assert once.scaling.max_instance_count == 100 and once.service_account == "sa"


def test_concurrency_defaults_to_1_below_one_cpu():
    t = run_v2.RevisionTemplate(
        containers=[
            run_v2.Container(image="x", resources=run_v2.ResourceRequirements(limits={"cpu": "500m"}, cpu_idle=True))
        ]
    )
    normal = rules.normalize_template(t, service_account="sa")
    assert normal.max_instance_request_concurrency == 1
    assert dict(normal.containers[0].resources.limits) == {"cpu": "500m", "memory": "512Mi"}
    assert rules.template_problems(normal) == []
