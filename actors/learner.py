"""Policy learner: one gradient step per ``TrainBatch``, then versioned weights.

``Learner`` is a plain class (Ray wraps it at the edge). It owns a
``LearnerBackend`` (plain torch or DeepSpeed) that holds the model and the
optimiser; the loss itself is computed here, identically for every backend,
from the pure functions in ``algorithms/``.
"""

from __future__ import annotations

import time
from typing import Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field

from actors.messages import TrainBatch, TrainResult, WeightsUpdate
from actors.models import ModelConfig, resolve_model_path
from actors.weight_sync import ObjectStoreWeightSync
from algorithms.config import AlgorithmConfig
from algorithms.logprobs import masked_mean, token_logprobs
from algorithms.losses import grpo_loss, gspo_loss


class LoraConfig(BaseModel):
    """Optional LoRA adapters (peft) instead of full fine-tuning."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=False, description="Train LoRA adapters instead of all weights.")
    r: int = Field(default=16, ge=1, description="LoRA rank.")
    alpha: int = Field(default=32, ge=1, description="LoRA alpha (scale = alpha / r).")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout on the LoRA path.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Module names that get adapters.",
    )


class LearnerConfig(BaseModel):
    """Policy learner: backend, optimiser, precision."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["torch", "deepspeed"] = Field(default="torch", description="torch: plain AdamW in one process; deepspeed: a DeepSpeed ZeRO engine.")
    zero_stage: Literal[2, 3] = Field(default=2, description="DeepSpeed ZeRO stage (deepspeed backend only).")
    lr: float = Field(default=1e-3, gt=0, description="AdamW learning rate (1e-3 suits the built-in tiny model; real 0.5B-4B policies want about 1e-6).")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field(default=(0.9, 0.999), description="AdamW betas.")
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradient clipping norm.")
    micro_batch_size: int = Field(default=64, ge=1, description="Sequences per forward/backward; larger batches accumulate gradients.")
    torch_threads: int = Field(default=1, ge=1, description="torch intra-op threads in the learner process.")
    num_cpus: float = Field(default=1.0, ge=0, description="CPUs Ray reserves for the learner.")
    num_gpus: float = Field(default=0.0, ge=0, description="GPUs Ray reserves for the learner.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA adapters.")


class LearnerBackend(Protocol):
    """Holds the trainable model and its optimiser.

    Contract: ``backward`` may be called several times (one per micro-batch)
    before one ``step``; ``step`` clips, updates, zeroes the gradients and
    returns the pre-clip gradient norm.
    """

    model: torch.nn.Module
    device: torch.device

    def backward(self, loss: torch.Tensor) -> None: ...

    def step(self) -> float: ...

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Full weights with Hugging Face names (LoRA merged), for weight sync."""
        ...

    def save_pretrained(self, path: str) -> None:
        """The policy in Hugging Face format (the adapter only, with LoRA)."""
        ...


def collate(batch: TrainBatch, rows: slice) -> dict[str, torch.Tensor]:
    """Right-padded tensors for sequences ``rows`` of the batch.

    ``input_ids`` is prompt + completion; ``completion_mask[b, t]`` is 1 where
    ``input_ids[b, t + 1]`` is a completion token, so that logits[:, t] predict
    it; ``old_logprobs`` is aligned the same way.
    """
    prompts = batch.prompt_token_ids[rows]
    completions = batch.completion_token_ids[rows]
    width = max(len(p) + len(c) for p, c in zip(prompts, completions))
    n = len(prompts)
    input_ids = torch.zeros(n, width, dtype=torch.long)
    attention = torch.zeros(n, width, dtype=torch.long)
    mask = torch.zeros(n, width - 1)
    old = torch.zeros(n, width - 1)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        seq = p + c
        input_ids[i, : len(seq)] = torch.tensor(seq)
        attention[i, : len(seq)] = 1
        mask[i, len(p) - 1 : len(seq) - 1] = 1
        old[i, len(p) - 1 : len(seq) - 1] = torch.tensor(batch.sampling_logprobs[rows][i])
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "completion_mask": mask,
        "old_logprobs": old,
        "advantages": torch.tensor(batch.advantages[rows], dtype=torch.float32),
    }


def policy_loss(
    model: torch.nn.Module, tensors: dict[str, torch.Tensor], algorithm: AlgorithmConfig, temperature: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Forward pass and the configured policy-gradient loss for one micro-batch."""
    logits = model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"]).logits
    logps = token_logprobs(logits[:, :-1], tensors["input_ids"][:, 1:], temperature)
    mask = tensors["completion_mask"]
    loss_fn = grpo_loss if algorithm.name == "grpo" else gspo_loss
    loss, stats = loss_fn(logps, tensors["old_logprobs"], tensors["advantages"], mask,
                          epsilon_low=algorithm.epsilon, epsilon_high=algorithm.epsilon_high)
    with torch.no_grad():
        stats["logprob_gap/mean_abs"] = float(masked_mean((logps - tensors["old_logprobs"]).abs(), mask))
    return loss, stats


