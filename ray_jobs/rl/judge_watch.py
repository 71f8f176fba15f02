"""Judge bias diagnostics and reward-hacking alarms, computed from a step's scored samples.

Pure functions give each step's diagnostics (a metric is absent when it cannot be computed);
``JudgeWatch`` keeps a window of the last ``judge.alarms.window_steps`` steps and raises the
alarms. The contract with the judge pool is the keys of ``ScoredSample.terms``: ``judge`` (the
judge term's value), ``judge/position`` and ``judge/shown_of`` (group mode: the 0-based position
a completion was shown at in the first pass, and how many completions that request showed),
``judge/pass/0`` and ``judge/pass/1`` (group mode with two passes: each pass's reward),
``judge/member/<name>`` (an ensemble member's reward; absent when the member failed), and the
other reward terms by name.

The judge's score of a sample is ``terms["judge"]`` when the run has a judge term (None when
the judge failed: that sample is left out) and the sample's reward otherwise. Rank correlations
pooled over many samples (length, divergence) are Spearman's; agreements within one prompt group
(order, members), a handful of completions, are Kendall's tau-b, which counts agreeing minus
disagreeing pairs and handles ties.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats

from actors.messages import ScoredSample
from rewards.config import RewardConfig
from rewards.judge.alarms_config import MEMBER_KEY_PREFIX, AlarmConfig
from rewards.judge.config import JudgeConfig

__all__ = [
    "JudgeWatch",
    "diagnostics",
    "distinct_ratio",
    "group_distinct_ratios",
    "judge_score",
    "length_correlation",
    "member_agreement",
    "order_agreement",
    "position_effect",
    "position_means",
    "rank_correlation",
]

log = logging.getLogger(__name__)

JUDGE_KEY = "judge"
POSITION_KEY = "judge/position"
PASS_KEYS = ("judge/pass/0", "judge/pass/1")


def judge_score(s: ScoredSample) -> float | None:
    """The judge's score of a sample: ``terms["judge"]`` when present (None: the judge failed),
    else the sample's reward (a run without a judge term)."""
    return s.terms[JUDGE_KEY] if JUDGE_KEY in s.terms else s.reward


def rank_correlation(x: Sequence[float], y: Sequence[float], kendall: bool = False) -> float | None:
    """Spearman's rank correlation of paired values (Kendall's tau-b with ``kendall``); None when
    there are fewer than 2 pairs or either side is constant (the correlation is undefined)."""
    if len(x) != len(y):
        raise ValueError(f"rank_correlation: {len(x)} values against {len(y)}")
    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    result = stats.kendalltau(x, y) if kendall else stats.spearmanr(x, y)
    value = float(result.statistic)
    return None if math.isnan(value) else value


def _groups(scored: Sequence[ScoredSample]) -> dict[str, list[ScoredSample]]:
    """The samples of each prompt group (``group_id``), in order of appearance."""
    groups: dict[str, list[ScoredSample]] = {}
    for s in scored:
        groups.setdefault(s.sample.group_id, []).append(s)
    return groups


def length_correlation(scored: Sequence[ScoredSample]) -> float | None:
    """Spearman's correlation of the judge's score with completion length in tokens, pooled over
    the samples the judge scored (None: fewer than 2, or score or length constant)."""
    pairs = [(v, len(s.sample.completion_token_ids)) for s in scored if (v := judge_score(s)) is not None]
    return rank_correlation([p[0] for p in pairs], [p[1] for p in pairs])


def _positioned(scored: Sequence[ScoredSample]) -> list[tuple[str, int, float]]:
    """(group, shown position, judge score) of each sample with both."""
    return [
        (s.sample.group_id, round(p), v)
        for s in scored
        if (p := s.terms.get(POSITION_KEY)) is not None and (v := judge_score(s)) is not None
    ]


def position_means(scored: Sequence[ScoredSample]) -> dict[int, float]:
    """Mean judge score of the samples shown at each position (group mode; empty otherwise)."""
    by_position: dict[int, list[float]] = {}
    for _, p, v in _positioned(scored):
        by_position.setdefault(p, []).append(v)
    return {p: statistics.fmean(vs) for p, vs in sorted(by_position.items())}


