"""Rollout/learner mismatch correction by importance sampling (pure torch).

The rollout engine samples from its own copy of the policy (``behaviour``
log-probs, recorded while sampling); the learner's pre-update policy
(``proximal`` log-probs, recomputed by the learner) may differ: other kernels or
precision (vLLM), or older weights (asynchronous, stale samples). The policy
gradient is corrected by the detached weight ``w = pi_prox / pi_behav``:

- level ``token``: one weight per token, ``exp(prox_t - behav_t)``;
- level ``sequence``: one weight per sequence, the product of its token ratios
  ``exp(sum_t (prox_t - behav_t))`` (as TRL and veRL do);
- mode ``truncate`` (truncated IS): ``min(w, cap)``;
- mode ``mask``: ``w`` where ``w <= cap``, else 0 (the token or sequence leaves the
  loss; it still counts in the aggregation's normaliser, as in TRL).

Only the upper side is capped: weights far below 1 already contribute little.
"""

from __future__ import annotations

from typing import Literal

import torch

from algorithms.logprobs import masked_mean

Mode = Literal["truncate", "mask"]
Level = Literal["token", "sequence"]
_MAX_LOG = 20.0  # exp(20) ~ 5e8: finite for the statistics, far above any cap


def rollout_correction_weights(
    proximal_logprobs: torch.Tensor,
    behaviour_logprobs: torch.Tensor,
    mask: torch.Tensor,
    level: Level = "token",
    mode: Mode = "truncate",
    cap: float = 2.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Detached importance weights, (B, T) for token level or (B, 1) for sequence
    level, and the statistics ``is/ratio_mean``, ``is/ratio_max`` (of the raw,
    uncapped ratio over real tokens or sequences) and ``is/clipped_frac`` (share
    truncated or masked)."""
    if cap <= 1:
        raise ValueError(f"cap must be > 1, got {cap}")
    keep = mask.bool()
    log_w = torch.where(keep, proximal_logprobs.detach() - behaviour_logprobs.detach(), 0.0)
    if level == "sequence":
        log_w = log_w.sum(-1, keepdim=True)
        over = keep.any(-1, keepdim=True)
    elif level == "token":
        over = keep
    else:
        raise ValueError(f"unknown importance-sampling level {level!r}")
    ratio = torch.exp(log_w.clamp(max=_MAX_LOG))
    capped = ratio > cap
    if mode == "truncate":
        weights = ratio.clamp(max=cap)
    elif mode == "mask":
        weights = torch.where(capped, 0.0, ratio)
    else:
        raise ValueError(f"unknown rollout-correction mode {mode!r}")
    stats = {
        "is/ratio_mean": float(masked_mean(ratio, over)),
        "is/ratio_max": float(ratio[over].max()) if over.any() else 1.0,
        "is/clipped_frac": float(masked_mean(capped.float(), over)),
    }
    return weights, stats
