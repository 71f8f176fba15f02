"""Evaluation statistics, with expected values derived by hand."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from algorithms.statistics import paired_bootstrap, pareto_front, refusal_rates, summarize


def test_refusal_rates_split_by_label_and_skip_unknowns() -> None:
    # inappropriate: blocked, answered, blocked -> 2/3; appropriate: answered, blocked -> 1/2
    # unknown: a row without a label, and an inappropriate row whose answer was not scored
    labels = [True, True, True, False, False, None, True]
    blocked = [1.0, 0.0, True, 0.0, 1.0, 1.0, None]
    rates = refusal_rates(labels, blocked)
    assert rates.block_rate == pytest.approx(2 / 3)
    assert rates.false_block_rate == 0.5
    assert (rates.n_inappropriate, rates.n_appropriate, rates.unknown) == (3, 2, 2)


def test_refusal_rates_without_a_class_are_none() -> None:
    rates = refusal_rates([False, False], [0.0, 0.0])
    assert rates.block_rate is None and rates.false_block_rate == 0.0
    with pytest.raises(ValueError, match="differ in length"):
        refusal_rates([True], [])


def _paired_draw(seed: int, delta: float, n: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """baseline ~ N(0.5, 0.2); other = baseline + delta + N(0, 0.1), per item."""
    rng = np.random.default_rng(seed)
    baseline = rng.normal(0.5, 0.2, n)
    return baseline, baseline + delta + rng.normal(0.0, 0.1, n)


def test_bootstrap_ci_covers_the_true_delta_about_95_percent() -> None:
    # 200 independent draws (data seed 1000 + d, bootstrap seed d) with a true Δ of 0.05.
    # The percentile interval slightly under-covers at n = 50 (it uses the plug-in sd
    # and normal-like tails): over 3000 such draws it covered 93.4 %. These seeds
    # give 189 / 200; the band 92-98 % is about -0.5 to +4 binomial sds around 93.4 %.
    covered = 0
    for d in range(200):
        baseline, other = _paired_draw(1000 + d, 0.05)
        cmp = paired_bootstrap(baseline, other, resamples=2000, seed=d)
        covered += cmp.ci_low <= 0.05 <= cmp.ci_high
    assert 184 <= covered <= 196


def test_one_sided_p_is_about_uniform_under_no_difference() -> None:
    # Δ = 0: p = share of bootstrap means <= 0 is approximately Uniform(0, 1). Over
    # 3000 draws the share below 0.05 was 0.054 and a KS test against the uniform gave
    # p = 0.86; 200 draws have a binomial sd of 0.016 for that share, so 0.01-0.11 is
    # a fair band. (These seeds: KS p = 0.76, share 0.055.)
    ps = np.array(
        [paired_bootstrap(*_paired_draw(11_000 + d, 0.0), resamples=2000, seed=d).p_one_sided for d in range(200)]
    )
    assert stats.kstest(ps, "uniform").pvalue > 0.01
    assert 0.01 <= np.mean(ps < 0.05) <= 0.11


def test_paired_bootstrap_counts_by_hand() -> None:
    # deltas other - baseline: 0.75 - 0.25 = +0.5 (win), 0.5 - 0.5 = 0 (tie),
    # 0.25 - 0.5 = -0.25 (loss), 1 - 1 = 0 (tie) -> mean (0.5 + 0 - 0.25 + 0) / 4 = 0.0625
    cmp = paired_bootstrap([0.25, 0.5, 0.5, 1.0], [0.75, 0.5, 0.25, 1.0], resamples=500, seed=3)
    assert cmp.mean_delta == 0.0625
    assert (cmp.wins, cmp.losses, cmp.ties, cmp.n) == (1, 1, 2, 4)
    assert (cmp.resamples, cmp.seed) == (500, 3)
    assert cmp.ci_low <= 0.0625 <= cmp.ci_high
    assert cmp == paired_bootstrap([0.25, 0.5, 0.5, 1.0], [0.75, 0.5, 0.25, 1.0], resamples=500, seed=3)


def test_paired_bootstrap_two_items_known_distribution() -> None:
    # deltas 0 and 1: a resample of two items has mean 0 (both the first, prob 1/4),
    # 0.5 (one of each, 1/2) or 1 (both the second, 1/4). So P(mean <= 0) = 1/4
    # (10 000 resamples: sd 0.0043), and the 2.5 % / 97.5 % percentiles are 0 and 1
    # exactly, since each end holds a quarter of the mass.
    cmp = paired_bootstrap([0.0, 0.0], [0.0, 1.0], resamples=10_000, seed=11)
    assert cmp.mean_delta == 0.5
    assert (cmp.ci_low, cmp.ci_high) == (0.0, 1.0)
    assert cmp.p_one_sided == pytest.approx(0.25, abs=0.02)


def test_paired_bootstrap_all_deltas_equal_is_exact_and_quiet() -> None:
    # every delta the same: every resample has mean Δ, so CI [Δ, Δ]; p = P(Δ <= 0).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lift = paired_bootstrap([0.0, 0.25, 0.5], [0.5, 0.75, 1.0])  # Δ = +0.5
        same = paired_bootstrap([0.2, 0.2, 0.9], [0.2, 0.2, 0.9])  # Δ = 0
        drop = paired_bootstrap([1.0, 1.0], [0.5, 0.5])  # Δ = -0.5
        one = paired_bootstrap([0.5], [0.75])  # a single item is degenerate too
    assert (lift.mean_delta, lift.ci_low, lift.ci_high, lift.p_one_sided, lift.wins) == (0.5, 0.5, 0.5, 0.0, 3)
    assert (same.mean_delta, same.ci_low, same.ci_high, same.p_one_sided, same.ties) == (0.0, 0.0, 0.0, 1.0, 3)
    assert (drop.ci_low, drop.ci_high, drop.p_one_sided, drop.losses) == (-0.5, -0.5, 1.0, 2)
    assert (one.ci_low, one.ci_high, one.p_one_sided) == (0.25, 0.25, 0.0)
    # rounding in the deltas (0.7 - 0.2 != 0.8 - 0.3 in floats) still counts as all equal
    near = paired_bootstrap([0.2, 0.3], [0.7, 0.8])
    assert near.ci_low == near.ci_high == pytest.approx(0.5) and near.p_one_sided == 0.0


def test_paired_bootstrap_rejects_unpaired_input() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        paired_bootstrap([0.1, 0.2], [0.3])
    with pytest.raises(ValueError, match="missing"):
        paired_bootstrap([0.1, None], [0.3, 0.4])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="missing"):
        paired_bootstrap([0.1, math.nan], [0.3, 0.4])
    with pytest.raises(ValueError, match="no paired items"):
        paired_bootstrap([], [])


def test_summarize_t_interval_by_hand() -> None:
    # 1, 2, 3: mean 2; sample variance ((1 - 2)^2 + 0 + (3 - 2)^2) / (3 - 1) = 1 -> sd 1.
    # t quantile with 2 degrees of freedom: its CDF is 1/2 + t / (2 sqrt(2 + t^2)), so
    # F(t) = 0.975 <=> t / sqrt(2 + t^2) = 0.95 <=> t^2 = 0.9025 * 2 / (1 - 0.9025)
    # -> t = 0.95 * sqrt(2 / 0.0975) = 4.30265...; half-width t * sd / sqrt(3) = 2.48414...
    t = 0.95 * math.sqrt(2 / 0.0975)
    s = summarize([1.0, 2.0, 3.0])
    assert (s.n, s.mean, s.sd) == (3, 2.0, 1.0)
    assert s.ci_low == pytest.approx(2 - t / math.sqrt(3), rel=1e-12)
    assert s.ci_high == pytest.approx(2 + t / math.sqrt(3), rel=1e-12)
    assert s.ci_high - 2 == pytest.approx(2.484137711750, rel=1e-10) and s.interval == "t"


def test_summarize_pass_rates_get_wilson_intervals_within_0_and_1() -> None:
    # Wilson: the p with |p_hat - p| <= z sqrt(p (1 - p) / n), z = Phi^-1(0.975) = 1.959963984540054;
    # solving the quadratic: centre (p_hat + z^2 / 2n) / (1 + z^2 / n),
    # half-width z / (1 + z^2 / n) * sqrt(p_hat (1 - p_hat) / n + z^2 / 4n^2).
    z = 1.959963984540054
    n, p_hat = 6, 5 / 6
    centre = (p_hat + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p_hat * (1 - p_hat) / n + z * z / (4 * n * n))
    s = summarize([1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    assert s.interval == "wilson" and s.mean == pytest.approx(p_hat)
    assert s.ci_low == pytest.approx(centre - half, rel=1e-9) and s.ci_high == pytest.approx(centre + half, rel=1e-9)
    assert 0.4364 < s.ci_low < 0.4366 and 0.9699 < s.ci_high < 0.9700  # centre 0.70322, half-width 0.26673
    # the t interval there: sd sqrt(1/6), t_5 = 2.5706: 5/6 + 2.5706 * 0.40825 / sqrt(6) = 1.26 > 1
    # every item passed: p_hat = 1, so the half-width is z^2 / 2n / (1 + z^2 / n) and the interval
    # is [n / (n + z^2), 1]; a t interval would be the single point 1
    every = summarize([1.0, 1.0, 1.0])
    assert every.ci_low == pytest.approx(3 / (3 + z * z), rel=1e-9) and every.ci_high == pytest.approx(1.0)
    assert every.ci_low <= every.mean <= every.ci_high
    none = summarize([0.0, 0.0, 0.0, 0.0])
    assert none.ci_low == pytest.approx(0.0, abs=1e-12) and none.ci_high == pytest.approx(z * z / (4 + z * z))
    assert summarize([0.0, 0.5, 1.0]).interval == "t"  # one score off {0, 1}: a mean score, not a rate


def test_summarize_small_samples_give_none_not_nan() -> None:
    one = summarize([0.7])
    assert (one.n, one.mean, one.sd, one.ci_low, one.ci_high) == (1, 0.7, None, None, None)
    none = summarize([])
    assert (none.n, none.mean, none.sd, none.ci_low, none.ci_high) == (0, None, None, None, None)
    flat = summarize([0.5, 0.5, 0.5])  # sd 0: the interval collapses onto the mean
    assert (flat.sd, flat.ci_low, flat.ci_high) == (0.0, 0.5, 0.5)
    with pytest.raises(ValueError, match="missing"):
        summarize([0.5, None])  # type: ignore[list-item]


def test_pareto_front_by_hand() -> None:
    points = {
        "base": (1.0, 0.5),  # dominated by trained: same cost, better quality
        "trained": (1.0, 0.6),  # front
        "best_of_4": (5.0, 0.55),  # dominated by trained: cheaper and better
        "big": (5.0, 0.7),  # front: the best quality
        "twin": (5.0, 0.7),  # identical to big: neither dominates the other
        "cheap": (0.5, 0.3),  # front: the cheapest
    }
    assert pareto_front(points) == ["trained", "big", "twin", "cheap"]
    assert pareto_front({"only": (2.0, 0.1)}) == ["only"]
    assert pareto_front({}) == []
