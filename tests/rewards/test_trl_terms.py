"""TRL-style reward functions in reward.terms: called batched with TRL's arguments, sync or
async, None unscored (never 0), a wrong number of values a one-line error naming the term."""

from __future__ import annotations

import asyncio

import pytest

from rewards.composer import RewardComposer, ScoreInput, TermContractError
from rewards.config import RewardConfig, RewardTermConfig
from rewards.trl_terms import BatchFunctionTerm, is_trl_style, trl_arguments
from tests.rewards import trl_reward_functions as fns

MOD = "tests.rewards.trl_reward_functions"
CHAT = [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Say a word."}]


def _composer(*terms: RewardTermConfig) -> RewardComposer:
    return RewardComposer(RewardConfig(terms=list(terms)))


def _inputs() -> list[ScoreInput]:
    rows = [{"prompt": CHAT, "letter": "a", "id": 1}, {"prompt": CHAT, "letter": None, "id": 2}]
    texts = ["banana", "apple"]
    return [ScoreInput("Say a word.", t, r, CHAT, [i, i + 1]) for i, (t, r) in enumerate(zip(texts, rows))]


def test_trl_arguments_are_what_grpo_trainer_passes() -> None:
    args = trl_arguments(_inputs())
    assert args["prompts"] == [CHAT, CHAT]  # the dataset's messages, as given
    assert args["completions"] == [
        [{"role": "assistant", "content": "banana"}],
        [{"role": "assistant", "content": "apple"}],
    ]
    assert args["completion_ids"] == [[0, 1], [1, 2]]
    assert args["letter"] == ["a", None] and args["id"] == [1, 2]
    assert "prompt" not in args  # TRL leaves the prompt column out of the column kwargs
    standard = trl_arguments([ScoreInput("Say a word.", "banana", {"prompt": "Say a word."})])
    assert standard["prompts"] == ["Say a word."] and standard["completions"] == ["banana"]


def test_style_is_told_by_the_completions_parameter() -> None:
    assert is_trl_style(fns.letter_reward) and is_trl_style(fns.async_length_reward)
    assert not is_trl_style(lambda prompt, completion: 1.0)
    composer = _composer(RewardTermConfig(name=f"{MOD}:letter_reward"))
    assert isinstance(composer._terms[0], BatchFunctionTerm)


def test_batched_scores_weights_and_none_is_unscored_never_zero(tmp_path) -> None:
    record = tmp_path / "calls.jsonl"
    composer = _composer(
        RewardTermConfig(name=f"{MOD}:letter_reward", weight=2.0, options={"record_to": str(record)}),
        RewardTermConfig(name=f"{MOD}:async_length_reward", weight=0.5),
    )
    parts = asyncio.run(composer.score_batch(_inputs()))
    assert len(record.read_text().splitlines()) == 1  # one call for the whole batch
    expected = 2.0 * fns.letter_share("banana", "a") + 0.5 * len("banana") / 100
    assert parts[0].reward == pytest.approx(expected) and parts[0].error is None
    assert parts[0].terms[f"{MOD}:letter_reward"] == pytest.approx(3 / 6)
    assert parts[1].reward is None  # the row's letter is null: unscored, not 0
    assert parts[1].error == f"{MOD}:letter_reward_no_score"
    assert parts[1].terms[f"{MOD}:async_length_reward"] == pytest.approx(0.05)


def test_a_wrong_number_of_values_is_a_one_line_error_naming_the_term() -> None:
    composer = _composer(RewardTermConfig(name=f"{MOD}:one_short"))
    with pytest.raises(TermContractError) as err:
        asyncio.run(composer.score_batch(_inputs()))
    assert str(err.value) == (
        f"reward term '{MOD}:one_short' (TRL style) returned 1 values for 2 completions; "
        "it must return one float or None per completion"
    )


def test_an_exception_leaves_the_batch_unscored() -> None:
    parts = asyncio.run(_composer(RewardTermConfig(name=f"{MOD}:raises")).score_batch(_inputs()))
    assert [p.reward for p in parts] == [None, None]
    assert {p.error for p in parts} == {f"{MOD}:raises_error:RuntimeError"}


def test_per_sample_style_can_be_forced() -> None:
    with pytest.raises(TermContractError):
        asyncio.run(_composer(RewardTermConfig(name=f"{MOD}:one_short", style="trl")).score_batch(_inputs()))
    sample = _composer(RewardTermConfig(name=f"{MOD}:one_short", style="sample"))
    assert not isinstance(sample._terms[0], BatchFunctionTerm)


def test_the_command_prints_the_error_raised_in_the_judge_pool_as_one_line(capsys) -> None:
    """Ray hands the driver a RayTaskError that is also a TermContractError; its str is a traceback."""
    from ray.exceptions import RayTaskError

    from ray_jobs.runtime.control import command_exit_code

    cause = TermContractError("reward term 'm:f' (TRL style) returned 1 values for 2 completions")
    wrapped = RayTaskError("score", "Traceback (most recent call last):\n  ...\n", cause).as_instanceof_cause()
    assert isinstance(wrapped, TermContractError)

    def job(cfg) -> None:
        raise wrapped

    assert command_exit_code(lambda: None, job, ()) == 1
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {cause}"]
