"""Statistics for evaluation: pure functions over per-item scores and flags.

Nothing here touches models or Ray; every function takes plain sequences and
returns plain numbers, so the expected values can be derived by hand in tests.
A value that cannot be computed (the sd of one score, the mean of none) is
``None``, never NaN, so results serialise to JSON as ``null``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class RefusalRates:
    """How often answers were blocked, split by whether the request should have been.

    ``block_rate`` is the share of blocked answers among requests labelled
    inappropriate (higher is better), ``false_block_rate`` the share among
    requests labelled appropriate (lower is better); ``None`` when there is no
    such request. Items without a label or without a blocked flag (unscored)
    are left out and counted in ``unknown``.
    """

    block_rate: float | None
    false_block_rate: float | None
    n_inappropriate: int
    n_appropriate: int
    unknown: int


def refusal_rates(labels: Sequence[bool | None], blocked: Sequence[float | bool | None]) -> RefusalRates:
    """Block and false-block rates of items with label ``labels[i]`` (True: inappropriate) and
    answer flag ``blocked[i]`` (truthy: the answer refused; None: not known)."""
    if len(labels) != len(blocked):
        raise ValueError(f"labels and blocked differ in length ({len(labels)} vs {len(blocked)})")
    bad = [bool(b) for lab, b in zip(labels, blocked) if lab is True and b is not None]
    good = [bool(b) for lab, b in zip(labels, blocked) if lab is False and b is not None]
    unknown = len(labels) - len(bad) - len(good)
    return RefusalRates(
        block_rate=sum(bad) / len(bad) if bad else None,
        false_block_rate=sum(good) / len(good) if good else None,
        n_inappropriate=len(bad),
        n_appropriate=len(good),
        unknown=unknown,
    )


def _finite(values: Sequence[float], name: str) -> np.ndarray:
    """``values`` as a 1-D float array; ValueError on a None, NaN or infinite entry."""
    arr = np.asarray(values, dtype=float)  # None becomes NaN here
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a flat sequence of scores")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has missing or non-finite values; leave unscored items out")
    return arr


@dataclass(frozen=True)
class ConditionSummary:
    """Mean of ``n`` scores with its sample sd (ddof=1) and confidence interval: Wilson's score
    interval when every score is 0 or 1 (a pass rate), else Student-t (``interval`` says which).

    Invariants: ``n == 0`` -> every other field is None; ``n == 1`` -> ``sd``,
    ``ci_low``, ``ci_high`` and ``interval`` are None; otherwise ``ci_low <= mean <= ci_high``;
    a Wilson interval lies within [0, 1]; a t interval collapses onto the mean when every score is
    the same.
    """

    n: int
    mean: float | None
    sd: float | None
    ci_low: float | None
    ci_high: float | None
    interval: Literal["t", "wilson"] | None = None


def summarize(scores: Sequence[float], confidence: float = 0.95) -> ConditionSummary:
    """Mean, sd and interval of ``scores`` (all finite). Scores all 0 or 1 get Wilson's score
    interval (``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``): the t interval
    ``mean ± t_{(1+confidence)/2, n-1} · sd / sqrt(n)`` that the others get would leave [0, 1] on
    a small or lopsided sample (5 passes of 6: up to 1.26) and shrink to a point when all pass."""
    from scipy import stats

    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    arr = _finite(scores, "scores")
    n = len(arr)
    if n == 0:
        return ConditionSummary(0, None, None, None, None)
    mean = float(arr.mean())
    if n == 1:
        return ConditionSummary(1, mean, None, None, None)
    sd = float(arr.std(ddof=1))
    if np.all((arr == 0.0) | (arr == 1.0)):
        ci = stats.binomtest(int(arr.sum()), n).proportion_ci(confidence_level=confidence, method="wilson")
        return ConditionSummary(n, mean, sd, float(ci.low), float(ci.high), "wilson")
    half = float(stats.t.ppf((1.0 + confidence) / 2.0, n - 1)) * sd / math.sqrt(n)
    return ConditionSummary(n, mean, sd, mean - half, mean + half, "t")


@dataclass(frozen=True)
class PairedComparison:
    """``other`` against ``baseline`` on the same ``n`` items: Δ_i = other_i − baseline_i.

    ``mean_delta`` is the mean Δ, ``[ci_low, ci_high]`` its percentile bootstrap
    interval, ``p_one_sided`` the share of the bootstrap distribution of mean Δ
    that is ≤ 0 (H1: other is better). ``wins + losses + ties == n`` (other >,
    <, == baseline). ``resamples`` and ``seed`` are those asked for, recorded so
    that the numbers can be reproduced.
    """

    n: int
    mean_delta: float
    ci_low: float
    ci_high: float
    p_one_sided: float
    wins: int
    losses: int
    ties: int
    resamples: int
    seed: int


def _mean_delta(baseline: np.ndarray, other: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(other - baseline, axis=axis)


def paired_bootstrap(
    baseline: Sequence[float], other: Sequence[float], resamples: int = 10_000, seed: int = 0, confidence: float = 0.95
) -> PairedComparison:
    """Paired bootstrap of the mean difference ``other − baseline``.

    Both sequences hold one score per item, in the same item order, with no
    missing value (ValueError otherwise, and for zero items). The resampling is
    ``scipy.stats.bootstrap((baseline, other), ..., paired=True,
    method="percentile", rng=np.random.default_rng(seed))``: items are drawn with
    replacement as pairs. The percentile method is used rather than BCa because
    BCa's acceleration (a jackknife) and bias correction break down when many
    deltas are tied, as judge scores on a coarse scale are, or all equal.

    Deterministic in ``seed``. When every Δ is the same (up to rounding), the
    bootstrap distribution is that one value, so it is returned without
    resampling: CI ``[Δ, Δ]``, p 1.0 if Δ ≤ 0 else 0.0; no warning, no NaN.
    """
    from scipy import stats

    a, b = _finite(baseline, "baseline"), _finite(other, "other")
    if len(a) != len(b):
        raise ValueError(f"paired scores differ in length ({len(a)} vs {len(b)})")
    if len(a) == 0:
        raise ValueError("no paired items to compare")
    if resamples < 1 or not 0.0 < confidence < 1.0:
        raise ValueError(f"need resamples >= 1 and confidence in (0, 1), got {resamples}, {confidence}")
    delta = b - a
    counts = {"wins": int(np.sum(b > a)), "losses": int(np.sum(b < a)), "ties": int(np.sum(b == a))}
    if np.ptp(delta) <= 1e-12 * float(np.max(np.abs(delta))):
        d = float(delta.mean())
        return PairedComparison(len(a), d, d, d, 1.0 if d <= 0 else 0.0, resamples=resamples, seed=seed, **counts)
    res = stats.bootstrap(
        (a, b),
        _mean_delta,
        paired=True,
        vectorized=True,
        n_resamples=resamples,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    p = float(np.mean(res.bootstrap_distribution <= 0.0))
    return PairedComparison(
        len(a),
        float(delta.mean()),
        float(res.confidence_interval.low),
        float(res.confidence_interval.high),
        p,
        resamples=resamples,
        seed=seed,
        **counts,
    )


def pareto_front(points: Mapping[str, tuple[float, float]]) -> list[str]:
    """Names of the ``(cost, quality)`` points that no other point dominates, in input order.

    A point is dominated when another has cost ≤ and quality ≥ with at least one
    strict; two identical points therefore both stay on the front.
    """
    items = list(points.items())
    front = []
    for name, (cost, quality) in items:
        dominated = any(
            c <= cost and q >= quality and (c < cost or q > quality) for other, (c, q) in items if other != name
        )
        if not dominated:
            front.append(name)
    return front