@dataclass(frozen=True)
class PositionEffect:
    """The shown position's share of the within-prompt variance of the judge's score.

    ``eta_squared`` = SS_position / SS_total, where each score y is replaced by its residual
    r = y - (mean of its prompt group), SS_total = sum of r^2 over the samples and
    SS_position = sum over positions p of n_p * (mean r at p)^2 (the residuals' grand mean is 0,
    as each group's residuals sum to 0). Centring within the group keeps prompt difficulty out:
    a prompt whose completions all score high adds nothing. ``adjusted`` is the chance-corrected
    share (epsilon squared): (SS_position - (k - 1) * MS_rest) / SS_total with k positions,
    MS_rest = (SS_total - SS_position) / (N - G - (k - 1)), N samples in G groups; it is about 0
    when position does not matter (eta squared then averages about (k - 1) / (N - G)), and None
    when N - G - (k - 1) < 1.
    """

    eta_squared: float
    adjusted: float | None


def position_effect(scored: Sequence[ScoredSample]) -> PositionEffect | None:
    """``PositionEffect`` over the groups with at least 2 positioned, scored samples; None
    without 2 positions or when every residual is 0 (no within-prompt variance)."""
    by_group: dict[str, list[tuple[int, float]]] = {}
    for group, p, v in _positioned(scored):
        by_group.setdefault(group, []).append((p, v))
    residuals: dict[int, list[float]] = {}
    groups = 0
    for members in by_group.values():
        if len(members) < 2:
            continue
        groups += 1
        mean = statistics.fmean(v for _, v in members)
        for p, v in members:
            residuals.setdefault(p, []).append(v - mean)
    every = [r for rs in residuals.values() for r in rs]
    total = sum(r * r for r in every)
    if len(residuals) < 2 or total <= 0:
        return None
    between = sum(len(rs) * statistics.fmean(rs) ** 2 for rs in residuals.values())
    eta = min(between / total, 1.0)
    rest_df = len(every) - groups - (len(residuals) - 1)
    if rest_df < 1:
        return PositionEffect(eta, None)
    rest = max(total - between, 0.0) / rest_df
    return PositionEffect(eta, (between - (len(residuals) - 1) * rest) / total)


def _within_groups(scored: Sequence[ScoredSample], a: str, b: str) -> tuple[list[float], int]:
    """Kendall's tau-b of terms ``a`` and ``b`` within each group: (the taus, groups skipped for
    fewer than 2 samples with both, or a constant side)."""
    taus, skipped = [], 0
    for members in _groups(scored).values():
        pairs = [(x, y) for s in members if (x := s.terms.get(a)) is not None and (y := s.terms.get(b)) is not None]
        tau = rank_correlation([p[0] for p in pairs], [p[1] for p in pairs], kendall=True)
        if tau is None:
            skipped += 1
        else:
            taus.append(tau)
    return taus, skipped


def order_agreement(scored: Sequence[ScoredSample]) -> tuple[float | None, int]:
    """Mean over groups of Kendall's tau-b between the two passes' scores (group mode, two
    passes), and the groups skipped; (None, 0) when no sample has a second pass."""
    if not any(PASS_KEYS[1] in s.terms for s in scored):
        return None, 0
    taus, skipped = _within_groups(scored, *PASS_KEYS)
    return (statistics.fmean(taus) if taus else None), skipped


def member_agreement(scored: Sequence[ScoredSample]) -> tuple[float | None, int]:
    """Mean over groups and member pairs of Kendall's tau-b between two ensemble members' scores
    of a group's samples, and the (group, pair) comparisons skipped (< 2 samples both scored, or
    a member's scores constant); (None, 0) with fewer than 2 members."""
    names = sorted({k for s in scored for k in s.terms if k.startswith(MEMBER_KEY_PREFIX)})
    taus: list[float] = []
    skipped = 0
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            pair_taus, pair_skipped = _within_groups(scored, a, b)
            taus += pair_taus
            skipped += pair_skipped
    return (statistics.fmean(taus) if taus else None), skipped


