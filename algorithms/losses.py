"""Policy-gradient losses for GRPO and GSPO (pure torch).

Conventions for every function: tensors are (B, T) over completion tokens,
``mask`` is 1 on real completion tokens and 0 on padding, ``logprobs`` are the
current policy's (with grad), ``old_logprobs`` the behaviour policy's (the
sampling log-probs recorded by the rollout, no grad), ``advantages`` is (B,).
Each returns ``(loss, stats)`` where ``stats`` holds detached floats.
"""

from __future__ import annotations

import torch

from algorithms.logprobs import masked_mean


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO: per-token clipped surrogate, averaged over each sequence's tokens,
    then over sequences.

    ratio_t = exp(logp_t - old_logp_t);
    loss_t = -min(ratio_t * A, clip(ratio_t, 1-eps_low, 1+eps_high) * A).
    """
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages.unsqueeze(-1)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    per_sequence = masked_mean(per_token, mask, dim=-1)
    loss = per_sequence.mean()
    clipped_frac = masked_mean((clipped < unclipped).float(), mask)
    return loss, {
        "clip/frac": float(clipped_frac),
        "ratio/mean": float(masked_mean(ratio.detach(), mask)),
    }


def gspo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    epsilon_low: float = 3e-4,
    epsilon_high: float = 4e-4,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GSPO: one length-normalised importance ratio per sequence,
    s_i = exp(mean_t(logp_t - old_logp_t)), clipped to [1-eps_low, 1+eps_high];
    loss = -mean_i min(s_i A_i, clip(s_i) A_i).
    """
    log_ratio = masked_mean(logprobs - old_logprobs, mask, dim=-1)
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high) * advantages
    loss = -torch.minimum(unclipped, clipped).mean()
    return loss, {
        "clip/frac": float((clipped < unclipped).float().mean()),
        "ratio/mean": float(ratio.detach().mean()),
    }
