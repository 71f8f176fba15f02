"""Token log-probabilities and masked reductions (pure torch)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint


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


def chunked_token_logprobs(
    hidden: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    tokens: torch.Tensor,
    temperature: float = 1.0,
    chunk_tokens: int = 1024,
    entropy: bool = False,
    recompute: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``token_logprobs`` (and ``token_entropy``) of ``tokens`` from hidden states, a chunk at a time.

    ``hidden`` (N, H) are the states that predict ``tokens`` (N,) (already shifted
    and selected, e.g. the completion positions only); ``head`` maps (n, H) to
    logits (n, V). Returns log-probs (N,) in float32 and, with ``entropy``, the
    entropies (N,), detached. Invariant: at most ``chunk_tokens`` rows of logits
    exist at a time, in float32 only within the chunk, so memory is
    O(chunk_tokens * V) instead of O(N * V); with autograd on and ``recompute``,
    each chunk is checkpointed (its logits are recomputed in the backward pass
    instead of being kept; without ``recompute`` autograd keeps every chunk's
    float32 logits, O(N * V) for the backward). Values equal ``token_logprobs(head(hidden), tokens)`` up to float
    rounding.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    logps, entropies = [], []
    for lo in range(0, hidden.shape[0], chunk_tokens):
        h, t = hidden[lo : lo + chunk_tokens], tokens[lo : lo + chunk_tokens]
        if recompute and torch.is_grad_enabled() and h.requires_grad:
            logp, ent = checkpoint(_chunk, h, t, head, temperature, entropy, use_reentrant=False)
        else:
            logp, ent = _chunk(h, t, head, temperature, entropy)
        logps.append(logp)
        entropies.append(ent)
    if not logps:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, empty if entropy else None
    return torch.cat(logps), torch.cat(entropies) if entropy else None


def _chunk(
    hidden: torch.Tensor,
    tokens: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    temperature: float,
    entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk's log-probs (with autograd) and entropies (detached; empty without ``entropy``)."""
    logits = head(hidden)
    logp = token_logprobs(logits, tokens, temperature)
    with torch.no_grad():
        ent = token_entropy(logits.detach(), temperature) if entropy else logp.new_zeros(0)
    return logp, ent
