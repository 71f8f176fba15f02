"""Judge bias diagnostics and reward-hacking alarms on hand-made scored samples (expected values
derived by hand in each test)."""

from __future__ import annotations

import logging

import pytest

from actors.messages import PromptItem, Sample, ScoredSample
from ray_jobs.config.experiment import ConfigError, load_config
from ray_jobs.rl.judge_watch import (
    JudgeWatch,
    diagnostics,
    distinct_ratio,
    length_correlation,
    member_agreement,
    order_agreement,
    position_effect,
    position_means,
)
from rewards.config import RewardConfig, RewardTermConfig
from rewards.judge.alarms_config import AlarmConfig
from rewards.judge.config import JudgeConfig, JudgeMemberConfig

WATCH_LOG = "ray_jobs.rl.judge_watch"


def _s(
    group: str = "g",
    idx: int = 0,
    judge: float | None = 1.0,
    length: int = 3,
    text: str | None = None,
    reward: float | None = None,
    **terms: float | None,
) -> ScoredSample:
    """A sample of ``group`` with the judge term ``judge`` (``reward`` defaults to it) and
    ``terms`` given with '/' written as '__' (``judge__position=1`` is ``judge/position``)."""
    prompt = PromptItem(prompt_id=group, row=0, prompt_text="p", prompt_token_ids=[1])
    sample = Sample(prompt, group, idx, text or f"{group}-{idx}", [7] * length, [-0.1] * length, 0, False)
    values = {"judge": judge, **{k.replace("__", "/"): v for k, v in terms.items()}}
    total = judge if reward is None else reward
    return ScoredSample(sample, total, None if total is not None else "judge_timeout", values)


def _group(group: str, scores: list[float], **per_sample: list[float | None]) -> list[ScoredSample]:
    """A group shown in order: sample i at position i, with judge score ``scores[i]``."""
    return [
        _s(group, i, v, judge__position=float(i), **{k: vs[i] for k, vs in per_sample.items()})
        for i, v in enumerate(scores)
    ]


def test_length_correlation_is_spearman_of_judged_samples() -> None:
    # lengths 1..4 rank 1..4; scores 1,3,2,4 rank 1,3,2,4: d = 0,-1,1,0, sum d^2 = 2,
    # rho = 1 - 6*2 / (4*(16-1)) = 0.8. The unjudged sample (judge None) is left out.
    scored = [_s(idx=i, judge=v, length=n) for i, (v, n) in enumerate([(1, 1), (3, 2), (2, 3), (4, 4)])]
    scored.append(_s(idx=4, judge=None, length=100, reward=5.0, other=1.0))
    assert length_correlation(scored) == pytest.approx(0.8)
    # without a judge term the reward is the score
    plain = [ScoredSample(s.sample, s.terms["judge"], None, {}) for s in scored[:4]]
    assert length_correlation(plain) == pytest.approx(0.8)


def test_position_effect_counts_within_prompt_variance_only() -> None:
    # Group A (mean 6): 8, 6, 4 -> residuals 2, 0, -2; group B (mean 3): 3, 1, 5 -> 0, -2, 2.
    # Mean residual by position: p0 1, p1 -1, p2 0 -> SS_position = 2*1 + 2*1 + 0 = 4;
    # SS_total = 4+0+4 + 0+4+4 = 16 -> eta^2 = 0.25. Adjusted: N=6, G=2, k=3, rest df 6-2-2 = 2,
    # MS_rest = (16-4)/2 = 6, (4 - 2*6)/16 = -0.5.
    scored = _group("A", [8, 6, 4]) + _group("B", [3, 1, 5])
    effect = position_effect(scored)
    assert effect is not None
    assert effect.eta_squared == pytest.approx(0.25)
    assert effect.adjusted == pytest.approx(-0.5)
    assert position_means(scored) == {0: pytest.approx(5.5), 1: pytest.approx(3.5), 2: pytest.approx(4.5)}
    # Prompt difficulty is not position: A = 9,7,8 and B = 3,1,2 differ by 6 overall, but within
    # each prompt the residuals 1,-1,0 are exactly the position's, so position explains all.
    effect = position_effect(_group("A", [9, 7, 8]) + _group("B", [3, 1, 2]))
    assert effect is not None and effect.eta_squared == pytest.approx(1.0) and effect.adjusted == pytest.approx(1.0)


