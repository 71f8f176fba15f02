import math

import pytest
import torch

from algorithms.advantages import group_normalized_advantages


def test_group_normalisation_by_hand() -> None:
    # Group 0: rewards 1, 3 -> mean 2, population std 1 -> advantages -1, +1.
    # Group 1: rewards 0, 0, 3 -> mean 1, deviations -1, -1, 2;
    #   variance (1 + 1 + 4) / 3 = 2 -> std sqrt(2).
    rewards = torch.tensor([1.0, 3.0, 0.0, 0.0, 3.0])
    groups = torch.tensor([0, 0, 1, 1, 1])
    adv = group_normalized_advantages(rewards, groups, eps=0.0)
    s2 = math.sqrt(2.0)
    expected = torch.tensor([-1.0, 1.0, -1 / s2, -1 / s2, 2 / s2])
    assert torch.allclose(adv, expected, atol=1e-6)


def test_equal_rewards_and_singletons_give_zero_advantage() -> None:
    rewards = torch.tensor([0.5, 0.5, 0.7])
    groups = torch.tensor([4, 4, 9])  # group 9 has one sample (others unscored)
    adv = group_normalized_advantages(rewards, groups)
    assert torch.equal(adv, torch.zeros(3))


def test_unscaled_is_centred_reward() -> None:
    rewards = torch.tensor([2.0, 4.0, 9.0])
    groups = torch.tensor([1, 1, 1])  # mean 5
    adv = group_normalized_advantages(rewards, groups, scale=False)
    assert torch.allclose(adv, torch.tensor([-3.0, -1.0, 4.0]))


def test_shape_mismatch_rejected() -> None:
    with pytest.raises(ValueError):
        group_normalized_advantages(torch.zeros(3), torch.zeros(2, dtype=torch.long))
