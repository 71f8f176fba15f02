"""Policy-gradient losses, as composable pure torch functions.

Conventions for every function: tensors are (B, T) over completion tokens,
``mask`` is 1 on real completion tokens and 0 on padding, ``logprobs`` are the
current policy's (with grad), ``old_logprobs`` the clip's "old" policy (no
grad), ``advantages`` is (B,) (one per sequence) or (B, T) (one per token).

A loss is composed in three steps (``actors/learner/learner.py::policy_loss`` does it):

1. ``importance_log_ratio``: the log of the ratio pi / pi_old at the configured
   level (token, sequence = GSPO, sequence_token = GSPO-token);
2. ``clipped_surrogate``: the per-token PPO-clip loss ``-min(r A, clip(r) A)``
   (further per-token terms, e.g. ``beta * KL``, are added by the caller);
3. ``aggregate_loss``: per-token losses to a scalar (sequence_mean, token_mean,
   sequence_sum, constant).

``grpo_loss`` and ``gspo_loss`` are the two classic compositions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from algorithms.logprobs import masked_mean

Level = Literal["token", "sequence", "sequence_token"]
Aggregation = Literal["sequence_mean", "token_mean", "sequence_sum", "constant"]


def importance_log_ratio(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor, level: Level = "token"
) -> torch.Tensor:
    """log(pi / pi_old) at ``level``.

    - token: ``logp_t - old_t``, (B, T);
    - sequence (GSPO): the length-normalised ``mean_t (logp_t - old_t)``, (B, 1);
    - sequence_token (GSPO-token): ``sg[seq_i] + logp_t - sg[logp_t]``, (B, T): its
      value is the sequence ratio on every token, its gradient per token is that
      of ``logp_t`` (so per-token advantages can weight each token).
    """
    log_ratio = torch.where(mask.bool(), logprobs - old_logprobs, 0.0)
    if level == "token":
        return log_ratio
    seq = masked_mean(log_ratio, mask, dim=-1).unsqueeze(-1)
    if level == "sequence":
        return seq
    if level == "sequence_token":
        return seq.detach() + logprobs - logprobs.detach()
    raise ValueError(f"unknown importance-sampling level {level!r}")


@dataclass(frozen=True)
class Surrogate:
    """The per-token clipped loss and where the clip was active.

    ``low``: ratio < 1 - eps_low with A < 0; ``high``: ratio > 1 + eps_high with
    A > 0 (the regions where the clipped term is the minimum, so no gradient
    flows). Shapes broadcast to (B, T) or are (B, 1) for sequence-level ratios.
    """

    per_token: torch.Tensor
    ratio: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor


def clipped_surrogate(
    log_ratio: torch.Tensor, advantages: torch.Tensor, epsilon_low: float = 0.2, epsilon_high: float = 0.2
) -> Surrogate:
    """PPO-clip per token: ``-min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)`` with ``r = exp(log_ratio)``."""
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    per_token = -torch.minimum(ratio * adv, clipped * adv)
    low = (ratio < 1.0 - epsilon_low) & (adv < 0)
    high = (ratio > 1.0 + epsilon_high) & (adv > 0)
    return Surrogate(per_token, ratio, low, high)


def aggregate_loss(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    mode: Aggregation = "sequence_mean",
    num_sequences: float | None = None,
    num_tokens: float | None = None,
    max_length: int | None = None,
) -> torch.Tensor:
    """Scalar loss from per-token losses (padding ignored).

    - sequence_mean: ``sum_i (sum_t l_it / n_i) / N`` (GRPO; each sequence weighs the same);
    - token_mean: ``sum_it l_it / N_tok`` (DAPO; each token weighs the same);
    - sequence_sum: ``sum_it l_it / N`` (REINFORCE/RLOO: summed sequence log-likelihood);
    - constant: ``sum_it l_it / (N * max_length)`` (Dr.GRPO; no length dependence).

    ``N`` (``num_sequences``) and ``N_tok`` (``num_tokens``) default to this
    batch's; a caller splitting a minibatch into micro-batches passes the
    minibatch's totals, so that the micro-batch losses sum to the minibatch loss.
    """
    keep = mask.bool()
    losses = torch.where(keep, per_token, 0.0)
    n_seq = float(mask.shape[0]) if num_sequences is None else float(num_sequences)
    if mode == "sequence_mean":
        return (losses.sum(-1) / keep.sum(-1).clamp(min=1)).sum() / n_seq
    if mode == "token_mean":
        n_tok = keep.sum().clamp(min=1) if num_tokens is None else max(float(num_tokens), 1.0)
        return losses.sum() / n_tok
    if mode == "sequence_sum":
        return losses.sum() / n_seq
    if mode == "constant":
        if not max_length:
            raise ValueError("loss aggregation 'constant' needs max_length (rollout.max_new_tokens)")
        return losses.sum() / (n_seq * max_length)
    raise ValueError(f"unknown loss aggregation {mode!r}")


def level_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of ``values`` over real tokens, or over sequences for (B, 1) values
    (sequence-level ratios); for boolean flags, the share where they hold."""
    if values.shape[-1] == 1 and mask.shape[-1] != 1:
        return float(masked_mean(values.float().squeeze(-1), mask.bool().any(-1)))
    return float(masked_mean(values.float().expand_as(mask), mask))


def clip_stats(surrogate: Surrogate, mask: torch.Tensor) -> dict[str, float]:
    """``clip/low_frac``, ``clip/high_frac``, ``clip/frac`` (either) and ``ratio/mean``."""
    return {
        "clip/low_frac": level_mean(surrogate.low, mask),
        "clip/high_frac": level_mean(surrogate.high, mask),
        "clip/frac": level_mean(surrogate.low | surrogate.high, mask),
        "ratio/mean": level_mean(surrogate.ratio.detach(), mask),
    }


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
    surrogate = clipped_surrogate(
        importance_log_ratio(logprobs, old_logprobs, mask, "token"), advantages, epsilon_low, epsilon_high
    )
    return aggregate_loss(surrogate.per_token, mask, "sequence_mean"), clip_stats(surrogate, mask)


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
    surrogate = clipped_surrogate(
        importance_log_ratio(logprobs, old_logprobs, mask, "sequence"), advantages, epsilon_low, epsilon_high
    )
    return aggregate_loss(surrogate.per_token, mask, "sequence_mean"), clip_stats(surrogate, mask)
