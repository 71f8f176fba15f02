"""Pairwise preference losses for the preference trainer (pure torch).

Inputs are per-pair sequence-level quantities, (B,) each, from
``algorithms.logprobs.sequence_logprobs`` (summed completion log-probs and
completion lengths) of the chosen (``w``) and rejected (``l``) completions.
Each function returns ``(loss, stats)``: the mean over pairs and detached floats.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def simpo_loss(
    chosen_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_logps: torch.Tensor,
    rejected_lengths: torch.Tensor,
    beta: float = 2.0,
    gamma: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """SimPO (Meng et al. 2024), no reference model:
    ``-log sigmoid(beta/|y_w| log pi(y_w|x) - beta/|y_l| log pi(y_l|x) - gamma)``.

    The reward ``beta * log pi / |y|`` is length-normalised, so a longer answer
    is not favoured for its length; ``gamma`` is the target reward margin.
    Defaults are seed 003's (beta 2, gamma 1).
    """
    chosen_reward = beta * chosen_logps / chosen_lengths.clamp(min=1)
    rejected_reward = beta * rejected_logps / rejected_lengths.clamp(min=1)
    margin = chosen_reward - rejected_reward
    loss = -F.logsigmoid(margin - gamma).mean()
    return loss, _pair_stats(chosen_reward, rejected_reward)


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO (Rafailov et al. 2023), sigmoid loss:
    ``-log sigmoid(beta * [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))])``.

    Log-probs are summed over the completion (not length-normalised); the
    reference's are constants.
    """
    chosen_reward = beta * (chosen_logps - ref_chosen_logps.detach())
    rejected_reward = beta * (rejected_logps - ref_rejected_logps.detach())
    loss = -F.logsigmoid(chosen_reward - rejected_reward).mean()
    return loss, _pair_stats(chosen_reward, rejected_reward)


def _pair_stats(chosen_reward: torch.Tensor, rejected_reward: torch.Tensor) -> dict[str, float]:
    margin = (chosen_reward - rejected_reward).detach()
    return {
        "rewards/chosen": float(chosen_reward.detach().mean()),
        "rewards/rejected": float(rejected_reward.detach().mean()),
        "rewards/margin": float(margin.mean()),
        "rewards/accuracy": float((margin > 0).float().mean()),
    }
