"""Plain-torch learner backend: the model, AdamW and the optional frozen reference in one process.

Checkpoint files (``save_checkpoint``; ``Learner`` adds the manifest):
``trainable.safetensors`` (the parameters with ``requires_grad``, by their
``named_parameters`` names: the full model once per tied tensor, or only the
LoRA adapter's ``lora_A``/``lora_B``), ``optimizer.pt`` (AdamW's
``state_dict``) and ``trainer_state.pt`` (the LR scheduler's ``state_dict``
and the caller's ``extra``: version, RNG). Loading copies the same tensors
back bit for bit, so training resumes bit-exactly.
"""

from __future__ import annotations

import contextlib
import os

import torch

from actors.learner.config import LearnerConfig, prepare_policy, reference_forward
from actors.learner.state import build_lr_scheduler
from actors.model.loading import CausalLM, default_device, load_causal_lm, resolve_attention, resolve_dtype
from actors.model.logprobs import LogprobSettings
from actors.weights.sync import adapter_state_dict, merged_state_dict

WEIGHTS, OPTIMIZER, STATE = "trainable.safetensors", "optimizer.pt", "trainer_state.pt"


class TorchLearnerBackend:
    """AdamW on one device (the GPU Ray granted, else the CPU); gradients
    accumulate until ``step``. One process: ``rank`` 0 of ``world_size`` 1.
    Activation checkpointing when ``learner.gradient_checkpointing``.

    Precision (``dtype`` is ``model.dtype``, resolved on the device): in float32
    everything is float32. In bfloat16 with ``learner.precision = mixed`` the
    parameters, gradients and AdamW state are float32 (the master weights) and
    the forward runs under ``torch.autocast`` in bfloat16 (``logprobs.autocast``;
    the backward follows it), so an update smaller than a bfloat16 step still
    accumulates; with ``pure`` the parameters and AdamW state are bfloat16.
    ``full_state_dict`` gives the weights in the compute dtype, what the rollout
    engines run in.

    Reference policy (``reference=True``): with LoRA it is the policy itself with
    its adapters disabled (peft's ``disable_adapter``), so no second copy is
    loaded; otherwise a frozen copy of the initial weights (eval mode, no
    gradients, not in the optimiser). Without ``reference`` nothing is loaded.
    """

    def __init__(
        self,
        model_path: str,
        dtype: str,
        learner: LearnerConfig,
        reference: bool = False,
        lr_horizon: int | None = None,
        attention: str = "auto",
    ) -> None:
        self.device = default_device()
        self.rank, self.world_size = 0, 1
        self.compute_dtype = resolve_dtype(dtype, self.device)
        mixed = learner.precision == "mixed" and self.compute_dtype != "float32"
        self.param_dtype = "float32" if mixed else self.compute_dtype
        self.logprobs = LogprobSettings(learner.logprob_chunk_tokens, torch.bfloat16 if mixed else None)
        attention = resolve_attention(attention, self.device)
        model = prepare_policy(load_causal_lm(model_path, self.param_dtype, attention).to(self.device), learner)
        self.model = model
        self.lora = learner.lora.enabled
        self.has_reference = reference
        self.reference: CausalLM | None = None
        if reference and not self.lora:  # frozen: kept in the compute dtype, no master copy needed
            frozen = load_causal_lm(model_path, self.compute_dtype, attention)
            self.reference = frozen.to(self.device).eval().requires_grad_(False)
        self.max_grad_norm = learner.max_grad_norm
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params, lr=learner.lr, betas=learner.betas, weight_decay=learner.weight_decay
        )
        self.lr_scheduler = build_lr_scheduler(
            self.optimizer, learner.lr_scheduler, learner.warmup_steps, learner.warmup_ratio, lr_horizon
        )

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> float:
        params = [p for p in self.model.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def learning_rate(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _trainable(self) -> dict[str, torch.nn.Parameter]:
        return {name: p for name, p in self.model.named_parameters() if p.requires_grad}

    def save_checkpoint(self, path: str, extra: dict) -> None:
        from safetensors.torch import save_file

        save_file({name: p.detach().contiguous() for name, p in self._trainable().items()}, os.path.join(path, WEIGHTS))
        torch.save(self.optimizer.state_dict(), os.path.join(path, OPTIMIZER))
        torch.save({"lr_scheduler": self.lr_scheduler.state_dict(), "extra": extra}, os.path.join(path, STATE))

    @torch.no_grad()
    def load_checkpoint(self, path: str) -> dict:
        """Weights, then optimiser (its param groups carry the lr), then scheduler; ``ValueError`` if the
        saved tensors are not exactly this model's trainable ones (names, shapes, dtypes)."""
        from safetensors.torch import load_file

        saved, params = load_file(os.path.join(path, WEIGHTS), device=str(self.device)), self._trainable()
        wrong = sorted(set(saved) ^ set(params)) + sorted(
            n
            for n in set(saved) & set(params)
            if (saved[n].shape, saved[n].dtype) != (params[n].shape, params[n].dtype)
        )
        if wrong:
            raise ValueError(
                f"checkpoint {path} holds other trainable weights than this model: {len(wrong)} differ "
                f"(first: {wrong[0]})"
            )
        for name, p in params.items():
            p.copy_(saved[name])
        self.optimizer.load_state_dict(
            torch.load(os.path.join(path, OPTIMIZER), map_location=self.device, weights_only=True)
        )
        state = torch.load(os.path.join(path, STATE), weights_only=True)
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        return state["extra"]

    def reference_model(self) -> contextlib.AbstractContextManager[torch.nn.Module]:
        """The frozen reference policy to forward (without gradient), in eval mode; with LoRA the
        policy itself with its adapters disabled for the duration of the block."""
        return reference_forward(self.has_reference, self.lora, self.model, self.model, self.reference)

    def full_state_dict(self, on_device: bool = False) -> dict[str, torch.Tensor]:
        """Full weights (LoRA merged) in the compute dtype, what the rollout engines run in: CPU
        copies, or with ``on_device`` on the learner's device (views of the parameters when they
        are already in the compute dtype; a cast or a merge is made there)."""
        dtype = getattr(torch, self.compute_dtype)
        state = merged_state_dict(self.model, None)  # on the device: the cast and the copy are one step
        if on_device:
            return {name: t.to(dtype) for name, t in state.items()}
        return {name: t.to("cpu", dtype, copy=True) for name, t in state.items()}

    def adapter_state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        return adapter_state_dict(self.model)

    def save_pretrained(self, path: str) -> None:
        self.model.save_pretrained(path)
