"""JudgePool in group mode (judge.mode: group) against the in-process stand-in judge (no Ray)."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import SecretStr

from actors.judge_pool import JudgePool
from actors.messages import PromptItem, RolloutResult, Sample, ScoreResult
from rewards.config import RewardConfig, RewardTermConfig
from rewards.judge.config import JudgeConfig
from rewards.stand_in.judge_server import JudgeServer, ServerSettings

DESCRIPTIONS = ["A bakery in Portland that sells sourdough bread.", "A country music bar in Nashville."]
NAMES = ["portlandbread.com", "sourdough.io", "", "breadhouse.com", "honkytonk.com", "nashbar.com", "twang.com", "x"]


def rollout(group_size: int = 4) -> RolloutResult:
    samples = []
    for i, text in enumerate(NAMES):
        g = i // group_size
        prompt = PromptItem(prompt_id=f"p{g}", row=g, prompt_text=DESCRIPTIONS[g], prompt_token_ids=[1, 2])
        samples.append(
            Sample(
                prompt=prompt,
                group_id=f"g{g}",
                group_index=i % group_size,
                completion_text=text,
                completion_token_ids=[5],
                sampling_logprobs=[-0.1],
                policy_version=0,
                truncated=False,
            )
        )
    return RolloutResult(batch_index=0, samples=samples, generate_s=1.0, worker_id=0)


def score(base_url: str, **judge: object) -> ScoreResult:
    reward = RewardConfig(terms=[RewardTermConfig(name="judge", weight=1.0)])
    pool = JudgePool(JudgeConfig(base_url=base_url, mode="group", **judge), reward, SecretStr("k"))

    async def run() -> ScoreResult:
        try:
            return await pool.score(rollout())
        finally:
            await pool.close()

    return asyncio.run(run())


@pytest.mark.parametrize("passes", [1, 2])
def test_one_request_per_group_and_pass_with_the_flags_as_terms(passes: int) -> None:
    with JudgeServer(settings=ServerSettings(position_bias=2.0)) as srv:
        result = score(srv.base_url, group_passes=passes)
        assert srv.server.stats()["requests"] == 2 * passes
    assert result.judge_requests == 2 * passes and result.judge_failures == 0
    gated = result.scored[2]  # the empty answer: the rubric minimum, not shown
    assert gated.reward == -0.5 and "judge/position" not in gated.terms
    shown = [s for n, s in enumerate(result.scored) if n != 2]
    assert all(s.reward is not None for s in shown)
    assert [s.terms["judge/shown_of"] for s in shown] == [3, 3, 3, 4, 4, 4, 4]
    assert sorted(s.terms["judge/position"] for s in shown[3:]) == [0, 1, 2, 3]
    if passes == 2:
        for s in shown:
            assert s.terms["judge"] == pytest.approx((s.terms["judge/pass/0"] + s.terms["judge/pass/1"]) / 2)
        first = next(s for s in shown[3:] if s.terms["judge/position"] == 0)
        assert first.terms["judge/pass/0"] > first.terms["judge/pass/1"]  # shown first, then last
    assert result.judge_metrics["judge/rule_gated"] == 1
