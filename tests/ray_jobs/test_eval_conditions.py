"""Selection, cost accounting and critic rows of one evaluation chunk, without Ray."""

from __future__ import annotations

import pytest

from actors.messages import PromptItem, RolloutResult, Sample, ScoredSample, ScoreResult
from ray_jobs.config.evaluation import ConditionConfig, CriticConfig
from ray_jobs.evaluation.conditions import HeldOutItem, best_index, chunk_seed, critic_batch, finish_chunk


def _items(n: int) -> list[HeldOutItem]:
    return [
        HeldOutItem(
            PromptItem(f"id{i}", i, f"request {i}", [1, 2, 3]),
            [{"role": "user", "content": f"request {i}"}],
            label=i == 0,
            stratum=None,
        )
        for i in range(n)
    ]


def _generated(texts: list[str]) -> RolloutResult:
    samples = [
        Sample(PromptItem("x", 0, "x", [1]), "g", i, t, list(range(len(t))), [0.0] * len(t), 0, False)
        for i, t in enumerate(texts)
    ]
    return RolloutResult(0, samples, 0.5, 0)


class Judge:
    """Scores a completion by a table (None: unscored), records what it was asked."""

    def __init__(self, table: dict[str, float | None]) -> None:
        self.table, self.asked = table, []

    def __call__(self, result: RolloutResult) -> ScoreResult:
        self.asked.append([s.completion_text for s in result.samples])
        scored = [
            ScoredSample(
                s,
                self.table[s.completion_text],
                None if self.table[s.completion_text] is not None else "judge: malformed",
                {"judge/blocked": float(s.completion_text == "Blocked")},
            )
            for s in result.samples
        ]
        return ScoreResult(0, scored, 0.0, 0.1, len(scored), 0)


def test_best_index_takes_the_first_maximum_and_skips_unscored() -> None:
    assert best_index([0.1, None, 0.7, 0.7]) == 2
    assert best_index([None, None]) is None


def test_chunk_seeds_are_fixed_per_condition_and_chunk() -> None:
    assert chunk_seed(0, "trained", 3) == chunk_seed(0, "trained", 3)
    assert (
        len(
            {
                chunk_seed(0, "trained", 3),
                chunk_seed(0, "trained", 4),
                chunk_seed(0, "base", 3),
                chunk_seed(1, "trained", 3),
            }
        )
        == 4
    )


def test_critic_selects_the_candidate_it_prefers_and_best_of_4_costs_5_passes() -> None:
    cond = ConditionConfig(policy="p", k=4, temperature=1.0, select="critic", critic=CriticConfig(path="c"))
    texts = ["a.com", "b.com", "c.com", "d.com", "Blocked", "e.com", "f.com", "g.com"]
    judge = Judge({t: float(i) for i, t in enumerate(texts)})
    # the critic prefers candidate 2 of item 0 and candidate 0 of item 1 (whatever the judge thinks)
    critic = [-3.0, -2.0, -0.5, -4.0, -0.1, -0.2, -0.3, -9.0]
    results = finish_chunk("bo4", cond, _items(2), _generated(texts), critic, judge, critic_s=0.2)
    assert judge.asked == [["c.com", "Blocked"]]  # only the selected completions are judged: one call each
    assert [r.selected for r in results] == [2, 0]
    assert [r.score for r in results] == [2.0, 4.0]
    assert [r.blocked for r in results] == [0.0, 1.0]
    assert [r.forward_passes for r in results] == [5.0, 5.0]  # four generations + one batched critic pass
    assert [r.judge_calls for r in results] == [1, 1]
    assert results[0].candidates == texts[:4] and results[0].generated_tokens == 20
    assert results[0].seconds == pytest.approx((0.5 + 0.2 + 0.1) / 2)  # generation + critic + judge, per item


def test_judge_ranking_keeps_the_best_scored_candidate_and_an_all_unscored_item_is_unscored() -> None:
    cond = ConditionConfig(policy="p", k=2, temperature=1.0, select="judge")
    judge = Judge({"a": 0.2, "b": None, "c": None, "d": None})
    results = finish_chunk("bo2", cond, _items(2), _generated(["a", "b", "c", "d"]), None, judge, critic_s=0.2)
    assert judge.asked == [["a", "b", "c", "d"]]
    assert (results[0].selected, results[0].score, results[0].error) == (0, 0.2, None)
    assert (results[1].selected, results[1].score) == (None, None)  # never 0
    assert results[1].error == "no candidate was scored (first: judge: malformed)" and results[1].blocked is None
    assert [r.forward_passes for r in results] == [2.0, 2.0] and [r.judge_calls for r in results] == [2, 2]


def test_single_keeps_the_judge_error_of_an_unscored_answer() -> None:
    results = finish_chunk(
        "base", ConditionConfig(policy="p"), _items(1), _generated(["x"]), None, Judge({"x": None}), critic_s=0.2
    )
    assert (results[0].score, results[0].error, results[0].forward_passes) == (None, "judge: malformed", 1.0)


def test_critic_rows_mask_only_the_candidate(tiny_model_config) -> None:
    from actors.model.loading import load_tokenizer, resolve_model_path

    tok = load_tokenizer(resolve_model_path(tiny_model_config))
    batch = critic_batch(tok, _items(1), [["abc.com", "Blocked"]])
    assert len(batch.input_ids) == 2
    for ids, mask in zip(batch.input_ids, batch.loss_masks):
        start = mask.index(1)
        assert all(mask[start:]) and not any(mask[:start])
        assert tok.eos_token_id in ids[start:]  # the candidate ends as the critic was trained: end of turn


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k": 4}, "select 'single' scores one completion"),
        ({"k": 1, "select": "judge"}, "ranks several completions"),
        ({"k": 4, "select": "judge"}, "greedy decoding"),
        ({"k": 4, "temperature": 1.0, "select": "critic"}, "needs a critic"),
    ],
)
def test_inconsistent_conditions_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ConditionConfig(policy="p", **kwargs)
