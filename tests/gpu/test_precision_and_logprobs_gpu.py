"""On a GPU: the bf16 learner keeps float32 masters, chunked log-probs at Qwen3's vocabulary, sdpa vs eager.

The CPU suite constructs each situation (tests/actors/test_learner_precision.py,
tests/actors/test_model_logprobs.py); these repeat them on CUDA kernels, with
CUDA's own memory counters.
"""

from __future__ import annotations

import pytest
import torch

from actors.learner.learner import Learner, LearnerConfig
from actors.messages import TrainBatch
from actors.model.logprobs import LogprobSettings, masked_logprobs
from algorithms.config import AlgorithmConfig
from algorithms.logprobs import token_logprobs

pytestmark = pytest.mark.gpu
QWEN3_VOCAB = 151936


def _batch(step: int) -> TrainBatch:
    g = torch.Generator().manual_seed(step)
    ids = torch.randint(3, 1000, (8, 12), generator=g).tolist()
    return TrainBatch(step, [r[:6] for r in ids], [r[6:] for r in ids], [[-6.9] * 6] * 8, [1.0, -1.0] * 4, [step] * 8)


def _updates(model, precision: str) -> torch.Tensor:
    torch.manual_seed(0)
    learner = Learner(LearnerConfig(lr=1e-5, precision=precision), model, AlgorithmConfig(), 1.0)
    assert learner.backend.device.type == "cuda"
    params = dict(learner.backend.model.named_parameters())
    names = [n for n in params if ".layers." in n]
    before = {n: params[n].detach().float().clone() for n in names}
    for step in range(10):
        learner.train(_batch(step))
    return torch.cat([(params[n].detach().float() - before[n]).flatten() for n in names]).cpu()


def test_bf16_mixed_learner_moves_weights_as_float32_on_cuda(tiny_model_config) -> None:
    fp32 = _updates(tiny_model_config.model_copy(update={"dtype": "float32"}), "mixed")
    mixed = _updates(tiny_model_config, "mixed")  # model.dtype auto: bf16 on the GPU
    assert float((mixed - fp32).norm() / fp32.norm()) < 0.1


def _qwen3_vocab_model(attention: str) -> torch.nn.Module:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from scripts.bench.models import QWEN3_VOCAB_2LAYER_SHAPE

    config = Qwen3Config(**QWEN3_VOCAB_2LAYER_SHAPE, attn_implementation=attention)
    torch.manual_seed(0)
    return Qwen3ForCausalLM(config).to("cuda", torch.bfloat16)


def _long_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two sequences of 4 096 tokens, the last 1 024 of each a completion."""
    ids = torch.randint(10, QWEN3_VOCAB, (2, 4096), device="cuda")
    mask = torch.zeros(2, 4095, device="cuda")
    mask[:, 3071:] = 1
    return ids, torch.ones_like(ids), mask


def test_chunked_logprobs_at_qwen3_vocabulary_on_cuda() -> None:
    model = _qwen3_vocab_model("sdpa")
    ids, attention, mask = _long_inputs()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    logps, _ = masked_logprobs(model, ids, attention, mask, 1.0, LogprobSettings(chunk_tokens=1024))
    logps.sum().backward()
    chunked_peak = torch.cuda.max_memory_allocated() - start
    model.zero_grad(set_to_none=True)
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    full = token_logprobs(model(input_ids=ids, attention_mask=attention).logits[:, :-1], ids[:, 1:]) * mask
    full.sum().backward()
    full_peak = torch.cuda.max_memory_allocated() - start
    torch.testing.assert_close(logps, full.detach(), atol=2e-2, rtol=0)  # bf16 matmuls, fp32 softmax
    assert chunked_peak < full_peak / 3, (chunked_peak, full_peak)


def test_sdpa_equals_eager_in_bf16_on_cuda() -> None:
    ids, attention, mask = _long_inputs()
    ids, attention, mask = ids[:, :1024], attention[:, :1024], mask[:, :1023]
    with torch.no_grad():
        eager = masked_logprobs(_qwen3_vocab_model("eager"), ids, attention, torch.ones_like(mask), 1.0)[0]
        sdpa = masked_logprobs(_qwen3_vocab_model("sdpa"), ids, attention, torch.ones_like(mask), 1.0)[0]
    assert float((eager - sdpa).abs().mean()) < 1e-2  # bf16 attention in another summation order
