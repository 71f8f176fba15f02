"""The pure parts of scripts/bench/placement.py: a run's reward windows, Welch's t and samples/s
from its metrics rows, and the table."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from scripts.bench.placement import RunCost, RunSummary, format_table, summarise_run


def rows_of(rewards: list[float], rates: list[float]) -> list[dict[str, float]]:
    return [
        {"step": i, "reward/mean": r, "throughput/samples_per_s": s} for i, (r, s) in enumerate(zip(rewards, rates))
    ]


def test_first_and_last_ten_steps_with_welchs_t_by_hand() -> None:
    # first 10: 0, 1, ... mean 0.5, sample variance (10 x 0.25) / 9 = 5/18; last 10: 1, 2, ... mean 1.5,
    # the same variance. t = (1.5 - 0.5) / sqrt(2 x (5/18) / 10) = 1 / sqrt(1/18) = sqrt(18);
    # equal variances and sizes: Welch's degrees of freedom are 2 x (10 - 1) = 18.
    # The 5 middle steps (reward 9) are in neither window.
    rewards = [0.0, 1.0] * 5 + [9.0] * 5 + [1.0, 2.0] * 5
    # samples/s: the metric's 10-step window is full from step 11 (index 10) on: mean of 1..15 = 8
    rates = [100.0] * 10 + [float(x) for x in range(1, 16)]
    s = summarise_run(rows_of(rewards, rates))
    assert (s.first, s.last) == (pytest.approx(0.5), pytest.approx(1.5))
    assert s.t == pytest.approx(math.sqrt(18))
    assert s.p == pytest.approx(2 * stats.t.sf(math.sqrt(18), 18))
    assert s.samples_per_s == pytest.approx(8.0)


def test_a_falling_reward_has_a_negative_t_and_too_few_steps_are_an_error() -> None:
    falling = summarise_run(rows_of([1.0, 2.0] * 5 + [0.0, 1.0] * 5, [1.0] * 20))
    assert falling.t == pytest.approx(-math.sqrt(18))
    with pytest.raises(ValueError, match="19 steps: need at least 20"):
        summarise_run(rows_of([0.0] * 19, [1.0] * 19))


def test_table_has_one_row_per_placement_and_k() -> None:
    runs = {
        ("separate", 0): RunSummary(0.25, 0.5, 3.0, 0.0081, 12.34),
        ("colocated", 2): RunSummary(0.2, 0.45, 2.5, 0.02, 20.0),
    }
    costs = {("separate", 0): RunCost(100.4, [0.5, 1.5, 2.5]), ("colocated", 2): RunCost(80.0, [])}
    lines = format_table(runs, costs).splitlines()
    assert lines[0].startswith("| placement | k | reward, first 10 steps | reward, last 10 | Welch's t (p) |")
    assert len(lines[1].split("|")) == len(lines[0].split("|"))
    assert lines[2] == "| separate | 0 | 0.250 | 0.500 | 3.00 (0.0081) | 12.3 | 100 | 1.5, 2.5 |"
    assert lines[3] == "| colocated | 2 | 0.200 | 0.450 | 2.50 (0.02) | 20.0 | 80 | n/a |"
