"""Weight sync between the learner and the rollout workers.

The protocol has two sides: the learner ``export``s a versioned ``WeightsUpdate``
and each rollout backend ``apply``s it. ``ObjectStoreWeightSync`` ships full
weights as numpy arrays, which Ray's object store shares zero-copy between
processes of one node (torch tensors would be copied). With LoRA the adapter is
merged into the exported copy, never into the training model.
"""

from __future__ import annotations

import time
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
    """Full weights with plain Hugging Face names, LoRA adapters merged in.

    For a peft model the adapters are merged, the weights copied out, and the
    merge undone, so training continues on unmerged LoRA weights.
    """
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        PeftModel = ()  # type: ignore[assignment]
    if not isinstance(model, PeftModel):
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.merge_adapter()
    try:
        out: dict[str, torch.Tensor] = {}
        for name, tensor in model.get_base_model().state_dict().items():
            if "lora_" in name:
                continue
            out[name.replace(".base_layer.", ".")] = tensor.detach().clone()
        return out
    finally:
        model.unmerge_adapter()


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
                state[name] = torch.from_numpy(arr)  # load_state_dict copies; no write to shared memory
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [m for m in missing if not m.endswith("lm_head.weight")]  # tied to the embeddings
        if missing or unexpected:
            raise ValueError(f"weight update v{update.version} does not match the rollout model: "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")