def group_distinct_ratios(scored: Sequence[ScoredSample]) -> list[float]:
    """Per prompt group: distinct completion texts / completions generated (scored or not)."""
    return [len({s.sample.completion_text for s in m}) / len(m) for m in _groups(scored).values()]


def distinct_ratio(scored: Sequence[ScoredSample]) -> float | None:
    """Mean over prompt groups of ``group_distinct_ratios`` (None: no samples)."""
    ratios = group_distinct_ratios(scored)
    return statistics.fmean(ratios) if ratios else None


def diagnostics(scored: Sequence[ScoredSample]) -> dict[str, float]:
    """A step's bias diagnostics, each present only when computable: ``judge/length_corr``,
    ``judge/position_mean/<p>``, ``judge/position_effect``, ``judge/position_effect_adjusted``,
    ``judge/order_agreement`` (+ ``_skipped``), ``judge/member_agreement`` (+ ``_skipped``),
    ``completion/distinct_ratio``."""
    metrics: dict[str, float] = {}
    if (corr := length_correlation(scored)) is not None:
        metrics["judge/length_corr"] = corr
    metrics.update({f"judge/position_mean/{p}": v for p, v in position_means(scored).items()})
    if (effect := position_effect(scored)) is not None:
        metrics["judge/position_effect"] = effect.eta_squared
        if effect.adjusted is not None:
            metrics["judge/position_effect_adjusted"] = effect.adjusted
    for name, (value, skipped) in (("order", order_agreement(scored)), ("member", member_agreement(scored))):
        if value is not None:
            metrics[f"judge/{name}_agreement"] = value
        if value is not None or skipped:
            metrics[f"judge/{name}_agreement_skipped"] = float(skipped)
    if (ratio := distinct_ratio(scored)) is not None:
        metrics["completion/distinct_ratio"] = ratio
    return metrics


@dataclass(frozen=True)
class _StepRecord:
    """What the window keeps of one step: (judge score, length) and (judge score, check) pairs
    of its judged samples, and its groups' distinct ratios."""

    lengths: list[tuple[float, float]]
    checks: list[tuple[float, float]]
    distinct: list[float]


@dataclass(frozen=True)
class _Reading:
    """One alarm's reading over the window: the value (None: not computable), whether it fires,
    and the words of its console lines."""

    name: str
    metric: str
    value: float | None
    firing: bool
    what: str
    threshold: str
    advice: str


