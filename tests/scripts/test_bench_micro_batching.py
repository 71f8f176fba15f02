"""The micro-batching benchmark's batches, cases and table (never its timings)."""

from __future__ import annotations

import pytest

from actors.learner.data_parallel import padding_fraction
from actors.learner.objectives import sequence_lengths
from scripts.bench.micro_batching import (
    MAX_NEW_TOKENS,
    PROMPT_TOKENS,
    SHORT_TOKENS,
    format_table,
    learner_config,
    long_tailed_lengths,
    micro_batches,
    summarise,
    synthetic_batch,
)


def test_lengths_are_long_tailed_and_seeded() -> None:
    lengths = long_tailed_lengths(400, seed=3)
    assert lengths == long_tailed_lengths(400, seed=3) != long_tailed_lengths(400, seed=4)
    assert all(PROMPT_TOKENS[0] <= p <= PROMPT_TOKENS[1] for p, _ in lengths)
    long = [c for _, c in lengths if c == MAX_NEW_TOKENS]
    assert all(SHORT_TOKENS[0] <= c <= SHORT_TOKENS[1] for _, c in lengths if c != MAX_NEW_TOKENS)
    assert 0.1 < len(long) / len(lengths) < 0.3  # LONG_SHARE 0.2: most short, some at the limit


def test_batch_and_cases() -> None:
    batch = synthetic_batch(2, 32, vocab=1024)
    assert len(batch) == 32 and batch.step == 2
    assert [(len(p), len(c)) for p, c in zip(batch.prompt_token_ids, batch.completion_token_ids)] == (
        long_tailed_lengths(32, 2)
    )
    assert [len(lp) for lp in batch.sampling_logprobs] == [len(c) for c in batch.completion_token_ids]
    rows, budget, one = (learner_config(case, 32, 8, 1) for case in ("rows", "budget", "one"))
    # The budget bounds a micro-batch's padded size as 8 rows of the longest possible row do.
    assert budget.max_tokens_per_micro_batch == 8 * (PROMPT_TOKENS[1] + MAX_NEW_TOKENS)
    lengths = sequence_lengths(batch)
    assert micro_batches(one, batch) == (1, 32 * max(lengths))
    assert micro_batches(rows, batch) == (4, sum(8 * max(lengths[i : i + 8]) for i in range(0, 32, 8)))
    everything = [slice(0, 32)]
    by_rows = padding_fraction(everything, 1, 8, None, lengths)
    by_budget = padding_fraction(everything, 1, 64, budget.max_tokens_per_micro_batch, lengths)
    assert by_budget < by_rows
    with pytest.raises(ValueError, match="unknown case"):
        learner_config("packed", 32, 8, 1)


def test_summary_and_table() -> None:
    def case(name: str, seconds: list[float], padding: float) -> dict:
        steps = [
            {"train_s": s, "cpu_s": 2 * s, "padding_fraction": padding, "micro_batches": 2, "positions": 100}
            for s in seconds
        ]
        return {"model": "tiny", "case": name, "others_cpu": None, "steps": steps}

    rows = [case("rows", [9.0, 2.0, 4.0, 3.0], 0.4), case("budget", [9.0, 1.0, 2.0, 1.5], 0.1)]
    summary = summarise(rows)  # the first step is the warm-up
    assert [s["train_s"] for s in summary] == [3.0, 1.5]
    assert [s["speedup"] for s in summary] == [s["cpu_speedup"] for s in summary] == [2.0, 1.0]
    table = format_table(summary, 8, 32).splitlines()
    assert (
        table[2] == "| tiny | today: micro_batch_size 8 | 3.000 | 6.000 | 40.0 % | 2 | 100 | 2.00x, 2.00x | 1.00x | - |"
    )
    assert table[3].startswith("| tiny | max_tokens_per_micro_batch 2160 | 1.500 | 3.000 | 10.0 % |")
