import math

import pytest
import torch

from algorithms.advantages import (
    baseline_and_scale,
    group_has_signal,
    group_normalized_advantages,
    kl_penalised_returns,
    sequence_advantages,
    token_advantages,
    whiten,
)


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


def test_leave_one_out_baseline_by_hand() -> None:
    # Group 0: rewards 1, 2, 6 (sum 9). Baselines exclude the sample itself:
    #   b0 = (2 + 6) / 2 = 4, b1 = (1 + 6) / 2 = 3.5, b2 = (1 + 2) / 2 = 1.5
    #   -> advantages 1 - 4 = -3, 2 - 3.5 = -1.5, 6 - 1.5 = 4.5.
    # Group 1: a lone sample: baseline = its own reward -> advantage 0.
    rewards = torch.tensor([1.0, 2.0, 6.0, 5.0])
    groups = torch.tensor([0, 0, 0, 1])
    b, s = baseline_and_scale(rewards, groups, "leave_one_out", "none")
    assert torch.allclose(b, torch.tensor([4.0, 3.5, 1.5, 5.0]))
    assert torch.equal(s, torch.ones(4))
    adv = sequence_advantages(rewards, groups, "leave_one_out", "none")
    assert torch.allclose(adv, torch.tensor([-3.0, -1.5, 4.5, 0.0]))
    # RLOO = (G / (G - 1)) x the group-mean advantage: mean 3, centred -2, -1, 3, times 3/2.
    assert torch.allclose(adv[:3], 1.5 * torch.tensor([-2.0, -1.0, 3.0]))


def test_leave_one_out_baseline_excludes_the_sample_itself() -> None:
    # Changing r_0 changes the baselines of the others, never its own.
    groups = torch.tensor([0, 0, 0])
    b1, _ = baseline_and_scale(torch.tensor([1.0, 2.0, 6.0]), groups, "leave_one_out", "none")
    b2, _ = baseline_and_scale(torch.tensor([100.0, 2.0, 6.0]), groups, "leave_one_out", "none")
    assert b1[0] == b2[0] == 4.0
    assert b1[1] != b2[1] and b1[2] != b2[2]


def test_batch_scale_and_no_baseline_by_hand() -> None:
    # Rewards 0, 2 (group 0) and 4, 6 (group 1): batch mean 3, deviations -3, -1, 1, 3,
    # population variance (9 + 1 + 1 + 9) / 4 = 5 -> batch std sqrt(5).
    rewards = torch.tensor([0.0, 2.0, 4.0, 6.0])
    groups = torch.tensor([0, 0, 1, 1])
    adv = sequence_advantages(rewards, groups, "group_mean", "batch", eps=0.0)
    # group means 1 and 5 -> centred -1, 1, -1, 1, each / sqrt(5)
    assert torch.allclose(adv, torch.tensor([-1.0, 1.0, -1.0, 1.0]) / math.sqrt(5.0))
    # baseline none, scale none: the raw reward (REINFORCE++ before whitening)
    assert torch.equal(sequence_advantages(rewards, groups, "none", "none"), rewards)


def test_group_has_signal() -> None:
    # group 7: 0.3, 0.3 (no signal); group 2: 0.1, 0.9 (signal); group 5: one sample (no signal)
    rewards = torch.tensor([0.3, 0.1, 0.3, 0.9, 0.5])
    groups = torch.tensor([7, 2, 7, 2, 5])
    assert group_has_signal(rewards, groups).tolist() == [False, True, False, True, False]


def test_whiten_by_hand_ignores_padding() -> None:
    # Real entries 1, 2, 3 (sequence 0 has 2 tokens, sequence 1 has 1); padding 100 ignored.
    # mean 2, population variance (1 + 0 + 1) / 3 = 2/3 -> (v - 2) / sqrt(2/3).
    values = torch.tensor([[1.0, 2.0], [3.0, 100.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    out = whiten(values, mask, eps=0.0)
    k = 1 / math.sqrt(2 / 3)
    assert torch.allclose(out, torch.tensor([[-k, 0.0], [k, 0.0]]), atol=1e-6)


def test_kl_penalised_returns_by_hand() -> None:
    # Sequence 0 (3 tokens): reward 1, per-token KL 0.1, 0.2, 0.3, beta 0.5:
    #   G_0 = 1 - 0.5 * 0.6 = 0.7, G_1 = 1 - 0.5 * 0.5 = 0.75, G_2 = 1 - 0.5 * 0.3 = 0.85.
    # Sequence 1 (1 token, then padding whose KL 9 must be ignored): reward 2, KL 0.4:
    #   G_0 = 2 - 0.2 = 1.8.
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    returns, totals = kl_penalised_returns(torch.tensor([1.0, 2.0]), kl, mask, beta=0.5)
    assert torch.allclose(returns, torch.tensor([[0.7, 0.75, 0.85], [1.8, 0.0, 0.0]]))
    assert torch.allclose(totals, torch.tensor([0.7, 1.8]))


def test_token_advantages_first_token_is_the_sequence_estimator() -> None:
    # One group of two: rewards 1 and 0, KL per token 0.2 (2 tokens) and 0.4 (1 token), beta 1.
    # Totals: 1 - 0.4 = 0.6 and 0 - 0.4 = -0.4 -> group mean 0.1, no scaling:
    #   sequence 0: G = (0.6, 1 - 0.2 = 0.8) -> A = (0.5, 0.7); sequence 1: G = (-0.4) -> A = -0.5.
    kl = torch.tensor([[0.2, 0.2], [0.4, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    rewards, groups = torch.tensor([1.0, 0.0]), torch.tensor([0, 0])
    adv = token_advantages(rewards, groups, mask, kl, beta=1.0, baseline="group_mean", scale="none")
    assert torch.allclose(adv, torch.tensor([[0.5, 0.7], [-0.5, 0.0]]))
    totals = torch.tensor([0.6, -0.4])
    assert torch.allclose(adv[:, 0], sequence_advantages(totals, groups, "group_mean", "none"))
    # Without KL every token carries the sequence advantage.
    plain = token_advantages(rewards, groups, mask, None, 0.0, "group_mean", "none")
    assert torch.allclose(plain, torch.tensor([[0.5, 0.5], [-0.5, 0.0]]))


def test_token_advantages_whitened_over_tokens() -> None:
    # REINFORCE++: baseline none, scale none, whitened over the 3 real tokens.
    # Rewards 1 (2 tokens) and 4 (1 token), no KL: values 1, 1, 4 -> mean 2, variance (1+1+4)/3 = 2.
    mask = torch.tensor([[1, 1], [1, 0]])
    adv = token_advantages(
        torch.tensor([1.0, 4.0]), torch.tensor([0, 1]), mask, None, 0.0, "none", "none", whiten_tokens=True
    )
    r = 1 / math.sqrt(2.0)
    assert torch.allclose(adv, torch.tensor([[-r, -r], [2 * r, 0.0]]), atol=1e-6)
