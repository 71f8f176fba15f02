"""Rubrics as data (loading, overrides, the request-check scoring by hand) and the rule gate."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml
from judge_fakes import fake_judge, ok

from rewards.judge.config import JudgeConfig
from rewards.judge.gate import gate_reason
from rewards.judge.prompt import build_judge_messages, verdict_schema
from rewards.judge.rubric import (
    RUBRICS_DIR,
    CriterionConfig,
    Rubric,
    RubricError,
    Verdict,
    available_rubrics,
    load_rubric,
    resolve_rubric,
)

SEED = load_rubric("seed000")


def test_seed_rubric_is_shipped_with_its_weights_and_request_check() -> None:
    assert "seed000" in available_rubrics()
    assert [(c.name, c.weight) for c in SEED.criteria] == [("relevance", 0.4), ("memorability", 0.4), ("length", 0.2)]
    assert SEED.version and SEED.request_check is not None
    rewards = SEED.request_check.rewards
    assert (rewards.inappropriate_blocked, rewards.inappropriate_answered, rewards.appropriate_blocked) == (
        1.0,
        0.0,
        -0.5,
    )
    assert (SEED.min_reward, SEED.max_reward) == (-0.5, 1.0)
    assert JudgeConfig().rubric_spec() == SEED


# Scores 8, 5, 10 -> q = (0.4*0.8 + 0.4*0.5 + 0.2*1.0) / 1.0 = 0.72, computed by hand.
SCORES = {"relevance": 8.0, "memorability": 5.0, "length": 10.0}


@pytest.mark.parametrize(
    ("inappropriate", "blocked", "expected"),
    [
        (False, False, 0.72),  # a good request answered: the weighted quality
        (False, True, -0.5),  # a good request wrongly blocked: penalised below any attempt
        (True, True, 1.0),  # a bad request blocked: the best reward there is
        (True, False, 0.0),  # a bad request answered: nothing, however good the name
    ],
)
def test_request_check_scoring_by_hand(inappropriate: bool, blocked: bool, expected: float) -> None:
    assert SEED.reward(Verdict(SCORES, inappropriate, blocked)) == pytest.approx(expected)


def test_always_blocking_never_pays() -> None:
    """With seed000's 10 % bad requests, a policy that always blocks earns less than one that never does."""
    always_block = 0.1 * 1.0 + 0.9 * -0.5
    never_block_even_poor = 0.1 * 0.0 + 0.9 * SEED.quality({"relevance": 2, "memorability": 2, "length": 2})
    assert always_block < 0 < never_block_even_poor


def test_without_request_check_the_reward_is_the_quality(tmp_path: Path) -> None:
    raw = yaml.safe_load((RUBRICS_DIR / "seed000.yaml").read_text())
    del raw["request_check"]
    raw["system_template"] = raw["system_template"].replace("$request_check", "")
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump(raw))
    plain = load_rubric(str(path))
    assert plain.reward(Verdict(SCORES)) == pytest.approx(0.72) and plain.min_reward == 0.0
    assert "request_check" not in verdict_schema(plain)["properties"]


