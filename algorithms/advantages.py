"""Advantage estimators over groups of samples of the same prompt (pure torch).

Conventions: ``rewards`` and ``group_ids`` are 1-D of equal length (B,); samples
with the same group id were generated from the same prompt. Only scored samples
may be passed in: an unscored sample must be left out by the caller so that it
does not bias its group's baseline. Standard deviations are population stds
(divide by n). Per-token tensors are (B, T) with ``mask`` 1 on completion tokens.

The estimators, as ``A = (r - b) / s``:

- baseline ``group_mean`` (GRPO, DAPO, Dr.GRPO): ``b_i`` = mean reward of i's group;
- baseline ``leave_one_out`` (RLOO): ``b_i`` = mean reward of the *other* samples
  of i's group (``b_i = r_i``, so ``A_i = 0``, when i is alone);
- baseline ``none`` (REINFORCE++): ``b_i = 0``;
- scale ``group``: ``s_i`` = std of i's group + eps; ``batch``: std of all rewards
  + eps; ``none``: 1.
"""

from __future__ import annotations

from typing import Literal

import torch

Baseline = Literal["group_mean", "leave_one_out", "none"]
Scale = Literal["group", "batch", "none"]


def _groups(rewards: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inverse index into groups, per-group counts, per-group sums)."""
    if rewards.shape != group_ids.shape or rewards.dim() != 1:
        raise ValueError("rewards and group_ids must be 1-D tensors of the same length")
    _, inverse = torch.unique(group_ids, return_inverse=True)
    n_groups = int(inverse.max().item()) + 1 if len(rewards) else 0
    counts = torch.zeros(n_groups, dtype=rewards.dtype).index_add_(0, inverse, torch.ones_like(rewards))
    sums = torch.zeros(n_groups, dtype=rewards.dtype).index_add_(0, inverse, rewards)
    return inverse, counts, sums


def baseline_and_scale(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    baseline: Baseline = "group_mean",
    scale: Scale = "group",
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(b, s)``, each (B,): the baseline subtracted from each reward and the divisor."""
    rewards = rewards.float()
    inverse, counts, sums = _groups(rewards, group_ids)
    means = (sums / counts)[inverse]
    if baseline == "group_mean":
        b = means
    elif baseline == "leave_one_out":
        n = counts[inverse]
        others = (sums[inverse] - rewards) / (n - 1).clamp(min=1.0)
        b = torch.where(n > 1, others, rewards)
    elif baseline == "none":
        b = torch.zeros_like(rewards)
    else:
        raise ValueError(f"unknown baseline {baseline!r}")
    if scale == "group":
        sq = torch.zeros_like(counts).index_add_(0, inverse, (rewards - means) ** 2)
        s = torch.sqrt(sq / counts)[inverse] + eps
    elif scale == "batch":
        s = torch.full_like(rewards, float(rewards.std(correction=0)) if len(rewards) else 0.0) + eps
    elif scale == "none":
        s = torch.ones_like(rewards)
    else:
        raise ValueError(f"unknown reward scaling {scale!r}")
    return b, s


def sequence_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    baseline: Baseline = "group_mean",
    scale: Scale = "group",
    eps: float = 1e-6,
) -> torch.Tensor:
    """One advantage per sample, ``(r - b) / s`` (see the module docstring)."""
    b, s = baseline_and_scale(rewards, group_ids, baseline, scale, eps)
    return (rewards.float() - b) / s


def group_normalized_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    scale: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """GRPO advantages: ``(r - mean_group(r)) / (std_group(r) + eps)``.

    A group of one sample, or one whose rewards are all equal, gets advantage 0
    for every member. With ``scale=False`` the advantage is the centred reward
    (Dr.GRPO).
    """
    return sequence_advantages(rewards, group_ids, "group_mean", "group" if scale else "none", eps)


def group_has_signal(rewards: torch.Tensor, group_ids: torch.Tensor, tol: float = 1e-9) -> torch.Tensor:
    """(B,) bool: whether sample i's group has rewards that differ (max - min > tol).

    A group whose rewards are all equal (or that has one sample) gives every
    member advantage 0 under a group baseline: no learning signal (DAPO's
    dynamic sampling drops such groups).
    """
    inverse, counts, _ = _groups(rewards.float(), group_ids)
    hi = torch.full_like(counts, -torch.inf).scatter_reduce(0, inverse, rewards.float(), "amax")
    lo = torch.full_like(counts, torch.inf).scatter_reduce(0, inverse, rewards.float(), "amin")
    return (hi - lo > tol)[inverse]


def whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``(v - mean) / sqrt(var + eps)`` over the mask-1 entries (population variance);
    0 where the mask is 0. REINFORCE++'s global batch normalisation over tokens."""
    keep = mask.bool()
    n = keep.sum().clamp(min=1)
    mean = torch.where(keep, values, 0.0).sum() / n
    var = torch.where(keep, (values - mean) ** 2, 0.0).sum() / n
    return torch.where(keep, (values - mean) * torch.rsqrt(var + eps), 0.0)


def kl_penalised_returns(
    rewards: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token returns with a KL penalty folded into the reward (discount 1).

    The sequence reward ``r_i`` arrives at the end; each token ``t`` pays
    ``beta * kl_t``. The return from token t is ``G_t = r_i - beta * sum_{t' >= t} kl_t'``
    (REINFORCE++'s token-level KL penalty); ``G`` at the first completion token is
    the sequence total ``r_i - beta * sum_t kl_t`` (RLOO's sequence-level penalty).
    Returns ``(G (B, T), totals (B,))``; G is 0 where the mask is 0.
    """
    keep = mask.bool()
    penalty = torch.where(keep, kl.float(), 0.0)
    to_go = penalty.flip(-1).cumsum(-1).flip(-1)
    returns = torch.where(keep, rewards.float().unsqueeze(-1) - beta * to_go, 0.0)
    return returns, rewards.float() - beta * penalty.sum(-1)


def token_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    mask: torch.Tensor,
    kl: torch.Tensor | None = None,
    beta: float = 0.0,
    baseline: Baseline = "group_mean",
    scale: Scale = "group",
    whiten_tokens: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Per-token advantages ``(G_t - b_i) / s_i``, then optionally whitened over all tokens.

    ``G`` are the KL-penalised returns (``kl_penalised_returns``; the plain reward
    when ``kl`` is None or beta is 0). ``b`` and ``s`` come from the sequence totals
    of each group (``baseline_and_scale``), so at the first completion token the
    advantage is exactly the sequence-level estimator applied to the penalised
    rewards. Shape (B, T), 0 where the mask is 0.
    """
    if kl is None or beta == 0:
        kl = torch.zeros_like(mask, dtype=torch.float32)
    returns, totals = kl_penalised_returns(rewards, kl, mask, beta)
    b, s = baseline_and_scale(totals, group_ids, baseline, scale, eps)
    adv = torch.where(mask.bool(), (returns - b.unsqueeze(-1)) / s.unsqueeze(-1), 0.0)
    return whiten(adv, mask) if whiten_tokens else adv