def test_order_agreement_is_mean_kendall_tau_over_groups() -> None:
    # g1: pass 0 = 1,2,3, pass 1 = 1,3,2: pairs (0,1) and (0,2) agree, (1,2) not: tau = 1/3.
    # g2: reversed: tau = -1. g3: pass 0 constant, skipped. Mean (1/3 - 1) / 2 = -1/3.
    scored = (
        _group("g1", [1, 2, 3], judge__pass__0=[1, 2, 3], judge__pass__1=[1, 3, 2])
        + _group("g2", [1, 2, 3], judge__pass__0=[1, 2, 3], judge__pass__1=[3, 2, 1])
        + _group("g3", [1, 2, 3], judge__pass__0=[2, 2, 2], judge__pass__1=[1, 2, 3])
    )
    value, skipped = order_agreement(scored)
    assert value == pytest.approx(-1 / 3) and skipped == 1
    assert order_agreement(_group("g1", [1, 2, 3])) == (None, 0)  # one pass: nothing to compare


def test_member_agreement_over_groups_and_pairs() -> None:
    # g1: a = 1,2,3, b = 1,2,3, c = 3,2,1: tau(a,b) = 1, tau(a,c) = tau(b,c) = -1.
    # g2: c failed on every sample (absent): (a,c) and (b,c) skipped; a = 1,2,3, b = 2,1,3:
    # (0,1) disagree, (0,2) and (1,2) agree: tau = 1/3. Mean (1 - 1 - 1 + 1/3) / 4 = -1/6.
    scored = _group(
        "g1", [1, 2, 3], judge__member__a=[1, 2, 3], judge__member__b=[1, 2, 3], judge__member__c=[3, 2, 1]
    ) + _group("g2", [1, 2, 3], judge__member__a=[1, 2, 3], judge__member__b=[2, 1, 3])
    value, skipped = member_agreement(scored)
    assert value == pytest.approx(-1 / 6) and skipped == 2


def test_distinct_ratio_counts_every_generated_completion() -> None:
    # g1: a, a, b, c (one unscored) -> 3/4; g2: x, x -> 1/2; mean 0.625.
    scored = [_s("g1", i, text=t) for i, t in enumerate("aab")] + [_s("g1", 3, judge=None, text="c")]
    scored += [_s("g2", i, text="x") for i in range(2)]
    assert distinct_ratio(scored) == pytest.approx(0.625)


def test_metrics_absent_when_not_computable() -> None:
    # pointwise judging (no positions, passes or members), constant scores: no correlation
    constant = [_s("g", i, judge=0.5, length=i + 1) for i in range(3)]
    assert diagnostics(constant) == {"completion/distinct_ratio": 1.0}
    assert diagnostics([]) == {}
    # positions shown, but each group has one scored sample: no within-prompt variance
    lone = [_s("a", 0, 1.0, judge__position=0.0), _s("b", 0, 2.0, judge__position=1.0)]
    metrics = diagnostics(lone)
    assert "judge/position_effect" not in metrics and metrics["judge/position_mean/1"] == 2.0


def test_diagnostics_names() -> None:
    scored = _group("A", [8, 6, 4], judge__pass__0=[8, 6, 4], judge__pass__1=[8, 4, 6]) + _group(
        "B", [3, 1, 5], judge__pass__0=[3, 1, 5], judge__pass__1=[3, 1, 5]
    )
    metrics = diagnostics(scored)
    assert metrics["judge/position_effect"] == pytest.approx(0.25)
    assert metrics["judge/position_effect_adjusted"] == pytest.approx(-0.5)
    assert metrics["judge/position_mean/0"] == pytest.approx(5.5)
    assert metrics["judge/order_agreement"] == pytest.approx((1 / 3 + 1) / 2)  # A: 1/3 as above, B: 1
    assert metrics["judge/order_agreement_skipped"] == 0.0
    assert "judge/member_agreement" not in metrics and "judge/member_agreement_skipped" not in metrics
    assert "judge/length_corr" not in metrics  # every completion has 3 tokens


def _step_texts(texts: str) -> list[ScoredSample]:
    """One group of constant score and length whose completions are ``texts`` (one letter each)."""
    return [_s("g", i, judge=1.0, text=t) for i, t in enumerate(texts)]


def test_collapse_alarm_starts_and_ends_once(caplog: pytest.LogCaptureFixture) -> None:
    watch = JudgeWatch(AlarmConfig(window_steps=2, min_distinct_ratio=0.5), None)
    caplog.set_level(logging.INFO, logger=WATCH_LOG)
    # per-step distinct ratios 1, 1, 0.25, 0.25, 0.25, 1 -> window means -, 1, 0.625, 0.25, 0.25, 0.625
    fired = [
        watch.step(n, _step_texts(t))["alarm/collapse"]
        for n, t in enumerate(["abcd", "abcd", "aaaa", "aaaa", "aaaa", "abcd"])
    ]
    assert fired == [0, 0, 0, 1, 1, 0]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    line = warnings[0].getMessage()
    assert "alarm/collapse started at step 3" in line and "0.250" in line
    assert "judge.alarms.min_distinct_ratio=0.5" in line and "samples.jsonl" in line and "\n" not in line
    ended = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(ended) == 1 and "alarm/collapse ended at step 5" in ended[0] and "0.625" in ended[0]


