"""Token-budget micro-batch plans, the padding fraction and the budget's config checks, by hand.

``pack_by_tokens`` sorts a rank's rows by length, longest first, and fills each
micro-batch while (rows + 1) x its longest row fits the budget;
``micro_batch_plan`` pads every rank's plan to the longest of them. The expected
plans below are worked out in the comments.
"""

from __future__ import annotations

import random

import pytest

from actors.learner.data_parallel import (
    MicroBatch,
    micro_batch_plan,
    pack_by_tokens,
    padding_fraction,
    plan_tokens,
    row_count,
    row_indices,
)
from actors.learner.learner import Learner, LearnerConfig
from actors.messages import TrainBatch
from algorithms.config import AlgorithmConfig

LENGTHS = [3, 4, 9, 3, 7, 7]  # rows 0..5


def test_rows_are_sorted_by_length_and_packed_within_the_budget() -> None:
    # Longest first: 2 (9), 4 (7), 5 (7), 1 (4), 0 (3), 3 (3). Budget 16:
    # [2]: adding row 4 would make 2 x 9 = 18 > 16; [4, 5]: 2 x 7 = 14, adding row 1 makes 3 x 7 = 21;
    # [1, 0, 3]: 3 x 4 = 12. Each micro-batch lists its rows in order: a slice when contiguous.
    assert pack_by_tokens(slice(0, 6), LENGTHS, 16, 64) == [slice(2, 3), slice(4, 6), (0, 1, 3)]
    # At most 2 rows: [2], [4, 5], [1, 0], [3].
    assert pack_by_tokens(slice(0, 6), LENGTHS, 16, 2) == [slice(2, 3), slice(4, 6), slice(0, 2), slice(3, 4)]
    # Budget 9: [2] (9), [4] (7; 2 x 7 = 14 > 9), [5], [1, 0] (2 x 4 = 8; 3 x 4 = 12 > 9), [3].
    assert pack_by_tokens(slice(0, 6), LENGTHS, 9, 64) == [
        slice(2, 3),
        slice(4, 5),
        slice(5, 6),
        slice(0, 2),
        slice(3, 4),
    ]


def test_the_budget_is_inclusive_and_ties_keep_row_order() -> None:
    assert pack_by_tokens(slice(0, 4), [4, 4, 4, 4], 16, 64) == [slice(0, 4)]  # 4 x 4 = 16
    assert pack_by_tokens(slice(0, 4), [4, 4, 4, 4], 15, 64) == [slice(0, 3), slice(3, 4)]  # 3 x 4 = 12


def test_a_row_longer_than_the_budget_is_a_micro_batch_of_its_own() -> None:
    # The config checks forbid such a row; the packer still places every row, alone when too long.
    assert pack_by_tokens(slice(0, 3), [2, 20, 2], 16, 64) == [slice(1, 2), (0, 2)]


def test_rows_keep_their_batch_indices() -> None:
    # Rows 10..13 of a batch; lengths index the whole batch. Longest first: 12 (8), 11 (5), 10 (2), 13 (2).
    # Budget 9: [12], [11] (2 x 5 = 10 > 9), [10, 13] (2 x 2 = 4).
    lengths = [99] * 10 + [2, 5, 8, 2]
    assert pack_by_tokens(slice(10, 14), lengths, 9, 64) == [slice(12, 13), slice(11, 12), (10, 13)]


@pytest.mark.parametrize("seed", range(20))
def test_every_row_once_within_the_budget_longest_first(seed: int) -> None:
    rng = random.Random(seed)
    n, budget, max_rows = rng.randint(1, 40), rng.randint(9, 64), rng.randint(1, 8)
    lengths = [rng.randint(1, 8) if rng.random() < 0.8 else rng.randint(9, budget) for _ in range(n)]
    packs = pack_by_tokens(slice(0, n), lengths, budget, max_rows)
    assert sorted(i for p in packs for i in row_indices(p)) == list(range(n))
    longest = [max(lengths[i] for i in row_indices(p)) for p in packs]
    assert longest == sorted(longest, reverse=True)
    for p in packs:
        assert row_indices(p) == sorted(row_indices(p)) and row_count(p) <= max_rows
        assert row_count(p) * max(lengths[i] for i in row_indices(p)) <= budget


def test_two_ranks_plans_by_hand() -> None:
    # Rows 0..6 over 2 ranks: rank 0 has 0..2 (7 * 0 // 2 to 7 // 2), rank 1 has 3..6.
    lengths = [9, 2, 2, 3, 3, 8, 3]
    # Budget 9, rank 0: [0] (9), [1, 2] (2 x 2 = 4): 2 micro-batches.
    # Rank 1: [5] (8), [3, 4, 6] (3 x 3 = 9): 2 micro-batches. Equal: no padding.
    assert micro_batch_plan(slice(0, 7), 0, 2, 64, 9, lengths) == [MicroBatch(slice(0, 1)), MicroBatch(slice(1, 3))]
    assert micro_batch_plan(slice(0, 7), 1, 2, 64, 9, lengths) == [MicroBatch(slice(5, 6)), MicroBatch((3, 4, 6))]
    # Budget 8 (row 0 would need 9; the config checks forbid this, the plan still holds it alone):
    # rank 0 [0], [1, 2]; rank 1 [5], [3, 4] (2 x 3 = 6; 3 x 3 = 9 > 8), [6]: rank 0 gets one
    # padding micro-batch, the minibatch's first row with padding set.
    assert micro_batch_plan(slice(0, 7), 0, 2, 64, 8, lengths) == [
        MicroBatch(slice(0, 1)),
        MicroBatch(slice(1, 3)),
        MicroBatch(slice(0, 1), padding=True),
    ]
    assert micro_batch_plan(slice(0, 7), 1, 2, 64, 8, lengths) == [
        MicroBatch(slice(5, 6)),
        MicroBatch(slice(3, 5)),
        MicroBatch(slice(6, 7)),
    ]


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("seed", range(5))
def test_budget_plans_cover_every_row_once_with_equal_lengths(world_size: int, seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.randint(1, 30) for _ in range(40)]
    for n in (1, 2, 5, 17):
        rows = slice(3, 3 + n)
        plans = [micro_batch_plan(rows, r, world_size, 4, 30, lengths) for r in range(world_size)]
        assert len({len(p) for p in plans}) == 1
        real = [i for p in plans for m in p if not m.padding for i in row_indices(m.rows)]
        assert sorted(real) == list(range(rows.start, rows.stop))
        assert all(m.rows == slice(3, 4) for p in plans for m in p if m.padding)


