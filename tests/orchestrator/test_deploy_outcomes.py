"""Pure pieces of how a deploy refuses or ends: the drift refusal's hint, the closing summary of an
infrastructure-only deploy, the refusal over a journal that must be resumed first, and the error a deploy
stops with when its journal cannot be written."""

from __future__ import annotations

from deployer.orchestrator import traffic
from deployer.orchestrator.deploy import drift_hint, success_summary


def _drift(live: dict[str, int]) -> traffic.Drift:
    last = traffic.LastDeploy("annotations", "d-20261126-120000-abcd", {"chat-backend-new": 100})
    return traffic.Drift(expected={"chat-backend-new": 100}, live=live, last=last)


def test_the_drift_hint_says_how_to_adopt_what_serves_now_and_names_no_internal_reference():
    hint = drift_hint(_drift({"chat-backend-old": 100}), "configs/prod.yaml")
    assert "`deployer rollback -c configs/prod.yaml --to chat-backend-old --reason ...`" in hint
    assert "--unpin" in hint and "move traffic back to what the last deploy left" in hint
    assert "issue" not in hint
    # a split made by hand: the revision with the most traffic is the one a rollback would keep
    assert "--to chat-backend-b " in drift_hint(_drift({"chat-backend-a": 10, "chat-backend-b": 90}), "c.yaml")


def test_an_infrastructure_only_deploy_says_traffic_stayed_where_it_was():
    served = [traffic.Served("chat-backend-old", 100, "previous")]
    assert success_summary(True, "chat-backend-new", served) == "deployed chat-backend-new"
    assert success_summary(False, "chat-backend-new", served) == (
        "applied infrastructure; traffic unchanged on chat-backend-old"
    )
    split = [traffic.Served("chat-backend-a", 90), traffic.Served("chat-backend-b", 10, "canary")]
    assert success_summary(False, "chat-backend-new", split) == (
        "applied infrastructure; traffic unchanged on chat-backend-a 90%, chat-backend-b 10%"
    )
