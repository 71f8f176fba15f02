"""RewardComposer in group mode: the judge term once per prompt group, beside per-sample terms
(against the in-process stand-in judge)."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import SecretStr

from rewards.composer import RewardComposer, ScoredParts, ScoreInput, prompt_groups
from rewards.config import RewardConfig, RewardTermConfig
from rewards.judge.config import JudgeConfig
from rewards.stand_in.judge_server import JudgeServer, ServerSettings

DESCRIPTION = "A country music bar in Nashville with live bands every night."
OTHER = "A bakery in Portland that sells sourdough bread."
INPUTS = [
    ScoreInput(DESCRIPTION, "honkytonk.com", group_id="g1"),
    ScoreInput(OTHER, "portlandbread.com", group_id="g2"),
    ScoreInput(DESCRIPTION, "nashville live bands", group_id="g1"),
    ScoreInput(OTHER, "sourdough.io", group_id="g2"),
    ScoreInput(DESCRIPTION, "countrybar.com", group_id="g1"),
    ScoreInput(OTHER, "Blocked", group_id="g2"),
    ScoreInput(DESCRIPTION, "twangtown.com"),  # no group id: a group of its own
]


def score_all(base_url: str, mode: str) -> list[ScoredParts]:
    reward = RewardConfig(
        terms=[RewardTermConfig(name="judge", weight=1.0), RewardTermConfig(name="domain_format", weight=0.5)]
    )
    comp = RewardComposer(reward, JudgeConfig(base_url=base_url, mode=mode), SecretStr("k"))

    async def run() -> list[ScoredParts]:
        try:
            return await comp.score_batch(INPUTS)
        finally:
            await comp.aclose()

    return asyncio.run(run())


def test_prompt_groups_by_group_id_and_prompt() -> None:
    assert prompt_groups(INPUTS) == [("g1", [0, 2, 4]), ("g2", [1, 3, 5]), ("#6", [6])]
    mixed = [ScoreInput("p", "a", group_id="g"), ScoreInput("q", "b", group_id="g"), ScoreInput("p", "c")]
    assert prompt_groups(mixed) == [("g", [0]), ("g", [1]), ("#2", [2])]


def test_group_mode_sends_one_request_per_group_and_matches_pointwise_on_an_unbiased_judge() -> None:
    with JudgeServer() as srv:
        pointwise = score_all(srv.base_url, "pointwise")
        assert srv.server.stats()["requests"] == 7
        grouped = score_all(srv.base_url, "group")
        assert srv.server.stats()["requests"] == 7 + 3  # g1, g2 and the lone sample
    assert [p.judge_requests for p in grouped].count(1) == 3 and sum(p.judge_requests for p in grouped) == 3
    for point, group in zip(pointwise, grouped):
        assert group.reward == pytest.approx(point.reward) and group.error is None
        assert group.terms == pytest.approx(point.terms) and group.criteria == pytest.approx(point.criteria)
        assert group.judge_flags["shown_of"] == (1 if group is grouped[6] else 3)
    assert sorted(grouped[i].judge_flags["position"] for i in (0, 2, 4)) == [0, 1, 2]
    assert "position" not in pointwise[0].judge_flags


def test_group_mode_sees_the_position_bias_pointwise_does_not() -> None:
    with JudgeServer(settings=ServerSettings(position_bias=2.0)) as srv:
        pointwise = score_all(srv.base_url, "pointwise")
        grouped = score_all(srv.base_url, "group")
    points = {0: 2.0, 1: 1.0, 2: 0.0}  # 2 * (3 - 1 - position) / (3 - 1): first all, last none
    for point, group in zip(pointwise[:6], grouped[:6]):
        bonus = points[int(group.judge_flags["position"])]
        assert group.criteria == pytest.approx({c: min(10.0, v + bonus) for c, v in point.criteria.items()})
    assert grouped[6].criteria == pytest.approx(pointwise[6].criteria)  # shown alone: no position