def test_a_budget_needs_the_lengths() -> None:
    with pytest.raises(ValueError, match="lengths"):
        micro_batch_plan(slice(0, 2), 0, 1, 4, 16)


def test_padding_fraction_by_hand() -> None:
    lengths = [6, 3, 5]
    # One micro-batch of 3 rows padded to 6: 18 positions, 14 tokens: 4 / 18 padding.
    assert padding_fraction([slice(0, 3)], 1, 64, None, lengths) == pytest.approx(4 / 18)
    # Budget 9: [0] (6), [2] (5; 2 x 6 = 12 > 9), [1] (3; 2 x 5 = 10 > 9): 14 positions, no padding.
    assert padding_fraction([slice(0, 3)], 1, 64, 9, lengths) == 0.0
    # Budget 10: [0], then [2, 1] (2 x 5 = 10) padded to 5: 6 + 10 positions, 14 tokens.
    assert padding_fraction([slice(0, 3)], 1, 64, 10, lengths) == pytest.approx(2 / 16)
    # Two ranks, 1 row per micro-batch: rank 0 has row 0 and a padding micro-batch (row 0 again,
    # all padding), rank 1 rows 1 and 2: 6 + 6 + 3 + 5 = 20 positions, 14 tokens: 6 / 20.
    assert padding_fraction([slice(0, 3)], 2, 1, None, lengths) == pytest.approx(6 / 20)
    # Two minibatches [0, 1] and [2]: 2 x 6 + 5 = 17 positions, 14 tokens.
    assert padding_fraction([slice(0, 2), slice(2, 3)], 1, 64, None, lengths) == pytest.approx(3 / 17)
    # A pair's unit counts twice its longer row as its width, and both rows' tokens as used.
    assert plan_tokens([MicroBatch(slice(0, 2))], [2 * 5, 2 * 4], [5 + 3, 4 + 4]) == (20, 16)


def _batch() -> TrainBatch:
    # rows of 3 + 3 = 6 and 2 + 1 = 3 tokens
    return TrainBatch(
        step=0,
        prompt_token_ids=[[1, 10, 11], [1, 12]],
        completion_token_ids=[[20, 21, 2], [22]],
        sampling_logprobs=[[-6.9, -6.9, -6.9], [-6.9]],
        advantages=[1.0, -1.0],
        policy_versions=[0, 0],
    )


@pytest.mark.parametrize(("budget", "expected"), [(None, 3 / 12), (12, 3 / 12), (8, 0.0)])
def test_the_learner_logs_the_padding_fraction(tiny_model_config, budget: int | None, expected: float) -> None:
    # Without a budget, or with 12 = 2 x 6: both rows in one micro-batch of width 6, 12 positions
    # for 9 tokens. Budget 8: each row alone, padded to its own length.
    config = LearnerConfig(max_tokens_per_micro_batch=budget)
    metrics = Learner(config, tiny_model_config, AlgorithmConfig(), 1.0).train(_batch()).metrics
    assert metrics["learner/padding_fraction"] == pytest.approx(expected)


def test_a_budget_below_one_sample_is_a_config_error() -> None:
    from ray_jobs.config.experiment import ConfigError, load_config
    from ray_jobs.config.offline import load_job_config
    from ray_jobs.preference import PreferenceConfig
    from ray_jobs.sft import SftConfig

    rl = ["data.max_prompt_tokens=100", "rollout.max_new_tokens=28"]  # a sample needs up to 128 tokens
    assert load_config(None, [*rl, "learner.max_tokens_per_micro_batch=128"])
    with pytest.raises(ConfigError, match=r"max_tokens_per_micro_batch=127 is smaller than one sample can need"):
        load_config(None, [*rl, "learner.max_tokens_per_micro_batch=127"])
    sft = ["data.max_length=64"]
    assert load_job_config(SftConfig, None, [*sft, "learner.max_tokens_per_micro_batch=64"])
    with pytest.raises(ConfigError, match=r"data.max_length = 64"):
        load_job_config(SftConfig, None, [*sft, "learner.max_tokens_per_micro_batch=63"])
    assert load_job_config(PreferenceConfig, None, [*sft, "learner.max_tokens_per_micro_batch=128"])
    with pytest.raises(ConfigError, match=r"a pair, 2 x data.max_length = 128"):
        load_job_config(PreferenceConfig, None, [*sft, "learner.max_tokens_per_micro_batch=127"])
