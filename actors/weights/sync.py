"""Weight sync between the learner and the rollout workers.

The protocol has two sides: the learner ``export``s a versioned ``WeightsUpdate``
and each rollout backend ``apply``s it. What is shipped:

- full weights (``ObjectStoreWeightSync.export``), with LoRA adapters merged
  into the exported copy, never into the training model;
- a LoRA adapter only (``ObjectStoreWeightSync.export_adapter``): a few MB
  instead of the whole model; the rollout keeps the frozen base weights and
  loads the adapter on top (HF: peft; vLLM: a new adapter version), so LoRA
  training never merges weights.

How: as numpy arrays in a ``WeightsUpdate`` passed by reference through Ray's
object store, which shares them zero-copy between processes of one node (torch
tensors would be copied). The vLLM engine's worker reads them from a
safetensors file staged in shared memory (``stage_update``). The GPU transport
is ``actors/weights/broadcast.py`` (a process group, bucketed broadcasts).
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from actors.messages import WeightsUpdate

_BF16_SUFFIX = "@bf16"  # numpy has no bfloat16: such tensors travel as int16 bit patterns


class WeightSync(Protocol):
    """Moves a learner's weights to rollout models."""

    def export(self, state_dict: dict[str, torch.Tensor], version: int) -> WeightsUpdate: ...

    def apply(self, update: WeightsUpdate, model: torch.nn.Module) -> None: ...


def _without_aliases(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` minus every entry that shares its storage with an earlier one
    (a tied ``lm_head.weight`` is the embedding under a second name)."""
    seen: set[tuple[int, int | torch.SymInt]] = set()
    out = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        out[name] = tensor
    return out


def merged_state_dict(model: torch.nn.Module, device: torch.device | str | None = "cpu") -> dict[str, torch.Tensor]:
    """Full weights with plain Hugging Face names, LoRA adapters merged in.

    ``device``: where the tensors are returned, as copies ("cpu", the default: what the object
    store ships). None: where the model's parameters are, without a copy: detached views of the
    parameters themselves, and each LoRA-merged weight computed there (the broadcast transport
    sends from the GPU); they change with the next optimiser step, so read them before it.

    Tied weights travel once, under their first name (the embedding, not
    ``lm_head.weight``); the receivers tie them again. For a peft model each
    adapted weight is exported as ``W + delta`` computed on the side
    (``get_delta_weight``); the training model is never modified, so repeated
    exports cannot drift its frozen base weights (which in-place merge/unmerge
    would do in bf16).
    """
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    if not isinstance(model, PeftModel):
        state = _without_aliases(model.state_dict())
        return {k: v.detach() if device is None else v.detach().to(device, copy=True) for k, v in state.items()}
    base = model.get_base_model()
    deltas: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            delta = sum(module.get_delta_weight(a) for a in module.active_adapters)
            deltas[f"{name}.weight"] = delta.detach()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in _without_aliases(base.state_dict()).items():
        if "lora_" in name:
            continue
        plain = name.replace(".base_layer.", ".")
        if plain in deltas:  # a new tensor, on the parameter's device
            merged = tensor.detach() + deltas[plain].to(tensor.dtype)
            out[plain] = merged if device is None else merged.to(device)
        else:
            out[plain] = tensor.detach() if device is None else tensor.detach().to(device, copy=True)
    return out


def adapter_state_dict(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict]:
    """A peft model's adapter weights (peft's saved names, CPU clones) and its
    ``LoraConfig`` as a JSON-able dict: exactly what ``save_pretrained`` writes."""
    from peft import PeftModel, get_peft_model_state_dict

    if not isinstance(model, PeftModel):
        raise TypeError("adapter-only weight sync needs a LoRA (peft) model; enable learner.lora")
    state = {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(model).items()}
    config = json.loads(json.dumps(model.peft_config["default"].to_dict(), default=list))
    return state, config


def update_tensors(update: WeightsUpdate) -> dict[str, torch.Tensor]:
    """The update's tensors as torch tensors (bf16 restored), sharing the numpy
    memory where possible (read-only object-store memory: callers copy, never write)."""
    state: dict[str, torch.Tensor] = {}
    for name, arr in update.tensors.items():
        assert isinstance(arr, np.ndarray)
        if name.endswith(_BF16_SUFFIX):
            state[name[: -len(_BF16_SUFFIX)]] = torch.from_numpy(arr.copy()).view(torch.bfloat16)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                state[name] = torch.from_numpy(arr)
    return state


def stage_update(update: WeightsUpdate, directory: Path) -> Path:
    """Write the update where an inference engine can load it, and return that path:
    full weights as ``<dir>/model.safetensors``; an adapter as a peft adapter
    directory (``adapter_config.json`` + ``adapter_model.safetensors``).
    ``directory`` should be in shared memory (``/dev/shm``) to skip the disk."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in update_tensors(update).items()}
    if not update.is_adapter:
        path = directory / "model.safetensors"
        save_file(tensors, str(path))
        return path
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    (directory / "adapter_config.json").write_text(json.dumps(update.adapter_config))
    return directory


def load_full_state(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load full weights into ``model`` in place; every parameter must be present,
    except a tied ``lm_head.weight`` (it is the embedding, sent once)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"{what} does not match the rollout model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def _to_numpy(state_dict: dict[str, torch.Tensor]) -> dict[str, object]:
    tensors: dict[str, object] = {}
    for name, t in state_dict.items():
        t = t.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:
            tensors[name + _BF16_SUFFIX] = t.view(torch.int16).numpy()
        else:
            tensors[name] = t.numpy()
    return tensors


class ObjectStoreWeightSync:
    """Full weights or a LoRA adapter as numpy arrays, passed by reference through Ray's object store."""

    def export(self, state_dict: dict[str, torch.Tensor], version: int) -> WeightsUpdate:
        start = time.perf_counter()
        return WeightsUpdate(version=version, tensors=_to_numpy(state_dict), export_s=time.perf_counter() - start)

    def export_adapter(self, state_dict: dict[str, torch.Tensor], config: dict, version: int) -> WeightsUpdate:
        """An adapter-only update from ``adapter_state_dict``'s output."""
        start = time.perf_counter()
        return WeightsUpdate(
            version=version, tensors=_to_numpy(state_dict), export_s=time.perf_counter() - start, adapter_config=config
        )

    def apply(self, update: WeightsUpdate, model: torch.nn.Module) -> torch.nn.Module:
        """Load the update into ``model`` and return the model to generate with.

        Full weights are loaded in place (every parameter must be present). An
        adapter is loaded with peft: the first adapter update wraps ``model``
        (whose base weights stay untouched) and later ones replace the adapter
        weights; the returned model is the peft model.
        """
        if update.is_adapter:
            return self._apply_adapter(update, model)
        load_full_state(model, update_tensors(update), f"weight update v{update.version}")
        return model

    @staticmethod
    def _apply_adapter(update: WeightsUpdate, model: torch.nn.Module) -> torch.nn.Module:
        from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict

        if not isinstance(model, PeftModel):
            config = {k: v for k, v in (update.adapter_config or {}).items() if k in LoraConfig.__dataclass_fields__}
            model = get_peft_model(model, LoraConfig(**config)).eval()
        result = set_peft_model_state_dict(model, update_tensors(update))
        missing = [k for k in result.missing_keys if "lora_" in k]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"adapter update v{update.version} does not match the rollout's adapter: "
                f"missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
            )
        return model
