"""Model shapes for the dry-run's memory plan, read without loading weights.

``find_shape(path)`` gives the shape of a policy: the built-in tiny model's from
its config section, a local directory's ``config.json`` (a LoRA adapter
directory: its base's), a hub name's cached ``config.json``
(``transformers.AutoConfig.from_pretrained(..., local_files_only=True)``: the
network is never tried), else one shipped here for the models our recipes name,
else None (the plan then says memory cannot be estimated).

Invariant: every shipped shape's ``parameters`` equals ``parameter_count`` of
its own fields (tested), so the published count and the formula agree.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.model.loading import BUILTIN_TINY, TinyModelConfig


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer's shape (Llama/Qwen layout: GQA attention, SwiGLU MLP)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    qkv_bias: bool  # Qwen2 has biases on q/k/v; Qwen3 and Llama do not
    qk_norm: bool  # Qwen3 normalises q and k per head (two head_dim weights per layer)
    parameters: int  # total parameter count

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim


def parameter_count(s: ModelShape) -> int:
    """Parameters of ``s``: embeddings (+ an untied lm_head), per layer q/k/v/o, the SwiGLU MLP's
    three matrices, two RMSNorms (and q/k norms, q/k/v biases where the family has them), final norm."""
    q_dim = s.num_heads * s.head_dim
    attention = s.hidden_size * q_dim * 2 + s.hidden_size * s.kv_dim * 2
    attention += (q_dim + 2 * s.kv_dim) if s.qkv_bias else 0
    attention += 2 * s.head_dim if s.qk_norm else 0
    layer = attention + 3 * s.hidden_size * s.intermediate_size + 2 * s.hidden_size
    embeddings = s.vocab_size * s.hidden_size * (1 if s.tie_word_embeddings else 2)
    return s.num_layers * layer + s.hidden_size + embeddings


# Shapes from the models' published config.json files on the Hugging Face hub (hidden_size,
# num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim, intermediate_size,
# vocab_size, tie_word_embeddings), with parameter counts as their model cards state them
# (Qwen2.5-0.5B: 0.49B; Qwen3-1.7B: 1.7B, 1.4B non-embedding; Qwen3-4B: 4.0B, 3.6B non-embedding;
# SmolLM2-135M: 135M), exact figures from the formula above.
_QWEN25_05B = ModelShape(896, 24, 14, 2, 64, 4864, 151936, True, True, False, 494_032_768)
_QWEN3_17B = ModelShape(2048, 28, 16, 8, 128, 6144, 151936, True, False, True, 1_720_574_976)
_QWEN3_4B = ModelShape(2560, 36, 32, 8, 128, 9728, 151936, True, False, True, 4_022_468_096)
_SMOLLM2_135M = ModelShape(576, 30, 9, 3, 64, 1536, 49152, True, False, False, 134_515_008)

SHIPPED_SHAPES: dict[str, ModelShape] = {
    "Qwen/Qwen2.5-0.5B": _QWEN25_05B,
    "Qwen/Qwen2.5-0.5B-Instruct": _QWEN25_05B,
    "Qwen/Qwen3-1.7B": _QWEN3_17B,
    "Qwen/Qwen3-1.7B-Base": _QWEN3_17B,
    "Qwen/Qwen3-4B": _QWEN3_4B,
    "Qwen/Qwen3-4B-Base": _QWEN3_4B,
    "HuggingFaceTB/SmolLM2-135M": _SMOLLM2_135M,
    "HuggingFaceTB/SmolLM2-135M-Instruct": _SMOLLM2_135M,
}


def shape_from_config(cfg: dict[str, Any]) -> ModelShape | None:
    """The shape a Hugging Face ``config.json`` describes (None when it lacks the usual keys)."""
    try:
        hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        draft = ModelShape(
            hidden_size=hidden,
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            intermediate_size=int(cfg["intermediate_size"]),
            vocab_size=int(cfg["vocab_size"]),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=cfg.get("model_type") == "qwen2" or bool(cfg.get("attention_bias", False)),
            qk_norm=str(cfg.get("model_type", "")).startswith("qwen3"),
            parameters=0,
        )
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    return dataclasses.replace(draft, parameters=parameter_count(draft))


def tiny_shape(tiny: TinyModelConfig) -> ModelShape:
    """The built-in tiny model's shape (a tied Qwen2; its vocabulary is at most ``tiny.vocab_size``)."""
    cfg = {
        "model_type": "qwen2",
        "hidden_size": tiny.hidden_size,
        "num_hidden_layers": tiny.num_layers,
        "num_attention_heads": tiny.num_heads,
        "num_key_value_heads": tiny.num_kv_heads,
        "intermediate_size": tiny.intermediate_size,
        "vocab_size": tiny.vocab_size,
        "tie_word_embeddings": True,
    }
    shape = shape_from_config(cfg)
    assert shape is not None
    return shape


def _shipped_for_name(name: str) -> ModelShape | None:
    """A shipped shape by hub name, or by a model file's name (``package:.../SmolLM2-135M-Instruct.Q4_1.gguf``)."""
    if name in SHIPPED_SHAPES:
        return SHIPPED_SHAPES[name]
    stem = Path(name).name.split(".")[0]
    return next((s for key, s in SHIPPED_SHAPES.items() if key.split("/")[-1] == stem), None)


def find_shape(path: str, tiny: TinyModelConfig | None = None) -> tuple[ModelShape | None, str]:
    """The shape of the model at ``path`` and where it came from (or None and why not)."""
    if path == BUILTIN_TINY:
        return tiny_shape(tiny or TinyModelConfig()), "built-in tiny model"
    local = Path(path)
    if local.is_dir():
        if (local / "config.json").is_file():
            shape = shape_from_config(json.loads((local / "config.json").read_text()))
            return shape, f"{local / 'config.json'}" if shape else "its config.json lacks a transformer shape"
        adapter = local / "adapter_config.json"
        if adapter.is_file():
            base = json.loads(adapter.read_text()).get("base_model_name_or_path")
            if base:
                shape, source = find_shape(str(base), tiny)
                return shape, f"adapter base {base}: {source}"
        return None, f"{path} has no config.json"
    if not local.exists() and (path.startswith(("/", ".", "~")) or path.count("/") != 1):
        shipped = _shipped_for_name(path)
        return (shipped, "shape shipped with relay") if shipped else (None, f"{path} does not exist (yet)")
    cached = _cached_hub_config(path)
    if cached is not None:
        return cached, "the local Hugging Face cache"
    shipped = _shipped_for_name(path)
    if shipped is not None:
        return shipped, "shape shipped with relay (ray_jobs/dry_run/model_shapes.py)"
    return None, f"no local config.json for {path} and no shape shipped for it"


def _cached_hub_config(name: str) -> ModelShape | None:
    """A hub model's shape from the local cache only (never the network)."""
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(name, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached, not a model name, or no transformers: no shape
        return None
    text = getattr(config, "text_config", None) or config
    return shape_from_config(text.to_dict())
