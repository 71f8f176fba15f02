import math

import pytest

from actors.messages import PromptItem, Sample, ScoredSample, ScoreResult
from algorithms.config import AlgorithmConfig
from ray_jobs.rl.pipeline import LeastLoadedRouter, assemble_batch, may_launch, refill_size


def _scored(
    group: str, reward, version: int = 0, error=None, idx: int = 0, length: int = 2, truncated: bool = False
) -> ScoredSample:
    prompt = PromptItem(prompt_id=group, row=0, prompt_text="p", prompt_token_ids=[1, 2])
    sample = Sample(
        prompt=prompt,
        group_id=group,
        group_index=idx,
        completion_text="c",
        completion_token_ids=[5] * length,
        sampling_logprobs=[-0.1] * length,
        policy_version=version,
        truncated=truncated,
    )
    return ScoredSample(sample, reward, error if reward is None else None)


def _result(*samples: ScoredSample) -> ScoreResult:
    return ScoreResult(0, list(samples), 0.0, 0.0, len(samples), 0)


def test_admission_control_bounds_staleness() -> None:
    # k = 0: batch b needs weights of version b.
    assert may_launch(3, 3, 0) and not may_launch(4, 3, 0)
    # k = 2: batch b may start with weights b - 2.
    assert may_launch(5, 3, 2) and not may_launch(6, 3, 2)


def test_router_balances_outstanding_calls() -> None:
    router = LeastLoadedRouter(3)
    assert [router.pick() for _ in range(4)] == [0, 1, 2, 0]
    router.finished(1)
    assert router.pick() == 1
    with pytest.raises(ValueError):
        LeastLoadedRouter(1).finished(0)


def test_router_weighs_calls_by_requests() -> None:
    router = LeastLoadedRouter(2)
    assert router.pick(4) == 0  # outstanding [4, 0]
    assert router.pick(1) == 1  # [4, 1]
    assert router.pick(2) == 1  # [4, 3]
    assert router.pick(1) == 1  # 3 < 4 -> [4, 4]
    assert router.pick(1) == 0  # tie -> lowest id -> [5, 4]
    router.finished(0, 4)  # [1, 4]
    assert router.pick(1) == 0
    with pytest.raises(ValueError, match="outstanding"):
        router.finished(1, 5)


def test_unscored_sample_is_excluded_from_baseline_and_loss() -> None:
    # Group g: rewards 1.0, 0.0 and one unscored. If the unscored sample counted as 0,
    # the mean would be 1/3; excluded, the mean is 0.5 and the advantages are +-1.
    res = ScoreResult(
        0,
        [_scored("g", 1.0, idx=0), _scored("g", 0.0, idx=1), _scored("g", None, error="judge_timeout", idx=2)],
        0.1,
        0.2,
        3,
        1,
    )
    out = assemble_batch(0, [res], AlgorithmConfig())
    assert len(out.train) == 2
    assert [round(a, 4) for a in out.train.advantages] == [1.0, -1.0]
    assert out.advantages[2] is None
    assert out.metrics["reward/unscored"] == 1.0
    assert out.metrics["reward/mean"] == 0.5
    assert out.metrics["judge/failures"] == 1.0


def test_groups_are_kept_apart_and_staleness_measured() -> None:
    res = ScoreResult(
        4,
        [
            _scored("a", 1.0, version=2),
            _scored("a", 3.0, version=2),
            _scored("b", 5.0, version=4),
            _scored("b", 5.0, version=4),
        ],
        0.0,
        0.0,
        4,
        0,
    )
    out = assemble_batch(4, [res], AlgorithmConfig())
    # group a: mean 2, std 1 -> -1, +1 (up to eps); group b: equal rewards -> 0, 0.
    assert out.train.advantages[2:] == [0.0, 0.0]
    assert math.isclose(out.train.advantages[1], 1.0, rel_tol=1e-5)
    assert out.metrics["staleness/max"] == 2.0 and out.metrics["staleness/mean"] == 1.0


def test_all_unscored_is_a_clear_error() -> None:
    res = ScoreResult(0, [_scored("g", None, error="judge_http_500")], 0.0, 0.0, 1, 1)
    with pytest.raises(ValueError, match="none of 1 samples was scored.*judge_http_500"):
        assemble_batch(0, [res], AlgorithmConfig())


def test_train_batch_carries_rewards_and_group_numbers() -> None:
    out = assemble_batch(
        0, [_result(_scored("x", 1.0), _scored("x", 0.0, idx=1), _scored("y", 0.5))], AlgorithmConfig()
    )
    assert out.train.rewards == [1.0, 0.0, 0.5] and out.train.group_ids == [0, 0, 1]


def test_soft_overlong_penalty_is_added_to_the_reward() -> None:
    # dapo: buffer = floor(0.2 * 10) = 2 tokens before the 10-token limit: free up to 8 tokens,
    # 9 tokens -> (8 - 9) / 2 = -0.5, 10 tokens -> -1. Judge rewards 1.0 each -> shaped 1.0, 0.5, 0.0.
    res = _result(_scored("g", 1.0, length=8), _scored("g", 1.0, idx=1, length=9), _scored("g", 1.0, idx=2, length=10))
    algo = AlgorithmConfig(name="dapo", overlong_filtering=False, dynamic_sampling=False)
    out = assemble_batch(0, [res], algo, max_new_tokens=10)
    assert out.train.rewards == [1.0, 0.5, 0.0]
    assert out.metrics["reward/overlong_penalty"] == pytest.approx(-0.5)  # mean of 0, -0.5, -1
    assert out.metrics["reward/mean"] == 1.0  # the judge's reward, unshaped
    # shaped rewards 1, 0.5, 0: mean 0.5, population std sqrt(1/6) -> advantages +-sqrt(1.5), 0
    assert out.train.advantages == pytest.approx([math.sqrt(1.5), 0.0, -math.sqrt(1.5)], rel=1e-5)
    # without a length limit (or with buffer 0) nothing is shaped
    assert assemble_batch(0, [res], algo).train.rewards == [1.0] * 3


