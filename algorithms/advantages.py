"""Advantage estimators over groups of samples of the same prompt (pure torch)."""

from __future__ import annotations

import torch


def group_normalized_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    scale: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """GRPO advantages: ``(r - mean_group(r)) / (std_group(r) + eps)``.

    ``rewards`` and ``group_ids`` are 1-D of equal length; samples with the same
    group id were generated from the same prompt. Only scored samples may be
    passed in: an unscored sample must be left out by the caller so that it
    does not bias its group's baseline. The std is the population std (divide by
    n) as in the GRPO reference implementations' "group" scaling. A group of one
    sample, or one whose rewards are all equal, gets advantage 0 for every member.
    With ``scale=False`` the advantage is the centred reward (Dr.GRPO).
    """
    if rewards.shape != group_ids.shape or rewards.dim() != 1:
        raise ValueError("rewards and group_ids must be 1-D tensors of the same length")
    rewards = rewards.float()
    _, inverse = torch.unique(group_ids, return_inverse=True)
    n_groups = int(inverse.max().item()) + 1 if len(rewards) else 0
    counts = torch.zeros(n_groups).index_add_(0, inverse, torch.ones_like(rewards))
    sums = torch.zeros(n_groups).index_add_(0, inverse, rewards)
    means = sums / counts
    centred = rewards - means[inverse]
    if not scale:
        return centred
    sq = torch.zeros(n_groups).index_add_(0, inverse, centred**2)
    std = torch.sqrt(sq / counts)
    return centred / (std[inverse] + eps)
