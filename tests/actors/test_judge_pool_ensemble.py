"""JudgePool and RewardComposer with a judge ensemble of three in-process stand-in judges, one failing
30 % of the candidates (persistently): no sample unscored for it, its failures counted (no Ray)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from actors.judge_pool import JudgePool
from rewards.client.config import CircuitBreakerConfig, RetryConfig
from rewards.composer import RewardComposer
from rewards.config import RewardConfig, RewardTermConfig
from rewards.judge.config import JudgeConfig
from rewards.judge.ensemble import EnsembleJudge
from rewards.metrics import aggregate_judge_metrics
from rewards.stand_in.judge_server import JudgeServer, ServerSettings, injects_failure
from tests.actors.test_judge_pool import NAMES, rollout, score_once

JUDGE_TERM = RewardConfig(terms=[RewardTermConfig(name="judge", weight=1.0)])


@pytest.fixture
def servers() -> Iterator[dict[str, JudgeServer]]:
    settings = {"a": ServerSettings(), "b": ServerSettings(), "c": ServerSettings(fail_rate=0.3)}
    started = {n: JudgeServer(settings=s) for n, s in settings.items()}
    for server in started.values():
        server.start()
    try:
        yield started
    finally:
        for server in started.values():
            server.stop()


def ensemble(servers: dict[str, JudgeServer], **overrides: object) -> JudgeConfig:
    return JudgeConfig(
        ensemble=[{"name": n, "base_url": s.base_url} for n, s in servers.items()],  # type: ignore[misc]
        retry=RetryConfig(max_attempts=2, initial_backoff_s=0.01),
        **overrides,  # type: ignore[arg-type]
    )


def test_the_composer_builds_the_ensemble(servers: dict[str, JudgeServer]) -> None:
    composer = RewardComposer(JUDGE_TERM, ensemble(servers), SecretStr("k"))
    assert isinstance(composer.judge, EnsembleJudge) and set(composer.judge.members) == {"a", "b", "c"}

    async def run():
        try:
            await composer.check_endpoint()
            return await composer.score("A bakery in Portland.", "portlandbread.com")
        finally:
            await composer.aclose()

    parts = asyncio.run(run())
    assert parts.error is None and parts.judge_requests == 3
    members = {k: v for k, v in parts.judge_flags.items() if k.startswith("member/")}
    assert members == pytest.approx(
        dict.fromkeys(["member/a", "member/b", "member/c"], parts.reward)
    )  # identical stand-ins


def test_one_failing_member_leaves_no_sample_unscored(servers: dict[str, JudgeServer]) -> None:
    failing = {n for n in NAMES if injects_failure(n, 0.3)}
    assert 0 < len(failing) < len(NAMES)
    pool = JudgePool(ensemble(servers), JUDGE_TERM, SecretStr("k"))
    result = score_once(pool, rollout(NAMES))

    assert result.judge_failures == 0 and all(s.reward is not None for s in result.scored)
    for s in result.scored:
        members = {k for k in s.terms if k.startswith("judge/member/")}
        c_failed = s.sample.completion_text in failing
        assert members == ({"judge/member/a", "judge/member/b"} | (set() if c_failed else {"judge/member/c"}))
    # every member's requests count: a and b one each, c two (max_attempts) for a failing candidate
    assert result.judge_requests == 2 * len(NAMES) + (len(NAMES) - len(failing)) + 2 * len(failing)
    metrics = aggregate_judge_metrics([result.judge_metrics])
    assert metrics["judge/member/c/failures"] == metrics["judge/member/c/failures/judge_http_500"] == len(failing)
    assert metrics["judge/member/a/failures"] == metrics["judge/member/b/failures"] == 0
    assert metrics["judge/member/a/requests"] == len(NAMES)
    assert not any(k.startswith("judge/failures/") for k in metrics)  # no sample failed
    assert servers["c"].completions_served == len(NAMES) + len(failing)  # counted before the injected failure
    assert set(pool.stats()["circuit_opened"]) == {
        f"{n}: {s.base_url} (relay-heuristic-judge)" for n, s in servers.items()
    }  # type: ignore[arg-type]


def test_every_member_failing_leaves_the_sample_unscored() -> None:
    with (
        JudgeServer(settings=ServerSettings(fail_rate=1.0)) as a,
        JudgeServer(settings=ServerSettings(fail_rate=1.0, fail_status=503)) as b,
    ):
        # no circuit opens in four samples: they fail at once instead of waiting for a cooldown
        judge = ensemble({"a": a, "b": b}, circuit_breaker=CircuitBreakerConfig(failure_threshold=100))
        pool = JudgePool(judge, JUDGE_TERM, SecretStr("k"))
        result = score_once(pool, rollout(NAMES[:4]))
    assert result.judge_failures == 4 and all(s.reward is None for s in result.scored)
    assert {s.reward_error for s in result.scored} == {"judge_ensemble_failed"}
    metrics = result.judge_metrics
    assert (
        metrics["judge/failures/judge_ensemble_failed"] == 4 and metrics["judge/member/b/failures/judge_http_503"] == 4
    )