class JudgeWatch:
    """The step's bias diagnostics plus the reward-hacking alarms over the last
    ``alarms.window_steps`` steps: ``alarm/divergence`` (the judge's score against ``check_key``,
    a ``ScoredSample.terms`` key; absent when None), ``alarm/length`` and ``alarm/collapse``,
    each 1 while firing and 0 otherwise, and their window values ``alarm/window/check_corr``,
    ``alarm/window/length_corr``, ``alarm/window/distinct_ratio`` (when computable).

    Invariants: no alarm fires before the window holds ``window_steps`` steps; an alarm logs one
    warning when it starts and one info line when it ends, nothing while it stays on or off; a
    value that cannot be computed does not fire. The length alarm's reference is the window's
    length correlation the first time the window is full and it is computable.

    The state (the window, the reference, which alarms are on) is not checkpointed: a resumed run
    starts an empty window, so its alarms wait ``window_steps`` steps again and the length
    reference is the first full window after the resume.
    """

    def __init__(self, alarms: AlarmConfig, check_key: str | None) -> None:
        self.alarms = alarms
        self.check_key = check_key
        self._window: deque[_StepRecord] = deque(maxlen=alarms.window_steps)
        self._length_reference: float | None = None
        self._on: set[str] = set()

    @classmethod
    def for_config(cls, judge: JudgeConfig, reward: RewardConfig) -> JudgeWatch:
        """The watch of a run: ``judge.alarms``, checking against ``AlarmConfig.check_key`` of
        the configured reward terms and ensemble members."""
        key = judge.alarms.check_key([t.name for t in reward.terms], [m.name for m in judge.ensemble])
        return cls(judge.alarms, key)

    def step(self, step: int, scored: Sequence[ScoredSample]) -> dict[str, float]:
        """The diagnostics of ``scored`` (``diagnostics``) and, when alarms are enabled, the alarms
        after adding this step to the window (``step`` only names it in the log lines)."""
        metrics = diagnostics(scored)
        if not self.alarms.enabled:
            return metrics
        self._window.append(self._record(scored))
        for reading in self._readings():
            metrics[f"alarm/{reading.name}"] = float(reading.firing)
            if reading.value is not None:
                metrics[f"alarm/window/{reading.metric}"] = reading.value
            self._announce(step, reading)
        return metrics

    def _record(self, scored: Sequence[ScoredSample]) -> _StepRecord:
        judged = [(s, v) for s in scored if (v := judge_score(s)) is not None]
        key = self.check_key
        checks = [(v, c) for s, v in judged if key is not None and (c := s.terms.get(key)) is not None]
        lengths = [(v, float(len(s.sample.completion_token_ids))) for s, v in judged]
        return _StepRecord(lengths, checks, group_distinct_ratios(scored))

    def _readings(self) -> list[_Reading]:
        a, steps = self.alarms, len(self._window)
        full = steps == a.window_steps
        length = _pooled([r.lengths for r in self._window])
        if full and length is not None and self._length_reference is None:
            self._length_reference = length
        reference = self._length_reference
        ratios = [d for r in self._window for d in r.distinct]
        distinct = statistics.fmean(ratios) if ratios else None
        readings = []
        if self.check_key is not None:
            check = _pooled([r.checks for r in self._window])
            readings.append(
                _Reading(
                    "divergence",
                    "check_corr",
                    check,
                    full and check is not None and check < a.min_agreement,
                    f"rank correlation of the judge's score with {self.check_key}",
                    f"below judge.alarms.min_agreement={a.min_agreement:g}",
                    f"the policy may be pleasing the judge without doing better on {self.check_key}: "
                    f"read completions in samples.jsonl that the judge scores high and {self.check_key} low",
                )
            )
        readings.append(
            _Reading(
                "length",
                "length_corr",
                length,
                full
                and length is not None
                and reference is not None
                and length > max(a.max_length_correlation, reference),
                "rank correlation of the judge's score with completion length",
                f"above judge.alarms.max_length_correlation={a.max_length_correlation:g} and the first "
                f"window's {'n/a' if reference is None else f'{reference:.3f}'}",
                "the judge may be paying for length: compare long and short completions of one prompt in "
                "samples.jsonl; a length penalty term or a concision criterion in the rubric counters it",
            )
        )
        readings.append(
            _Reading(
                "collapse",
                "distinct_ratio",
                distinct,
                full and distinct is not None and distinct < a.min_distinct_ratio,
                "mean share of distinct completions per prompt",
                f"below judge.alarms.min_distinct_ratio={a.min_distinct_ratio:g}",
                "the policy may be repeating one answer the judge likes: read a group's completions in "
                "samples.jsonl and the entropy metric; a KL penalty (algorithm.beta) or a lower learning rate slows it",
            )
        )
        return readings

    def _announce(self, step: int, r: _Reading) -> None:
        """One warning when ``r`` starts firing, one info line when it stops."""
        value = "n/a" if r.value is None else f"{r.value:.3f}"
        span = f"over the last {len(self._window)} steps"
        if r.firing and r.name not in self._on:
            self._on.add(r.name)
            log.warning(
                "alarm/%s started at step %d: %s is %s %s, %s; %s",
                r.name,
                step,
                r.what,
                value,
                span,
                r.threshold,
                r.advice,
            )
        elif not r.firing and r.name in self._on:
            self._on.discard(r.name)
            log.info(
                "alarm/%s ended at step %d: %s is %s %s (no longer %s)", r.name, step, r.what, value, span, r.threshold
            )


def _pooled(steps: list[list[tuple[float, float]]]) -> float | None:
    """Spearman's correlation of the pairs of several steps, pooled."""
    pairs = [p for step in steps for p in step]
    return rank_correlation([p[0] for p in pairs], [p[1] for p in pairs])
