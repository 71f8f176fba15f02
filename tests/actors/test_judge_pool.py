"""JudgePool against the in-process heuristic judge server (no Ray)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from pydantic import SecretStr

from actors.judge_pool import JudgePool
from actors.messages import PromptItem, RolloutResult, Sample, ScoreResult
from rewards.client.config import RetryConfig
from rewards.config import RewardConfig, RewardTermConfig
from rewards.errors import JudgeUnreachableError
from rewards.judge.config import JudgeConfig
from rewards.metrics import aggregate_judge_metrics
from rewards.stand_in.judge_server import JudgeServer, ServerSettings, injects_failure

SECRET = "sk-pool-test-SHOULD-NOT-APPEAR-99"
DESCRIPTION = "A bakery in Portland that sells sourdough bread and vegan pastries."


def rollout(completions: list[str], group_size: int = 4) -> RolloutResult:
    samples = []
    for i, text in enumerate(completions):
        prompt = PromptItem(
            prompt_id=f"p{i // group_size}", row=i // group_size, prompt_text=DESCRIPTION, prompt_token_ids=[1, 2, 3]
        )
        samples.append(
            Sample(
                prompt=prompt,
                group_id=f"g{i // group_size}",
                group_index=i % group_size,
                completion_text=text,
                completion_token_ids=[5, 6],
                sampling_logprobs=[-0.1, -0.2],
                policy_version=0,
                truncated=False,
            )
        )
    return RolloutResult(batch_index=7, samples=samples, generate_s=1.5, worker_id=0)


def pool(
    base_url: str, key: str = "k", terms: list[tuple[str, float]] | None = None, **judge_overrides: object
) -> JudgePool:
    reward = RewardConfig(terms=[RewardTermConfig(name=n, weight=w) for n, w in (terms or [("judge", 1.0)])])
    judge_overrides = {"retry": RetryConfig(max_attempts=2, initial_backoff_s=0.01), **judge_overrides}
    return JudgePool(JudgeConfig(base_url=base_url, **judge_overrides), reward, SecretStr(key))


def score_once(judge_pool: JudgePool, result: RolloutResult) -> ScoreResult:
    """Score in a fresh event loop, then close the pool's client."""

    async def run() -> ScoreResult:
        try:
            return await judge_pool.score(result)
        finally:
            await judge_pool.close()

    return asyncio.run(run())


NAMES = [f"portlandbake{i}.com" for i in range(16)]


def test_all_samples_scored_in_order() -> None:
    with JudgeServer() as srv:
        judge_pool = pool(srv.base_url, terms=[("judge", 1.0), ("domain_format", 0.5)])
        result = score_once(judge_pool, rollout(NAMES + ["Blocked"]))
    assert [s.sample.completion_text for s in result.scored] == NAMES + ["Blocked"]
    assert result.batch_index == 7 and result.generate_s == 1.5 and result.judge_s >= 0
    assert result.judge_requests == 17 and result.judge_failures == 0
    for scored in result.scored:
        assert scored.reward is not None and scored.reward_error is None
        terms = scored.terms
        assert scored.reward == pytest.approx(terms["judge"] + 0.5 * terms["domain_format"])
        assert set(terms) == {
            "judge",
            "domain_format",
            "judge/relevance",
            "judge/memorability",
            "judge/length",
            "judge/inappropriate",
            "judge/blocked",
        }
    assert result.scored[-1].terms["domain_format"] == 0.0
    assert result.scored[-1].terms["judge/blocked"] == 1.0 and result.scored[-1].terms["judge"] == -0.5
    stats = judge_pool.stats()
    assert {
        k: stats[k]
        for k in (
            "samples",
            "scored",
            "unscored",
            "judge_requests",
            "judge_failures",
            "judge_retries",
            "failures_by_cause",
        )
    } == {
        "samples": 17,
        "scored": 17,
        "unscored": 0,
        "judge_requests": 17,
        "judge_failures": 0,
        "judge_retries": 0,
        "failures_by_cause": {},
    }
    metrics = result.judge_metrics
    assert metrics["judge/retries"] == 0 and metrics["judge/cache_hits"] == 0 and metrics["judge/rule_gated"] == 0
    assert 1 <= metrics["judge/inflight"] <= 17
    assert metrics["term/judge/failures"] == 0 and metrics["term/domain_format/failures"] == 0
    assert metrics["term/judge/seconds"] > 0 and metrics["term/judge/llm_calls"] == 17
    step = aggregate_judge_metrics([metrics])
    assert 0 < step["judge/latency_p50_s"] <= step["judge/latency_p95_s"]


