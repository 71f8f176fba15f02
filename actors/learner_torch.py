"""Plain-torch learner backend: the model and AdamW in one process."""

from __future__ import annotations

import torch

from actors.learner import LearnerConfig, apply_lora
from actors.models import default_device, load_causal_lm
from actors.weight_sync import merged_state_dict


class TorchLearnerBackend:
    """AdamW on one device (the GPU Ray granted, else the CPU); gradients
    accumulate until ``step``."""

    def __init__(self, model_path: str, dtype: str, learner: LearnerConfig) -> None:
        self.device = default_device()
        model = load_causal_lm(model_path, dtype).to(self.device)
        if learner.lora.enabled:
            model = apply_lora(model, learner.lora)
        self.model = model
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

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return merged_state_dict(self.model)

    def save_pretrained(self, path: str) -> None:
        self.model.save_pretrained(path)
