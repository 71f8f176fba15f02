"""Plain-torch learner backend: the model, AdamW and the optional frozen reference in one process."""

from __future__ import annotations

import torch

from actors.learner import LearnerConfig, prepare_policy
from actors.models import default_device, load_causal_lm
from actors.weight_sync import adapter_state_dict, merged_state_dict


class TorchLearnerBackend:
    """AdamW on one device (the GPU Ray granted, else the CPU); gradients
    accumulate until ``step``. One process: ``rank`` 0 of ``world_size`` 1.
    Activation checkpointing when ``learner.gradient_checkpointing``.

    Reference policy (``reference=True``): with LoRA it is the policy itself with
    its adapters disabled (peft's ``disable_adapter``), so no second copy is
    loaded; otherwise a frozen copy of the initial weights (eval mode, no
    gradients, not in the optimiser). Without ``reference`` nothing is loaded.
    """

    def __init__(self, model_path: str, dtype: str, learner: LearnerConfig, reference: bool = False) -> None:
        self.device = default_device()
        self.rank, self.world_size = 0, 1
        model = prepare_policy(load_causal_lm(model_path, dtype).to(self.device), learner)
        self.model = model
        self.lora = learner.lora.enabled
        self.has_reference = reference
        self.reference: torch.nn.Module | None = None
        if reference and not self.lora:
            self.reference = load_causal_lm(model_path, dtype).to(self.device).eval().requires_grad_(False)
        self.max_grad_norm = learner.max_grad_norm
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=learner.lr, betas=learner.betas,
                                           weight_decay=learner.weight_decay)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> float:
        params = [p for p in self.model.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    @torch.no_grad()
    def reference_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if not self.has_reference:
            raise RuntimeError("no reference policy: the backend was built without one (algorithm.beta = 0)")
        if self.lora:
            with self.model.disable_adapter():
                return self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return self.reference(input_ids=input_ids, attention_mask=attention_mask).logits

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return merged_state_dict(self.model)

    def adapter_state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        return adapter_state_dict(self.model)

    def save_pretrained(self, path: str) -> None:
        self.model.save_pretrained(path)