def apply_lora(model: torch.nn.Module, lora: LoraConfig) -> torch.nn.Module:
    """Wrap ``model`` with trainable LoRA adapters (base weights frozen)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_cfg = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                              target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, peft_cfg)


def build_backend(learner: LearnerConfig, model: ModelConfig) -> LearnerBackend:
    """The configured backend, with the model loaded (and LoRA applied)."""
    path = resolve_model_path(model)
    if learner.backend == "torch":
        from actors.learner_torch import TorchLearnerBackend

        return TorchLearnerBackend(path, model.dtype, learner)
    from actors.learner_deepspeed import DeepSpeedLearnerBackend

    return DeepSpeedLearnerBackend(path, model.dtype, learner)


class Learner:
    """Takes gradient steps and publishes versioned weights.

    Invariant: ``version`` equals the number of steps taken; ``train`` accepts
    only the batch for step ``version`` (so no batch is trained twice or skipped).
    """

    def __init__(self, learner: LearnerConfig, model: ModelConfig, algorithm: AlgorithmConfig,
                 temperature: float, seed: int = 0) -> None:
        torch.set_num_threads(learner.torch_threads)
        torch.manual_seed(seed)
        self.config = learner
        self.algorithm = algorithm
        self.temperature = temperature
        self.version = 0
        self.backend = build_backend(learner, model)
        self._sync = ObjectStoreWeightSync()

    def train(self, batch: TrainBatch) -> TrainResult:
        """One optimiser step over ``batch`` (gradients accumulated over micro-batches)."""
        if batch.step != self.version:
            raise ValueError(f"learner is at version {self.version} but got the batch for step {batch.step}")
        if len(batch) == 0:
            raise ValueError(f"step {batch.step}: empty batch (every sample unscored?)")
        start = time.perf_counter()
        self.backend.model.train()
        total, mb = len(batch), self.config.micro_batch_size
        sums: dict[str, float] = {}
        for lo in range(0, total, mb):
            rows = slice(lo, min(lo + mb, total))
            tensors = {k: v.to(self.backend.device) for k, v in collate(batch, rows).items()}
            loss, stats = policy_loss(self.backend.model, tensors, self.algorithm, self.temperature)
            share = (rows.stop - rows.start) / total  # sequence-mean losses: weight by share
            self.backend.backward(loss * share)
            for key, value in {"loss": float(loss.detach()), **stats}.items():
                sums[key] = sums.get(key, 0.0) + value * share
        grad_norm = self.backend.step()
        self.version += 1
        metrics = {**sums, "grad_norm": grad_norm, "time/train_s": time.perf_counter() - start}
        return TrainResult(step=batch.step, policy_version=self.version, metrics=metrics)

    def export_weights(self) -> WeightsUpdate:
        """Full (merged) weights at the current version, for the rollout workers."""
        return self._sync.export(self.backend.full_state_dict(), self.version)

    def save(self, path: str) -> None:
        """Save the final policy in Hugging Face format."""
        self.backend.save_pretrained(path)
