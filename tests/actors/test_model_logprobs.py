"""Completion-only, chunked log-probs equal the full-vocabulary computation, and never hold it whole."""

from __future__ import annotations

import pytest
import torch

from actors.model.loading import load_causal_lm, resolve_model_path
from actors.model.logprobs import LogprobSettings, masked_logprobs
from algorithms.logprobs import chunked_token_logprobs, token_entropy, token_logprobs


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three right-padded sequences (lengths 9, 6, 4) with completions of 4, 3 and 1 tokens."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 1000, (3, 9), generator=g)
    attention = torch.ones(3, 9, dtype=torch.long)
    mask = torch.zeros(3, 8)
    for row, (length, completion) in enumerate([(9, 4), (6, 3), (4, 1)]):
        ids[row, length:], attention[row, length:] = 0, 0
        mask[row, length - 1 - completion : length - 1] = 1
    return ids, attention, mask


@pytest.fixture(scope="module")
def model(tiny_model_config) -> torch.nn.Module:
    return load_causal_lm(resolve_model_path(tiny_model_config), "float32")


def _full(model: torch.nn.Module, ids, attention, mask, temperature: float):
    logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
    return token_logprobs(logits, ids[:, 1:], temperature) * mask, token_entropy(logits, temperature) * mask


@pytest.mark.parametrize("chunk", [1, 3, 1024])
def test_chunked_completion_logprobs_equal_the_full_computation(model, chunk: int) -> None:
    ids, attention, mask = _inputs()
    full_logps, full_entropy = _full(model, ids, attention, mask, 0.7)
    full_logps.sum().backward()
    full_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    logps, entropy = masked_logprobs(model, ids, attention, mask, 0.7, LogprobSettings(chunk_tokens=chunk), True)
    assert entropy is not None
    torch.testing.assert_close(logps, full_logps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy, full_entropy, atol=1e-5, rtol=1e-5)
    logps.sum().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, full_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    model.zero_grad()


def test_the_output_embedding_never_sees_more_than_a_chunk(model) -> None:
    """The model's own lm_head call gets no positions; every other call at most ``chunk_tokens``
    completion positions: no (B, T, V) logits exist, in any dtype."""
    ids, attention, mask = _inputs()
    rows: list[int] = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, a, out: rows.append(out[..., 0].numel()))
    try:
        masked_logprobs(model, ids, attention, mask, 1.0, LogprobSettings(chunk_tokens=3), True)[0].sum().backward()
    finally:
        hook.remove()
        model.zero_grad()
    assert max(rows) <= 3 and sum(rows) == 2 * int(mask.sum())  # forward + the backward's recomputation


def test_chunked_token_logprobs_of_a_linear_head() -> None:
    """By hand: a 2-word vocabulary with logits (h, -h): log p(word 0) = h - log(e^h + e^-h)."""
    hidden = torch.tensor([[0.0], [1.0], [2.0]])
    head = torch.nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0], [-1.0]]))
    logps, entropy = chunked_token_logprobs(hidden, head, torch.tensor([0, 0, 1]), chunk_tokens=2, entropy=True)
    h = hidden.squeeze(1)
    logz = torch.log(torch.exp(h) + torch.exp(-h))
    torch.testing.assert_close(logps, torch.stack([h[0] - logz[0], h[1] - logz[1], -h[2] - logz[2]]))
    p0 = torch.exp(h - logz)
    assert entropy is not None
    torch.testing.assert_close(entropy, -(p0 * torch.log(p0) + (1 - p0) * torch.log(1 - p0)))


def test_sdpa_attention_equals_eager(tiny_model_config) -> None:
    """torch's fused attention against the materialised one, in float32 on padded batches: the same
    sums in another order, so they agree to float32 rounding over a few layers (1e-5)."""
    path = resolve_model_path(tiny_model_config)
    ids, attention, mask = _inputs()
    eager = _full(load_causal_lm(path, "float32", "eager"), ids, attention, mask, 1.0)[0]
    sdpa = masked_logprobs(load_causal_lm(path, "float32", "sdpa"), ids, attention, mask, 1.0)[0]
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=1e-5)
