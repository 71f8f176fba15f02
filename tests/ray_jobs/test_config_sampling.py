"""RL training's sampling constraints, checked by the experiment config (the rollout
section alone also allows the evaluation settings: one sample, greedy)."""

from __future__ import annotations

import pytest

from ray_jobs.config.experiment import ConfigError, load_config


def test_training_needs_a_group() -> None:
    with pytest.raises(ConfigError, match=r"rollout.group_size must be at least 2 for RL training \(got 1\)") as err:
        load_config(None, ["rollout.group_size=1"])
    assert "\n" not in str(err.value)


def test_training_needs_a_positive_temperature() -> None:
    with pytest.raises(ConfigError, match=r"rollout.temperature must be above 0 for RL training") as err:
        load_config(None, ["rollout.temperature=0"])
    assert "\n" not in str(err.value)


def test_negative_values_are_still_field_errors() -> None:
    with pytest.raises(ConfigError, match=r"'rollout.temperature': Input should be greater than or equal to 0"):
        load_config(None, ["rollout.temperature=-1"])
    with pytest.raises(ConfigError, match=r"'rollout.group_size': Input should be greater than or equal to 1"):
        load_config(None, ["rollout.group_size=0"])


def test_the_smallest_training_settings_load() -> None:
    cfg = load_config(None, ["rollout.group_size=2", "rollout.temperature=0.01", "algorithm.num_minibatches=1"])
    assert (cfg.rollout.group_size, cfg.rollout.temperature) == (2, 0.01)
