import math

import pytest

from actors.messages import PromptItem, Sample, ScoredSample, ScoreResult
from algorithms.config import AlgorithmConfig
from ray_jobs.pipeline import LeastLoadedRouter, assemble_batch, may_launch


def _scored(group: str, reward, version: int = 0, error=None, idx: int = 0) -> ScoredSample:
    prompt = PromptItem(prompt_id=group, row=0, prompt_text="p", prompt_token_ids=[1, 2])
    sample = Sample(prompt=prompt, group_id=group, group_index=idx, completion_text="c",
                    completion_token_ids=[5, 6], sampling_logprobs=[-0.1, -0.2],
                    policy_version=version, truncated=False)
    return ScoredSample(sample, reward, error if reward is None else None)


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


def test_unscored_sample_is_excluded_from_baseline_and_loss() -> None:
    # Group g: rewards 1.0, 0.0 and one unscored. If the unscored sample counted as 0,
    # the mean would be 1/3; excluded, the mean is 0.5 and the advantages are +-1.
    res = ScoreResult(0, [_scored("g", 1.0, idx=0), _scored("g", 0.0, idx=1),
                          _scored("g", None, error="judge_timeout", idx=2)], 0.1, 0.2, 3, 1)
    out = assemble_batch(0, [res], AlgorithmConfig())
    assert len(out.train) == 2
    assert [round(a, 4) for a in out.train.advantages] == [1.0, -1.0]
    assert out.advantages[2] is None
    assert out.metrics["reward/unscored"] == 1.0
    assert out.metrics["reward/mean"] == 0.5
    assert out.metrics["judge/failures"] == 1.0


def test_groups_are_kept_apart_and_staleness_measured() -> None:
    res = ScoreResult(4, [_scored("a", 1.0, version=2), _scored("a", 3.0, version=2),
                          _scored("b", 5.0, version=4), _scored("b", 5.0, version=4)], 0.0, 0.0, 4, 0)
    out = assemble_batch(4, [res], AlgorithmConfig())
    # group a: mean 2, std 1 -> -1, +1 (up to eps); group b: equal rewards -> 0, 0.
    assert out.train.advantages[2:] == [0.0, 0.0]
    assert math.isclose(out.train.advantages[1], 1.0, rel_tol=1e-5)
    assert out.metrics["staleness/max"] == 2.0 and out.metrics["staleness/mean"] == 1.0


def test_all_unscored_is_a_clear_error() -> None:
    res = ScoreResult(0, [_scored("g", None, error="judge_http_500")], 0.0, 0.0, 1, 1)
    with pytest.raises(ValueError, match="none of 1 samples was scored.*judge_http_500"):
        assemble_batch(0, [res], AlgorithmConfig())
