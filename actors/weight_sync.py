"""Weight sync between the learner and the rollout workers.

The protocol has two sides: the learner ``export``s a versioned ``WeightsUpdate``
and each rollout backend ``apply``s it. ``ObjectStoreWeightSync`` ships full
weights as numpy arrays, which Ray's object store shares zero-copy between
processes of one node (torch tensors would be copied). With LoRA the adapter is
merged into the exported copy, never into the training model.
"""

from __future__ import annotations

import time
import warnings
from typing import Protocol

import numpy as np
import torch

from actors.messages import WeightsUpdate

_BF16_SUFFIX = "@bf16"  # numpy has no bfloat16: such tensors travel as int16 bit patterns


class WeightSync(Protocol):
    """Moves a learner's weights to rollout models."""

    def export(self, state_dict: dict[str, torch.Tensor], version: int) -> WeightsUpdate: ...

    def apply(self, update: WeightsUpdate, model: torch.nn.Module) -> None: ...


def merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full weights with plain Hugging Face names, on the CPU, LoRA adapters merged in.

    For a peft model each adapted weight is exported as ``W + delta`` computed
    on the side (``get_delta_weight``); the training model is never modified, so
    repeated exports cannot drift its frozen base weights (which in-place
    merge/unmerge would do in bf16).
    """
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    if not isinstance(model, PeftModel):
        return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    base = model.get_base_model()
    deltas: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            delta = sum(module.get_delta_weight(a) for a in module.active_adapters)
            deltas[f"{name}.weight"] = delta.detach()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in base.state_dict().items():
        if "lora_" in name:
            continue
        plain = name.replace(".base_layer.", ".")
        merged = tensor.detach() + deltas[plain].to(tensor.dtype) if plain in deltas else tensor.detach()
        out[plain] = merged.to("cpu", copy=True)
    return out


class ObjectStoreWeightSync:
    """Full weights as numpy arrays, passed by reference through Ray's object store."""

    def export(self, state_dict: dict[str, torch.Tensor], version: int) -> WeightsUpdate:
        start = time.perf_counter()
        tensors: dict[str, object] = {}
        for name, t in state_dict.items():
            t = t.detach().cpu().contiguous()
            if t.dtype == torch.bfloat16:
                tensors[name + _BF16_SUFFIX] = t.view(torch.int16).numpy()
            else:
                tensors[name] = t.numpy()
        return WeightsUpdate(version=version, tensors=tensors, export_s=time.perf_counter() - start)

    def apply(self, update: WeightsUpdate, model: torch.nn.Module) -> None:
        """Load the update into ``model`` in place; every parameter must be present."""
        state: dict[str, torch.Tensor] = {}
        for name, arr in update.tensors.items():
            assert isinstance(arr, np.ndarray)
            if name.endswith(_BF16_SUFFIX):
                state[name[: -len(_BF16_SUFFIX)]] = torch.from_numpy(arr.copy()).view(torch.bfloat16)
            else:
                with warnings.catch_warnings():  # read-only object-store memory: load_state_dict copies, never writes
                    warnings.simplefilter("ignore", UserWarning)
                    state[name] = torch.from_numpy(arr)
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [m for m in missing if not m.endswith("lm_head.weight")]  # tied to the embeddings
        if missing or unexpected:
            raise ValueError(f"weight update v{update.version} does not match the rollout model: "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")