def _lengths_step(scores: list[float], **terms: list[float]) -> list[ScoredSample]:
    """Four samples of lengths 1..4 with judge scores ``scores``."""
    return [_s("g", i, v, length=i + 1, **{k: vs[i] for k, vs in terms.items()}) for i, v in enumerate(scores)]


def test_length_alarm_needs_to_rise_above_threshold_and_first_window(caplog: pytest.LogCaptureFixture) -> None:
    # Spearman against lengths 1..4: scores 3,1,2,4 -> 0.4; 1,3,2,4 -> 0.8 (sum d^2 = 6 and 2).
    caplog.set_level(logging.INFO, logger=WATCH_LOG)
    watch = JudgeWatch(AlarmConfig(window_steps=1, max_length_correlation=0.6), None)
    low, high = [3.0, 1, 2, 4], [1.0, 3, 2, 4]
    metrics = [watch.step(n, _lengths_step(s)) for n, s in enumerate([low, high, high, low])]
    assert [m["alarm/length"] for m in metrics] == [0, 1, 1, 0]
    assert metrics[1]["alarm/window/length_corr"] == pytest.approx(0.8)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "max_length_correlation=0.6" in warnings[0] and "first window's 0.400" in warnings[0]
    # a judge that starts out that length-biased raises nothing: 0.8 is not above the first window's 0.8
    steady = JudgeWatch(AlarmConfig(window_steps=1, max_length_correlation=0.6), None)
    assert [steady.step(n, _lengths_step(high))["alarm/length"] for n in range(3)] == [0, 0, 0]


def test_divergence_alarm_names_the_check(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=WATCH_LOG)
    watch = JudgeWatch(AlarmConfig(window_steps=1, min_agreement=0.0), "domain_format")
    agree = watch.step(0, _lengths_step([1.0, 2, 3, 4], domain_format=[0.0, 0, 1, 1]))
    disagree = watch.step(1, _lengths_step([1.0, 2, 3, 4], domain_format=[1.0, 1, 0, 0]))
    assert agree["alarm/divergence"] == 0 and disagree["alarm/divergence"] == 1
    assert disagree["alarm/window/check_corr"] < 0
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "alarm/divergence started at step 1" in warning and "domain_format" in warning


def test_no_alarm_before_the_window_is_full() -> None:
    watch = JudgeWatch(AlarmConfig(window_steps=3, min_distinct_ratio=0.5), None)
    assert [watch.step(n, _step_texts("aaaa"))["alarm/collapse"] for n in range(4)] == [0, 0, 1, 1]


def test_disabled_alarms_leave_the_diagnostics() -> None:
    metrics = JudgeWatch(AlarmConfig(enabled=False), "x").step(0, _step_texts("aaaa"))
    assert metrics == {"completion/distinct_ratio": 0.25}


def _watch(terms: list[str], members: list[str], check: str | None = None) -> JudgeWatch:
    judge = JudgeConfig(
        ensemble=[JudgeMemberConfig(name=m, base_url=f"http://{m}.test/v1") for m in members],
        alarms=AlarmConfig(check=check),
    )
    return JudgeWatch.for_config(judge, RewardConfig(terms=[RewardTermConfig(name=t, weight=1.0) for t in terms]))


def test_default_check() -> None:
    assert _watch(["judge"], []).check_key is None
    assert _watch(["judge", "domain_format", "completion_length_penalty"], []).check_key == "domain_format"
    assert _watch(["judge", "domain_format"], ["a", "b"]).check_key == "judge/member/b"
    assert _watch(["judge", "domain_format"], ["a", "b"], check="a").check_key == "judge/member/a"
    assert _watch(["judge", "domain_format"], ["a", "b"], check="domain_format").check_key == "domain_format"
    # without a check there is no divergence alarm at all
    assert "alarm/divergence" not in _watch(["judge"], []).step(0, _step_texts("ab"))


@pytest.mark.parametrize("check", ["judge", "nope"])
def test_unknown_check_is_one_config_error(check: str) -> None:
    with pytest.raises(ConfigError, match=f"judge.alarms.check '{check}' names neither"):
        load_config(None, [f"judge.alarms.check={check}"])
