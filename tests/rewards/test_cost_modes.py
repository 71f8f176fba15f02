"""Every judge mode puts each request's dollars in exactly one sample's trace: the samples'
costs add up to what the judge's clients spent (group mode: the request's first completion
carries it; an ensemble: each member's requests in the sample's trace)."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import SecretStr

from rewards.judge.config import JudgeConfig
from rewards.judge.ensemble import EnsembleJudge, build_judge
from rewards.judge.llm_judge import JudgeScore
from rewards.stand_in.judge_server import JudgeServer

NAMES = ["bakeryparis.com", "breadhub.com", "cozybread.com", "parisbakes.com", "loaf.com"]
REQUEST = "A cozy bakery in Paris baking bread."
PRICES = {"price_per_million_input_tokens": 1000.0, "price_per_million_output_tokens": 2000.0}


def _spend(judge: JudgeConfig, group: bool) -> tuple[float, float, int]:
    async def run() -> tuple[float, float, int]:
        scorer = build_judge(judge, SecretStr("unused"))
        try:
            if group:
                scores = await scorer.score_group(REQUEST, NAMES, "g")
            else:
                scores = list(await asyncio.gather(*(scorer.score(REQUEST, n) for n in NAMES)))
            members = scorer.members.values() if isinstance(scorer, EnsembleJudge) else [scorer]
            spent = sum(m.client.spent.cost_usd for m in members)
            assert all(isinstance(s, JudgeScore) for s in scores)
            return sum(s.trace.cost_usd for s in scores), spent, sum(s.trace.requests for s in scores)
        finally:
            await scorer.aclose()

    return asyncio.run(run())


@pytest.mark.parametrize("passes", [1, 2])
def test_group_mode_samples_carry_the_group_requests_dollars(passes: int) -> None:
    with JudgeServer() as server:
        judge = JudgeConfig(base_url=server.base_url, mode="group", group_passes=passes, max_group_size=3, **PRICES)
        traced, spent, requests = _spend(judge, group=True)
    assert requests == 2 * passes  # 5 completions in groups of at most 3: two requests per pass
    assert spent > 0 and traced == pytest.approx(spent)


def test_an_ensembles_samples_carry_every_members_dollars() -> None:
    with JudgeServer() as a, JudgeServer() as b:
        members = [{"name": "a", "base_url": a.base_url}, {"name": "b", "base_url": b.base_url}]
        traced, spent, requests = _spend(JudgeConfig(ensemble=members, **PRICES), group=False)
    assert requests == 2 * len(NAMES)
    assert spent > 0 and traced == pytest.approx(spent)