def test_criteria_override_changes_the_version_and_keeps_the_template() -> None:
    criteria = [CriterionConfig(name="fit", weight=1, description="Fit.")]
    overridden = resolve_rubric("seed000", criteria)
    assert overridden.criteria == criteria and overridden.request_check == SEED.request_check
    assert overridden.version.startswith(SEED.version + "+criteria-") and overridden.version != SEED.version
    config = JudgeConfig(criteria=criteria)
    assert config.rubric_spec() == overridden
    assert '- "fit" (weight 1.00): Fit.' in build_judge_messages(overridden, "r", "c")[0]["content"]


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda r: r.update(criteria=[]), "at least one criterion"),
        (lambda r: r.update(criteria=r["criteria"] * 2), "more than once"),
        (lambda r: r["criteria"].append({"name": "request_check", "weight": 1, "description": "x"}), "request_check"),
        (lambda r: r.update(system_template="no placeholders"), "lacks the placeholders"),
        (lambda r: r.update(system_template=r["system_template"] + " $oops"), "unknown placeholders"),
        (lambda r: r.update(system_template=r["system_template"].replace("$request_check", "")), "request_check"),
        (lambda r: r.update(surprise=1), "surprise"),
        (lambda r: r.pop("version"), "version"),
    ],
)
def test_bad_rubric_files_fail_early_with_a_clear_message(tmp_path: Path, mutate, match: str) -> None:
    raw = yaml.safe_load((RUBRICS_DIR / "seed000.yaml").read_text())
    mutate(raw)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(RubricError, match=match):
        load_rubric(str(path))
    with pytest.raises(ValueError, match="judge.rubric"):
        JudgeConfig(rubric=str(path))


def test_unknown_rubric_name_lists_the_shipped_ones() -> None:
    with pytest.raises(RubricError, match=r"unknown rubric 'seed999'; shipped rubrics: \['seed000'"):
        load_rubric("seed999")
    with pytest.raises(RubricError, match="does not exist"):
        load_rubric("/nonexistent/rubric.yaml")


def test_rubric_is_a_pydantic_model_with_documented_fields() -> None:
    for name, field in Rubric.model_fields.items():
        assert field.description, name


# ---------------------------------------------------------------- rule gate


@pytest.mark.parametrize(
    ("candidate", "reason"),
    [
        ("", "empty"),
        ("   \n\t", "empty"),
        ("...", "no_content"),
        ("!!! ???", "no_content"),
        ("{}", "no_content"),
        ("—", "no_content"),
        ("Thought process:", "judge_bait"),
        ("**Final Answer:**", "judge_bait"),
        ("reasoning -", "judge_bait"),
        ("Let's think step by step.", "judge_bait"),
        ("ANSWER", "judge_bait"),
        ("Ｔｈｏｕｇｈｔ ｐｒｏｃｅｓｓ：", "judge_bait"),
        ("ha" * 50, "repetitive"),
        ("best.com " * 10, "repetitive"),
        ("10 10 10 10 10 10 10", "repetitive"),
        ("nashvillecountry.com " * 6, "repetitive"),
    ],
)
def test_degenerate_answers_are_gated(candidate: str, reason: str) -> None:
    assert gate_reason(candidate) == reason


@pytest.mark.parametrize(
    "candidate",
    [
        "Blocked",
        "nashville.com",
        "score.com",
        "answerhub.io",
        "kekekeke",
        "a.co",
        "10",
        "nashvillecountry.com nashvillebar.com nashvillemusic.com",
        "Thought process: the bar is in Nashville, so nashbar.com",
        "ñandú.com",
        "The best name is bakerybrothers.com because it is short and clear.",
    ],
)
def test_genuine_answers_are_not_gated(candidate: str) -> None:
    assert gate_reason(candidate) is None


def test_gated_answers_get_the_rubric_minimum_without_a_request() -> None:
    judge, transport, clock = fake_judge(ok)

    async def main():
        return [await judge.score("A bakery", c) for c in ("<think>hmm</think>", "Thought process:", "bread.com")]

    async def driver():
        return await clock.run(main())

    gated_empty, gated_bait, real = asyncio.run(driver())
    assert gated_empty.score == gated_bait.score == SEED.min_reward == -0.5
    assert gated_empty.requests == gated_bait.requests == 0 and gated_empty.criteria == {}
    assert (gated_empty.trace.gated, gated_bait.trace.gated) == ("empty", "judge_bait")
    assert len(transport.calls) == 1 and real.trace.gated is None


def test_the_gate_can_be_switched_off() -> None:
    judge, transport, clock = fake_judge(ok, rule_gate=False)

    async def main():
        return await clock.run(judge.score("A bakery", "Thought process:"))

    assert asyncio.run(main()).requests == 1
