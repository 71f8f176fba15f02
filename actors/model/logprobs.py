"""Log-probs of a causal LM's tokens at chosen positions, without full-vocabulary logits.

A Hugging Face causal LM computes ``lm_head`` over every position and returns
(B, T, V) logits: at Qwen3's vocabulary (151 936) and 8 192 tokens that is
about 10 GB per float32 copy. The learner needs log-probs only where the loss
mask is 1 (the completion tokens). ``masked_logprobs`` runs the model's own
forward (so DeepSpeed's and peft's hooks, gradient checkpointing and the
attention mask work as always) but takes the hidden states that feed the output
embedding, keeps the masked positions only, and applies the output embedding
in chunks of ``LogprobSettings.chunk_tokens`` rows
(``algorithms.logprobs.chunked_token_logprobs``). The model's own output
embedding is handed an empty slice, so it computes nothing.

Models whose forward transforms the logits after the output embedding (Gemma 2's
soft-capping, Cohere's logit scale, Granite's scaling) take the full-logits path
instead: the same values, without the memory saving.

Compute precision: with ``LogprobSettings.autocast`` (the torch learner's bf16
mixed precision), the forward runs under ``torch.autocast`` in that dtype over
float32 parameters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from algorithms.logprobs import chunked_token_logprobs, token_entropy, token_logprobs

# Config attributes of models whose logits are transformed after the output embedding.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


@dataclass(frozen=True)
class LogprobSettings:
    """How the learner computes log-probs: rows of logits per chunk, and the autocast dtype.

    ``autocast`` None: the forward runs in the parameters' dtype (float32
    training, pure bf16, or DeepSpeed, which casts the module itself).
    ``recompute``: each chunk's logits are recomputed in the backward pass
    rather than kept. Off under DeepSpeed ZeRO-3, whose partitioned output
    embedding is not gathered again for a recomputation outside the model's
    forward; there the backward keeps the completion positions' logits (still
    never the prompt's).
    """

    chunk_tokens: int = 1024
    autocast: torch.dtype | None = None
    recompute: bool = True

    def compute(self, device: torch.device) -> contextlib.AbstractContextManager:
        """The context the forward runs in: ``torch.autocast`` when set, else nothing."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast)


def masked_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
    settings: LogprobSettings | None = None,
    entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (B, T-1) of ``input_ids[:, 1:]`` where ``mask`` (B, T-1) is 1, zeros elsewhere.

    Entropies (B, T-1) of the same positions with ``entropy``, detached, else None.
    Autograd flows to the parameters when it is enabled. Equals
    ``token_logprobs(model(...).logits[:, :-1], input_ids[:, 1:]) * mask`` up to
    float rounding.
    """
    settings = settings or LogprobSettings()
    keep = mask.bool()
    targets = input_ids[:, 1:][keep]
    device = input_ids.device
    with settings.compute(device):
        if _transforms_logits(model):
            logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1][keep]
            logps = token_logprobs(logits, targets, temperature)
            ent = token_entropy(logits.detach(), temperature) if entropy else None
        else:
            head = _output_embedding(model)
            with _captured_head_input(head) as captured:
                model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            hidden = captured[0][:, :-1][keep]
            logps, ent = chunked_token_logprobs(
                hidden, head, targets, temperature, settings.chunk_tokens, entropy, settings.recompute
            )
    return _scatter(logps, keep), (_scatter(ent, keep) if ent is not None else None)


def _scatter(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``values`` (N,) placed at the N true positions of ``keep`` (B, T), zeros elsewhere (autograd flows)."""
    return values.new_zeros(keep.shape, dtype=torch.float32).masked_scatter(keep, values.float())


def _base(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face (or peft) model inside a DeepSpeed engine; the model itself otherwise."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, torch.nn.Module) else model


def _output_embedding(model: torch.nn.Module) -> torch.nn.Module:
    head = _base(model).get_output_embeddings()  # type: ignore[operator]  # a Hugging Face or peft model
    if not isinstance(head, torch.nn.Module):
        raise ValueError(f"{type(_base(model)).__name__} has no output embedding: not a causal LM")
    return head


def _transforms_logits(model: torch.nn.Module) -> bool:
    config = getattr(_base(model), "config", None)
    return any(getattr(config, name, None) not in (None, 1, 1.0) for name in LOGIT_TRANSFORMS)


@contextlib.contextmanager
def _captured_head_input(head: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """While open, ``head``'s forward records its input hidden states (B, T, H) and is given an
    empty slice (B, 0, H) instead, so the model computes no logits. Removed on exit."""
    captured: list[torch.Tensor] = []

    def take(_module: torch.nn.Module, args: tuple) -> tuple:
        captured.append(args[0])
        return (args[0][:, :0], *args[1:])

    handle = head.register_forward_pre_hook(take)
    try:
        yield captured
    finally:
        handle.remove()
