import pytest
from pydantic import ValidationError

from algorithms.config import AlgorithmConfig
from algorithms.presets import PRESETS


def test_every_preset_resolves_to_its_papers_defaults() -> None:
    expected = {  # name: (eps, eps_high, beta, level, baseline, scale, aggregation, minibatches, dynamic, filtering)
        "grpo": (0.2, 0.2, 0.0, "token", "group_mean", "group", "sequence_mean", 1, False, False),
        "gspo": (3e-4, 4e-4, 0.0, "sequence", "group_mean", "group", "sequence_mean", 4, False, False),
        "dr_grpo": (0.2, 0.2, 0.0, "token", "group_mean", "none", "constant", 1, False, False),
        "dapo": (0.2, 0.28, 0.0, "token", "group_mean", "group", "token_mean", 1, True, True),
        "rloo": (0.2, 0.2, 0.05, "token", "leave_one_out", "none", "sequence_sum", 1, False, False),
        "reinforce_pp": (0.2, 0.2, 0.01, "token", "none", "none", "token_mean", 1, False, False),
    }
    assert set(expected) == set(PRESETS)
    for name, values in expected.items():
        s = AlgorithmConfig(name=name).settings
        got = (
            s.epsilon,
            s.epsilon_high,
            s.beta,
            s.importance_sampling_level,
            s.baseline,
            s.scale_rewards,
            s.loss_aggregation,
            s.num_minibatches,
            s.dynamic_sampling,
            s.overlong_filtering,
        )
        assert got == values, name
    assert AlgorithmConfig(name="reinforce_pp").settings.whiten_advantages
    assert AlgorithmConfig(name="rloo").settings.kl_penalty == "reward"
    assert AlgorithmConfig(name="grpo").settings.kl_estimator == "k3"


def test_knobs_override_the_preset() -> None:
    s = AlgorithmConfig(
        name="dapo", epsilon_high=0.3, dynamic_sampling=False, beta=0.04, importance_sampling_level="sequence_token"
    ).settings
    assert (s.epsilon, s.epsilon_high, s.dynamic_sampling, s.beta) == (0.2, 0.3, False, 0.04)
    assert s.importance_sampling_level == "sequence_token" and s.needs_reference


def test_null_fields_follow_the_name() -> None:
    # A config copied from the CPU default (grpo) keeps nulls, so changing the name changes everything.
    cfg = AlgorithmConfig.model_validate({**AlgorithmConfig().model_dump(), "name": "gspo"})
    assert cfg.settings.epsilon == 3e-4 and cfg.settings.num_minibatches == 4


def test_scale_rewards_bool_migrates() -> None:
    assert AlgorithmConfig(scale_rewards=True).settings.scale_rewards == "group"
    assert AlgorithmConfig(scale_rewards=False).settings.scale_rewards == "none"
    assert AlgorithmConfig(scale_rewards="batch").settings.scale_rewards == "batch"


def test_overlong_buffer_of_dapo_is_a_fifth_of_the_limit() -> None:
    assert AlgorithmConfig(name="dapo").settings.overlong_buffer_tokens(20480) == 4096
    assert AlgorithmConfig(name="dapo").settings.overlong_buffer_tokens(12) == 2
    assert AlgorithmConfig(name="grpo").settings.overlong_buffer_tokens(12) == 0
    assert AlgorithmConfig(name="grpo", overlong_buffer=3).settings.overlong_buffer_tokens(12) == 3


def test_proximal_policy_only_when_needed() -> None:
    assert not AlgorithmConfig().settings.uses_proximal
    assert AlgorithmConfig(num_iterations=2).settings.uses_proximal
    assert AlgorithmConfig(rollout_correction="truncate").settings.uses_proximal
    assert not AlgorithmConfig(name="gspo").settings.uses_proximal  # minibatches alone keep the behaviour policy


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "ppo"},
        {"epsilon": 1.0},
        {"beta": -0.1},
        {"rollout_correction_cap": 1.0},
        {"scale_rewards": "sometimes"},
        {"num_iterations": 0},
        {"kl_estimator": "k4"},
    ],
)
def test_bad_values_are_rejected(bad: dict) -> None:
    with pytest.raises(ValidationError):
        AlgorithmConfig(**bad)
