"""JudgePool across a judge outage (the in-process stand-in judge answering 503 for a while; no
Ray): no sample is returned unscored, each is scored once more after the outage, and an outage
past judge.max_outage_s is a ``JudgeOutageError`` with its one-line cause."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from actors.judge_pool import MAX_OUTAGE_ROUNDS, JudgePool
from rewards.client.outage import JudgeOutageError
from rewards.config import RewardConfig, RewardTermConfig
from rewards.judge.config import JudgeConfig
from rewards.stand_in.judge_server import JudgeServer, ServerSettings
from tests.actors.test_judge_pool import rollout, score_once  # rollout: groups of 4, as GROUP says

DESCRIPTION = "A bakery in Portland that sells sourdough bread and vegan pastries."
NAMES = [f"portlandbake{i}.com" for i in range(16)]
GROUP = 4


def pool(base_url: str, **judge_overrides: object) -> JudgePool:
    """A pool whose client gives up on a sample quickly: two attempts, circuits open after two
    failures and probe after 0.1 s, so an outage of a second fails every sample it meets."""
    judge = JudgeConfig(
        base_url=base_url,
        cache_size=0,  # every score is a request: a sample scored again is asked again
        retry={"max_attempts": 2, "initial_backoff_s": 0.01, "max_backoff_s": 0.02, "deadline_s": 5.0},
        circuit_breaker={"failure_threshold": 2, "cooldown_s": 0.1},
        **judge_overrides,
    )
    return JudgePool(judge, RewardConfig(terms=[RewardTermConfig(name="judge", weight=1.0)]), SecretStr("k"))


def test_samples_an_outage_failed_are_kept_and_scored_once_it_is_over() -> None:
    settings = ServerSettings(outage_after_requests=4, outage_s=1.0)
    with JudgeServer(settings=settings) as srv:
        judge_pool = pool(srv.base_url)
        result = score_once(judge_pool, rollout(NAMES))
        faults = srv.server.stats()["faults"]
    assert faults["outage"] >= 2  # the outage happened, and hit samples
    assert [s.sample.completion_text for s in result.scored] == NAMES  # one each, in order
    assert all(s.reward is not None and s.reward_error is None for s in result.scored)
    assert result.judge_failures == 0
    rescored = result.judge_metrics["judge/outage_rescored"]
    assert 1 <= rescored <= len(NAMES) - 4  # only samples the outage met: the first 4 were answered
    assert result.judge_requests > len(NAMES)  # the requests of both tries are counted
    stats = judge_pool.stats()
    assert stats["unscored"] == 0 and stats["outages"] == 1 and stats["outage_rescored"] == rescored


def test_in_group_mode_the_whole_group_of_a_failed_sample_is_scored_again() -> None:
    settings = ServerSettings(outage_after_requests=2, outage_s=1.0)
    with JudgeServer(settings=settings) as srv:
        result = score_once(pool(srv.base_url, mode="group"), rollout(NAMES))
    assert all(s.reward is not None for s in result.scored) and result.judge_failures == 0
    rescored = result.judge_metrics["judge/outage_rescored"]
    assert rescored >= GROUP and rescored % GROUP == 0  # whole groups only


def test_an_outage_past_max_outage_s_raises_its_cause() -> None:
    settings = ServerSettings(outage_after_requests=0, outage_s=600.0)
    with JudgeServer(settings=settings) as srv:
        with pytest.raises(JudgeOutageError, match=r"^judge unreachable for \d+ s \(judge.max_outage_s=0.5\)"):
            score_once(pool(srv.base_url, max_outage_s=0.5), rollout(NAMES[:4]))


def test_a_sample_whose_own_requests_keep_failing_is_left_unscored_after_the_rounds() -> None:
    """Every judge request is answered 503 while the probe is answered (400: the server is there):
    each round the judge looks back, the sample fails again and trips the breaker; after
    ``MAX_OUTAGE_ROUNDS`` rounds it is left unscored with its cause, the call does not hang."""
    with JudgeServer(settings=ServerSettings(fail_rate=1.0, fail_status=503)) as srv:
        result = score_once(pool(srv.base_url), rollout(NAMES[:1]))
    assert result.scored[0].reward is None and result.scored[0].reward_error in {"judge_http_503", "judge_circuit_open"}
    assert result.judge_failures == 1 and result.judge_metrics["judge/outage_rescored"] == MAX_OUTAGE_ROUNDS


def test_a_call_waits_for_the_judge_before_sending_anything() -> None:
    """A call arriving while the judge is down sends no sample's request until it answers."""
    settings = ServerSettings(outage_after_requests=0, outage_s=1.0)
    with JudgeServer(settings=settings) as srv:
        judge_pool = pool(srv.base_url)
        judge_pool._composer.judge.client.outage.record_failure("judge_http_503", all_circuits_open=True)
        result = score_once(judge_pool, rollout(NAMES[:4]))
        faults = srv.server.stats()["faults"]
    assert all(s.reward is not None for s in result.scored)
    assert result.judge_requests == 4 and result.judge_metrics["judge/outage_rescored"] == 0
    assert faults["outage"] >= 1  # only probes met the outage
