"""Small pure pieces of the deploy: the candidate's revision name and the config digest."""

from __future__ import annotations

import re

from deployer.config import config_from_data
from deployer.desired import desired_state
from deployer.orchestrator.deploy import config_digest, revision_name


def test_revision_names_come_from_the_deploy_id_and_fit_63_characters():
    assert revision_name("chat-backend", "d-20261126-152030-ab12") == "chat-backend-11261520-ab12"
    longest = "s" + "x" * 48  # a service id "must contain fewer than 50 characters" (gcp-facts §4.5)
    name = revision_name(longest, "d-20261231-235959-ffff")
    assert len(name) == 63 and re.fullmatch(r"[a-z][a-z0-9-]*[a-z0-9]", name)
    # deterministic: a resumed deploy finds its revision again
    assert revision_name("chat", "d-20261126-152030-ab12") == revision_name("chat", "d-20261126-152030-ab12")


def _digest(env: dict[str, str]) -> str:
    config = config_from_data({"project": "p", "region": "r", "service": {"name": "chat", "image": "i", "env": env}})
    return config_digest(desired_state(config))


def test_the_config_digest_never_depends_on_a_secret_value():
    assert _digest({"DB_PASSWORD": "one"}) == _digest({"DB_PASSWORD": "two"})
    assert _digest({"MODE": "one"}) != _digest({"MODE": "two"})
    assert _digest({}).startswith("sha256:")