def test_failed_samples_are_unscored_never_zero(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    expected_failed = {n for n in NAMES if injects_failure(n, 0.4)}
    assert 0 < len(expected_failed) < len(NAMES)
    with JudgeServer(settings=ServerSettings(fail_rate=0.4, api_key=SecretStr(SECRET))) as srv:
        judge_pool = pool(srv.base_url, key=SECRET)
        result = score_once(judge_pool, rollout(NAMES))
    for scored in result.scored:
        if scored.sample.completion_text in expected_failed:
            assert scored.reward is None and scored.reward_error == "judge_http_500"
            assert scored.terms == {"judge": None}
        else:
            assert scored.reward is not None and scored.reward > 0 and scored.reward_error is None
    assert result.judge_requests == len(NAMES) + len(expected_failed)  # each failure was retried once
    assert result.judge_failures == len(expected_failed)
    assert result.judge_metrics["judge/failures/judge_http_500"] == len(expected_failed)
    assert result.judge_metrics["judge/retries/judge_http_500"] == len(expected_failed)
    stats = judge_pool.stats()
    assert stats["failures_by_cause"] == {"judge_http_500": len(expected_failed)}
    assert stats["unscored"] == stats["judge_failures"] == len(expected_failed)
    warnings = [r for r in caplog.records if r.name == "actors.judge_pool" and r.levelno == logging.WARNING]
    assert len(warnings) == len(expected_failed)
    assert "prompt_id=p" in warnings[0].getMessage() and "cause=judge_http_500" in warnings[0].getMessage()
    assert SECRET not in caplog.text


def test_timeouts_are_unscored_and_counted() -> None:
    with JudgeServer(settings=ServerSettings(latency_s=2.0)) as srv:  # breakers never open: not an outage
        judge_pool = pool(srv.base_url, timeout_s=0.2, circuit_breaker={"failure_threshold": 100})
        result = score_once(judge_pool, rollout(NAMES[:4]))
    assert [s.reward for s in result.scored] == [None] * 4
    assert {s.reward_error for s in result.scored} == {"judge_timeout"}
    assert result.judge_failures == 4 and judge_pool.stats()["failures_by_cause"] == {"judge_timeout": 4}
    assert result.judge_metrics["judge/failures/judge_timeout"] == 4


def test_rule_failure_is_not_a_judge_failure() -> None:
    with JudgeServer(settings=ServerSettings(fail_rate=1.0)) as srv:
        judge_pool = pool(srv.base_url, terms=[("judge", 0.0), ("domain_format", 1.0)])
        result = score_once(judge_pool, rollout(NAMES[:2]))
    # The zero-weight judge failed, but the weighted rule scored every sample.
    assert [s.reward for s in result.scored] == [1.0, 1.0]
    assert result.judge_requests == 4 and result.judge_failures == 0
    assert (
        result.judge_metrics["term/judge/failures"] == 2 and "judge/failures/judge_http_500" not in result.judge_metrics
    )


def test_empty_rollout() -> None:
    result = score_once(pool("http://127.0.0.1:9/v1"), rollout([]))
    assert result.scored == [] and result.judge_requests == 0 and result.judge_failures == 0


def test_check(refused_port: int) -> None:
    with JudgeServer() as srv:
        asyncio.run(pool(srv.base_url).check())
    url = f"http://127.0.0.1:{refused_port}/v1"
    with pytest.raises(JudgeUnreachableError, match=f"judge endpoint {url} is unreachable") as info:
        asyncio.run(pool(url, key=SECRET).check())
    assert SECRET not in str(info.value)


def test_concurrent_calls_share_the_limits_and_every_sample_is_scored_once() -> None:
    with JudgeServer(settings=ServerSettings(latency_s=0.02, status_rates={429: 0.2}, retry_after_s=0.01)) as srv:
        judge_pool = pool(srv.base_url, max_concurrency=3, retry=RetryConfig(max_attempts=6, initial_backoff_s=0.01))
        calls = [rollout([f"{i}-{n}" for n in NAMES]) for i in range(4)]

        async def run() -> list[ScoreResult]:
            try:
                return await asyncio.gather(*(judge_pool.score(c) for c in calls))
            finally:
                await judge_pool.close()

        results = asyncio.run(run())
        assert srv.peak_in_flight <= 3
        served = srv.completions_served
    texts = [s.sample.completion_text for r in results for s in r.scored]
    assert sorted(texts) == sorted(f"{i}-{n}" for i in range(4) for n in NAMES)  # none lost, none twice
    assert sum(r.judge_requests for r in results) == served  # every request accounted for
    step = aggregate_judge_metrics(r.judge_metrics for r in results)
    assert step["judge/retries/judge_http_429"] > 0 and step["judge/inflight"] <= 3
    assert judge_pool.stats()["samples"] == 4 * len(NAMES)


def test_gated_and_cached_samples_are_counted() -> None:
    with JudgeServer() as srv:
        judge_pool = pool(srv.base_url)
        result = score_once(judge_pool, rollout(["bread.com", "bread.com", "", "Thought process:"], group_size=4))
    assert [s.reward is not None for s in result.scored] == [True] * 4
    assert result.scored[2].reward == result.scored[3].reward == -0.5
    assert result.judge_requests == 1
    metrics = result.judge_metrics
    assert metrics["judge/cache_hits"] == 1 and metrics["judge/rule_gated"] == 2
    assert metrics["judge/rule_gated/empty"] == 1 and metrics["judge/rule_gated/judge_bait"] == 1


def test_score_lags_run_from_each_groups_last_sample() -> None:
    from dataclasses import replace

    from actors.judge_pool import score_lags

    samples = rollout(["a.com", "b.com", "c.com", "d.com"], group_size=2).samples
    finished = [10.0, 12.5, 11.0, 0.0]  # group g1's second sample has no finish time
    samples = [replace(s, finished_at=t) for s, t in zip(samples, finished)]
    # g0 finished at 12.5 (its later sample), g1 at 11.0; both scored at 13.0
    assert score_lags(samples, 13.0) == [0.5, 2.0]
    assert score_lags([replace(s, finished_at=0.0) for s in samples], 13.0) == []
