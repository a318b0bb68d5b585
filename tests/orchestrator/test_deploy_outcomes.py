"""Pure pieces of how a deploy refuses or ends: the drift refusal's hint, the closing summary of an
infrastructure-only deploy, the refusal over a journal that must be resumed first, and the error a deploy
stops with when its journal cannot be written."""

from __future__ import annotations

from pathlib import Path

from deployer.orchestrator import traffic
from deployer.orchestrator.deploy import drift_hint, resume_first, success_summary
from tests.orchestrator.resume_support import DEPLOY, KEY, journal
from tests.orchestrator.test_resume_retry import deploy_whose_rollback_left_two


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


def test_a_deploy_is_refused_over_an_incomplete_rollback_that_resume_would_retry(tmp_path: Path):
    j, _ = deploy_whose_rollback_left_two(tmp_path)
    refusal = resume_first(j.state, newest_id=DEPLOY, this_deploy="d-20261126-160000-ffff", config_file="prod.yaml")
    assert refusal is not None and refusal.exit_code == 4
    assert refusal.message == (
        f"{KEY}: deploy {DEPLOY} by ci@worker pid 9 ended rollback_incomplete: armor.rule 50, "
        "compute.backendService api-bs may still be changed; deploying now would build on what it left"
    )
    assert refusal.hint == "run `deployer resume -c prod.yaml` to retry its rollback first"
    # without the lock (--if-changed with nothing to change) it is refused all the same
    assert resume_first(j.state, newest_id=DEPLOY, this_deploy=None, config_file="c", locked=False) is not None


def test_an_incomplete_rollback_someone_acted_on_since_refuses_nothing(tmp_path: Path):
    j, _ = deploy_whose_rollback_left_two(tmp_path)
    # an unpin or unlock journal came after it: resume would not retry it, so neither does a deploy wait for it
    later = "d-20261126-150000-beef"
    assert resume_first(j.state, newest_id=later, this_deploy=None, config_file="c") is None


def test_a_journal_that_never_finished_is_refused_only_under_the_lock(tmp_path: Path):
    j = journal(tmp_path)
    j.phase("apply")
    refusal = resume_first(j.state, newest_id=DEPLOY, this_deploy="d-20261126-160000-ffff", config_file="c.yaml")
    assert refusal is not None and refusal.exit_code == 4 and "never finished (its process died)" in refusal.message
    assert refusal.hint == "run `deployer resume -c c.yaml` to finish or roll it back first"
    # without the lock it may be a deploy still running
    assert resume_first(j.state, newest_id=DEPLOY, this_deploy=None, config_file="c", locked=False) is None
    j.finish("failed", "failed before changing anything")
    assert resume_first(j.state, newest_id=DEPLOY, this_deploy=None, config_file="c") is None
