"""Token log-probabilities and masked reductions (pure torch)."""

from __future__ import annotations

import torch


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of each token under the temperature-scaled distribution.

    ``logits[b, t]`` must be the model's prediction for ``tokens[b, t]`` (i.e. the
    caller has already shifted by one). Shapes: logits (B, T, V), tokens (B, T);
    returns (B, T). Rollout and learner both call this, so their log-probs agree
    by construction.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    scaled = logits.float() / temperature
    logz = torch.logsumexp(scaled, dim=-1)
    picked = torch.gather(scaled, -1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - logz


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1; 0 where the mask is empty."""
    mask = mask.to(values.dtype)
    total = (values * mask).sum() if dim is None else (values * mask).sum(dim)
    count = mask.sum() if dim is None else mask.sum(dim)
    return total / count.clamp(min=1.0)


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy (nats) of each position's temperature-scaled next-token distribution.

    Shapes: logits (B, T, V) -> (B, T). Same scaling as ``token_logprobs``, so it
    is the entropy of the distribution the rollout sampled from.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def sequence_logprobs(logprobs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence summed log-probability and length (number of mask-1 tokens).

    Shapes: (B, T), (B, T) -> (B,), (B,). Padding contributes nothing.
    """
    keep = mask.bool()
    return torch.where(keep, logprobs, torch.zeros_like(logprobs)).sum(-1), keep.to(logprobs.dtype).sum(-1)
