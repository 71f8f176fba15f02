"""Supervised next-token loss (pure torch)."""

from __future__ import annotations

import torch


def sft_loss(logprobs: torch.Tensor, mask: torch.Tensor, total_tokens: int) -> torch.Tensor:
    """Negative log-likelihood of the target tokens, summed and divided by ``total_tokens``.

    ``logprobs`` (B, T) are the target tokens' log-probabilities, ``mask`` (B, T)
    is 1 on targets. With ``total_tokens`` the target count of the whole
    minibatch, the micro-batch losses add up to the minibatch's token-mean NLL
    (what ``transformers`` computes with ``num_items_in_batch``), whatever the
    micro-batch split.
    """
    if total_tokens < 1:
        raise ValueError(f"total_tokens must be >= 1, got {total_tokens}")
    return -(logprobs * mask.to(logprobs.dtype)).sum() / total_tokens