def test_overlong_filtering_keeps_truncated_samples_in_the_baseline_only() -> None:
    # Group rewards 1 (truncated), 0, 0.5 -> mean 0.5 over all three, no scaling:
    # the two complete samples get -0.5 and 0.0; the truncated one leaves the loss.
    res = _result(_scored("g", 1.0, truncated=True), _scored("g", 0.0, idx=1), _scored("g", 0.5, idx=2))
    algo = AlgorithmConfig(name="dr_grpo", overlong_filtering=True)
    out = assemble_batch(0, [res], algo)
    assert out.train.advantages == [-0.5, 0.0] and len(out.train) == 2
    assert out.advantages == [None, -0.5, 0.0]
    assert out.metrics["samples/overlong_filtered"] == 1.0
    with pytest.raises(ValueError, match="truncated"):
        assemble_batch(0, [_result(_scored("g", 1.0, truncated=True), _scored("g", 0.0, idx=1, truncated=True))], algo)


def test_dynamic_sampling_drops_groups_without_signal_and_keeps_the_target() -> None:
    # a: equal rewards (dropped); b, c: signal. Target 1 group: b is kept, c is surplus.
    res = _result(
        _scored("a", 0.5),
        _scored("a", 0.5, idx=1),
        _scored("b", 1.0),
        _scored("b", 0.0, idx=1),
        _scored("c", 0.2),
        _scored("c", 0.4, idx=1),
    )
    out = assemble_batch(0, [res], AlgorithmConfig(name="dapo"), max_new_tokens=12, target_groups=1)
    assert len(out.train) == 2 and out.train.rewards == [1.0, 0.0]
    assert out.advantages[:2] == [None, None] and out.advantages[4:] == [None, None]
    assert out.metrics["reward/frac_zero_std"] == pytest.approx(1 / 3)
    assert out.metrics["dynamic_sampling/dropped_groups"] == 1.0
    assert out.metrics["dynamic_sampling/surplus_groups"] == 1.0
    # without dynamic sampling every group trains (a with advantage 0), and frac_zero_std is still logged
    plain = assemble_batch(0, [res], AlgorithmConfig())
    assert len(plain.train) == 6 and plain.metrics["reward/frac_zero_std"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="no group with differing rewards"):
        assemble_batch(0, [_result(_scored("a", 0.5), _scored("a", 0.5, idx=1))], AlgorithmConfig(name="dapo"))


def test_refill_size() -> None:
    assert refill_size(missing=4, kept=4, seen=8, limit=8) == 8  # half kept so far: ask for twice the missing
    assert refill_size(missing=2, kept=6, seen=8, limit=8) == 3  # ceil(2 * 8 / 6)
    assert refill_size(missing=3, kept=0, seen=8, limit=8) == 8  # nothing kept yet: a full step
    assert refill_size(missing=0, kept=8, seen=8, limit=8) == 0


def test_rloo_and_reinforce_pp_advantages_through_assembly() -> None:
    # rloo: rewards 1, 2, 6 -> leave-one-out advantages -3, -1.5, 4.5 (see test_advantages).
    res = _result(_scored("g", 1.0), _scored("g", 2.0, idx=1), _scored("g", 6.0, idx=2))
    assert assemble_batch(0, [res], AlgorithmConfig(name="rloo")).train.advantages == pytest.approx([-3, -1.5, 4.5])
    # reinforce_pp: raw rewards whitened over tokens. Lengths 1 and 3, rewards 0 and 4: token values
    # 0, 4, 4, 4 -> mean 3, variance (9 + 1 + 1 + 1) / 4 = 3 -> (0 - 3)/sqrt 3, (4 - 3)/sqrt 3.
    res = _result(_scored("g", 0.0, length=1), _scored("h", 4.0, length=3))
    adv = assemble_batch(0, [res], AlgorithmConfig(name="reinforce_pp")).train.advantages
    assert adv == pytest.approx([-3 / math.sqrt(3), 1 / math.sqrt(3)], rel=1e-6)


def test_throughput_window_averages_bursts_over_the_last_steps() -> None:
    from ray_jobs.rl.pipeline import ThroughputWindow

    window = ThroughputWindow(start=100.0, steps=2)
    # 16 samples per step; steps alternate 1.0 s and 0.2 s (bursts)
    assert window.add(101.0, 16) == {"throughput/samples_per_s": 16.0, "throughput/steps_per_s": 1.0}
    # window: both steps, 32 samples over 1.2 s
    rates = window.add(101.2, 16)
    assert rates["throughput/samples_per_s"] == pytest.approx(32 / 1.2)
    assert rates["throughput/steps_per_s"] == pytest.approx(2 / 1.2)
    # the first step leaves the window: steps 2 and 3 (0.2 s + 1.0 s), measured from step 1's end
    rates = window.add(102.2, 16)
    assert rates["throughput/samples_per_s"] == pytest.approx(32 / 1.2)
    assert rates["throughput/steps_per_s"] == pytest.approx(2 / 1.2)
