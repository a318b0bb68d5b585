"""Pure routing: URL map host/path rules, serverless NEG masks, Cloud Run hosts, the traffic picker."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest

from deployer.localcloud.runtime import routing

BS = "https://www.googleapis.com/compute/v1/projects/p/global/backendServices/"


def test_parse_ref_understands_full_partial_and_bare_references():
    assert routing.parse_ref(BS + "api") == routing.Ref("p", None, "backendServices", "api")
    neg = "https://www.googleapis.com/compute/v1/projects/p/regions/us-central1/networkEndpointGroups/n"
    assert routing.parse_ref(neg) == routing.Ref("p", "us-central1", "networkEndpointGroups", "n")
    assert routing.parse_ref("global/backendServices/api") == routing.Ref(None, None, "backendServices", "api")
    assert routing.parse_ref("api", "backendServices") == routing.Ref(None, None, "backendServices", "api")


@pytest.mark.parametrize(
    ("pattern", "host", "expected"),
    [
        ("*", "anything.example:81", True),
        ("api.example.com", "api.example.com", True),
        ("api.example.com", "API.example.com:8080", True),  # a pattern without port ignores the port
        ("api.example.com:8080", "api.example.com:8080", True),
        ("api.example.com:8080", "api.example.com:9090", False),
        ("*.example.com", "a.b.example.com", True),
        ("*.example.com", "example.com", False),
        ("*-staging.example.com", "chat-staging.example.com", True),
        ("api.example.com", "other.example.com", False),
    ],
)
def test_host_patterns(pattern, host, expected):
    assert routing.host_pattern_matches(pattern, host) is expected


URL_MAP = {
    "defaultService": BS + "default",
    "hostRules": [
        {"hosts": ["*"], "pathMatcher": "any"},
        {"hosts": ["*.example.com"], "pathMatcher": "wild"},
        {"hosts": ["api.example.com"], "pathMatcher": "exact"},
    ],
    "pathMatchers": [
        {"name": "any", "defaultService": BS + "any"},
        {"name": "wild", "defaultService": BS + "wild"},
        {
            "name": "exact",
            "defaultService": BS + "api",
            "pathRules": [
                {"paths": ["/ws", "/ws/*"], "service": BS + "ws"},
                {"paths": ["/ws/admin/*"], "service": BS + "admin"},
                {"paths": ["/static/"], "service": BS + "static-exact"},
                {"paths": ["/static/*"], "service": BS + "static"},
            ],
        },
    ],
}


def test_exact_host_beats_wildcard_beats_star():
    assert routing.select_path_matcher(URL_MAP, "api.example.com") == "exact"
    assert routing.select_path_matcher(URL_MAP, "www.example.com") == "wild"
    assert routing.select_path_matcher(URL_MAP, "127.0.0.1:8080") == "any"


@pytest.mark.parametrize(
    ("path", "service"),
    [
        ("/ws", "ws"),
        ("/ws/", "ws"),
        ("/ws/room?x=1", "ws"),  # the query is not part of the path
        ("/ws/admin/x", "admin"),  # the longest match wins
        ("/wsx", "api"),  # /ws/* does not match /wsx, /ws is exact
        ("/static/", "static-exact"),  # exact beats a wildcard of the same length
        ("/static/a.css", "static"),
        ("/", "api"),
    ],
)
def test_path_rules_longest_match_then_default(path, service):
    assert routing.route(URL_MAP, "api.example.com", path) == BS + service


def test_unmatched_host_uses_the_url_map_default():
    url_map = {"defaultService": BS + "default", "hostRules": [{"hosts": ["a.com"], "pathMatcher": "m"}]}
    assert routing.route(url_map, "b.com", "/ws") == BS + "default"
    assert routing.route({"hostRules": []}, "b.com", "/") is None


def test_route_rules_go_by_priority():
    matcher = {
        "defaultService": BS + "default",
        "routeRules": [
            {"priority": 20, "matchRules": [{"prefixMatch": "/"}], "service": BS + "catchall"},
            {"priority": 10, "matchRules": [{"fullPathMatch": "/ws"}], "service": BS + "ws"},
        ],
    }
    assert routing.match_path(matcher, "/ws") == BS + "ws"
    assert routing.match_path(matcher, "/other") == BS + "catchall"


@pytest.mark.parametrize(
    ("mask", "host", "path", "expected"),
    [
        ("<tag>.domain.com/<service>", "foo1.domain.com", "/bar1", routing.RunTarget("bar1", "foo1")),
        ("<tag>.domain.com/<service>", "foo2.domain.com:8080", "/bar2/x?y", routing.RunTarget("bar2", "foo2")),
        ("example.com/<service>", "example.com", "/chat/ws", routing.RunTarget("chat")),
        ("<service>.example.com", "chat.example.com", "/ws", routing.RunTarget("chat")),
        ("example.com/<service>", "other.com", "/chat", None),
        ("example.com/<service>", "example.com", "/", None),
    ],
)
def test_url_masks(mask, host, path, expected):
    assert routing.parse_url_mask(mask, host, path) == expected


def test_neg_target_prefers_explicit_fields_and_falls_back_to_the_mask():
    assert routing.neg_target({"service": "chat", "tag": "green"}, "x", "/") == routing.RunTarget("chat", "green")
    assert routing.neg_target({"urlMask": "example.com/<service>"}, "example.com", "/chat") == routing.RunTarget("chat")
    assert routing.neg_target({"urlMask": "example.com/<service>"}, "nope.com", "/chat") is None


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("chat-backend.localhost:8080", routing.RunTarget("chat-backend")),
        ("green---chat-backend.localhost", routing.RunTarget("chat-backend", "green")),
        ("GREEN---Chat.localhost:1", routing.RunTarget("chat", "green")),
        ("127.0.0.1:8080", None),
        ("a.b.localhost", None),
        ("---chat.localhost", None),
    ],
)
def test_run_hosts(host, expected):
    assert routing.parse_run_host(host) == expected


def status(revision="", percent=0, tag="", latest=False):
    kind = routing.LATEST if latest else "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION"
    return SimpleNamespace(type_=SimpleNamespace(name=kind), revision=revision, percent=percent, tag=tag)


def test_split_targets_resolve_latest_merge_and_drop_zero():
    statuses = [status(percent=60, latest=True), status("r1", 40), status("r2", 0, tag="green"), status("r3", 0)]
    assert routing.split_targets(statuses, "projects/p/locations/l/services/s/revisions/r3") == [("r3", 60), ("r1", 40)]
    twice = [{"revision": "a", "percent": 50}, {"revision": "a", "percent": 50}]
    assert routing.split_targets(twice, "") == [("a", 100)]
    assert routing.tagged_revision(statuses, "green", "r3") == "r2"
    assert routing.tagged_revision(statuses, "blue", "r3") is None
    assert routing.serving_revisions(statuses, "r3") == {"r3", "r1", "r2"}


def test_pick_revision_is_weighted_and_reproducible():
    targets = [("blue", 10), ("green", 90)]
    n = 10_000
    picks = [routing.pick_revision(targets, random.Random(5)) for _ in range(3)]
    assert len(set(picks)) == 1  # same seed, same first pick
    rng = random.Random(11)
    blue = sum(routing.pick_revision(targets, rng) == "blue" for _ in range(n))
    sd = math.sqrt(n * 0.1 * 0.9)
    assert abs(blue - n * 0.1) < 5 * sd
    assert routing.pick_revision([("only", 100)], rng) == "only"
    assert routing.pick_revision([], rng) is None
