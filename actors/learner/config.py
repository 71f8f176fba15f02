"""The learner's configuration, its backend contract and the policy preparation every backend shares.

``LearnerConfig`` (with ``LoraConfig``) is what the ``learner`` config section
holds; ``LearnerBackend`` is the contract the torch and DeepSpeed backends
(``actors/learner/torch_backend.py``, ``actors/learner/deepspeed_backend.py``) honour;
``prepare_policy`` makes a loaded model trainable as the config says. This
module imports no backend and no ``Learner``, so the backends import it
without a cycle.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from actors.core_share import CoreShare
from actors.model.loading import CausalLM, eval_mode
from actors.model.logprobs import LogprobSettings


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
    """Policy learner: backend, optimiser, precision, and how many data-parallel ranks.

    Invariants (checked at construction): ``world_size > 1`` needs the deepspeed
    backend, a non-empty per-rank reservation (the placement group's bundles
    cannot be empty) and 0 or 1 GPU per rank (NCCL cannot run two ranks on one
    GPU; a rank uses one); ``offload_optimizer`` needs the deepspeed backend.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["torch", "deepspeed"] = Field(
        default="torch",
        description="torch: plain AdamW in one process; deepspeed: a DeepSpeed ZeRO engine (one or several ranks).",
    )
    zero_stage: Literal[2, 3] = Field(default=2, description="DeepSpeed ZeRO stage (deepspeed backend only).")
    world_size: int = Field(
        default=1,
        ge=1,
        description="Data-parallel learner ranks (one Ray actor each, placed by a placement group); more than 1 needs backend deepspeed. Every rank trains on its share of each minibatch; the result equals one rank's.",
    )
    lr: float = Field(
        default=1e-3,
        gt=0,
        description="AdamW learning rate (1e-3 suits the built-in tiny model; real 0.5B-4B policies want about 1e-6).",
    )
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field(default=(0.9, 0.999), description="AdamW betas.")
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradient clipping norm.")
    micro_batch_size: int = Field(
        default=64,
        ge=1,
        description="Sequences per forward/backward on each rank (at most, with max_tokens_per_micro_batch); larger shares accumulate gradients.",
    )
    max_tokens_per_micro_batch: PositiveInt | None = Field(
        default=None,
        description="Token budget of a micro-batch: each rank's rows of a minibatch are sorted by length (prompt + completion tokens; offline: the row, or a pair's two rows) and packed greedily into micro-batches whose padded size (rows x the longest row in it) stays within this budget and that hold at most micro_batch_size rows, each padded only to its own longest row; the loss is the same (every micro-batch is normalised by the minibatch's totals). Must hold the longest possible sample (data.max_prompt_tokens + rollout.max_new_tokens; offline data.max_length, twice that for pairs). None: micro-batches of micro_batch_size consecutive rows, each padded to its longest.",
    )
    gradient_checkpointing: bool = Field(
        default=False,
        description="Activation checkpointing on the Hugging Face model: recompute each layer's activations in the backward pass (less memory, about one more forward of compute). Both backends.",
    )
    offload_optimizer: bool = Field(
        default=False,
        description="Keep the ZeRO optimiser state (fp32 master weights, Adam moments) and its update on the CPU (deepspeed backend only; torch's AdamW, no compiled op).",
    )
    torch_threads: PositiveInt | Literal["auto"] | CoreShare = Field(
        default="auto",
        description="torch intra-op threads in each learner process. 'auto': the train driver gives each stage the cores "
        "it has (every core when stages run in turn, pipeline.max_staleness 0; shared evenly among the rollout "
        "workers and learner ranks when they overlap, and on local Ray on CPU with HF rollouts and the torch "
        "learner by which of them computes at the moment, actors/core_share.py; at most OMP_NUM_THREADS when set); "
        "unresolved, the process keeps torch's own setting.",
    )
    num_cpus: float = Field(
        default=1.0, ge=0, description="CPUs Ray reserves per learner rank (world_size times this in all)."
    )
    num_gpus: float = Field(
        default=0.0,
        ge=0,
        description="GPUs Ray reserves per learner rank (world_size times this in all); with world_size > 1, 0 or 1.",
    )
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        default="PACK",
        description="Ray placement-group strategy for the ranks' bundles (world_size > 1): PACK fills few nodes, SPREAD spreads over nodes; STRICT_ variants fail instead of falling back.",
    )
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA adapters.")
    precision: Literal["mixed", "pure"] = Field(
        default="mixed",
        description="How the learner keeps its weights when model.dtype resolves to bfloat16. mixed: float32 master weights, gradients and AdamW state, forward and backward computed in bfloat16 (torch.autocast; DeepSpeed's bf16 mode, which keeps float32 masters in its optimiser). pure: parameters and AdamW state in bfloat16 (torch backend only): at learning rates below about 1e-4 most updates are smaller than half a bfloat16 step and round away, so the weights barely move. No effect in float32.",
    )
    logprob_chunk_tokens: PositiveInt = Field(
        default=1024,
        description="Tokens whose logits exist at a time when the learner computes log-probs and entropies: only completion positions are scored, from the hidden states, this many rows of (tokens x vocabulary) at a time (each chunk recomputed in the backward pass; under DeepSpeed ZeRO-3 the backward keeps the completion positions' float32 logits instead). Memory of that step is about 3 x this x vocabulary x 4 bytes.",
    )
    disable_dropout: bool = Field(
        default=True,
        description="Set the policy's dropout to 0 (attention, hidden and embedding dropout of the base model; a LoRA adapter's own dropout is kept), so that the gradient pass's log-probs equal the proximal and rollout ones at the same weights (TRL's disable_dropout).",
    )
    lr_scheduler: Literal["constant", "linear", "cosine"] = Field(
        default="constant",
        description="Learning-rate schedule over the run's optimiser steps (run.steps x num_iterations x num_minibatches), after the warm-up: constant, linear decay to 0, or cosine decay to 0 (transformers' get_scheduler).",
    )
    warmup_steps: int = Field(
        default=0,
        ge=0,
        description="Optimiser steps of linear warm-up from lr 0 (the first step has lr 0, as in transformers); at most one of warmup_steps and warmup_ratio may be set.",
    )
    warmup_ratio: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="Warm-up as a fraction of the run's optimiser steps (rounded up); instead of warmup_steps.",
    )

    def check_token_budget(self, sample_tokens: int, source: str) -> None:
        """ValueError (one line) when ``max_tokens_per_micro_batch`` cannot hold one sample of
        ``sample_tokens`` tokens, the most a sample can need (``source`` says where that comes from)."""
        budget = self.max_tokens_per_micro_batch
        if budget is not None and budget < sample_tokens:
            raise ValueError(
                f"learner.max_tokens_per_micro_batch={budget} is smaller than one sample can need "
                f"({source} = {sample_tokens})"
            )

    @model_validator(mode="after")
    def _check_schedule(self) -> LearnerConfig:
        if self.warmup_steps > 0 and self.warmup_ratio > 0:
            raise ValueError(
                f"learner.warmup_steps={self.warmup_steps} and learner.warmup_ratio={self.warmup_ratio:g} "
                "are both set; set one of them"
            )
        return self

    @model_validator(mode="after")
    def _check_parallelism(self) -> LearnerConfig:
        if self.world_size > 1 and self.backend != "deepspeed":
            raise ValueError(
                f"learner.world_size={self.world_size} needs learner.backend=deepspeed "
                f"(the {self.backend} backend runs one process)"
            )
        if self.precision == "pure" and self.backend != "torch":
            raise ValueError(
                "learner.precision=pure needs learner.backend=torch (DeepSpeed's bf16 mode always keeps "
                "float32 master weights)"
            )
        if self.offload_optimizer and self.backend != "deepspeed":
            raise ValueError(
                "learner.offload_optimizer needs learner.backend=deepspeed (it offloads ZeRO's optimiser state)"
            )
        if self.world_size > 1 and self.num_cpus == 0 and self.num_gpus == 0:
            raise ValueError(
                "learner.world_size > 1 needs learner.num_cpus or learner.num_gpus > 0 per rank "
                "(a placement-group bundle cannot be empty)"
            )
        if self.world_size > 1 and self.num_gpus not in (0, 1):
            raise ValueError(
                f"learner.num_gpus={self.num_gpus:g} with world_size > 1: a rank uses 0 or 1 GPU "
                "(NCCL cannot run two ranks on one GPU; for more GPUs raise world_size)"
            )
        return self


class LearnerBackend(Protocol):
    """Holds the trainable model, its optimiser and the optional frozen reference.

    Contract: ``backward`` may be called several times (one per micro-batch)
    before one ``step``; ``step`` clips, updates, zeroes the gradients and
    returns the pre-clip gradient norm. ``reference_model`` is available iff
    the backend was built with ``reference=True``. ``logprobs`` says how the
    learner computes log-probs with this backend (chunk size, autocast dtype).
    """

    model: torch.nn.Module
    device: torch.device
    compute_dtype: str  # model.dtype resolved on this device: what forwards compute in and weights sync in
    param_dtype: str  # what the trainable parameters are kept in (float32 master weights in mixed precision)
    logprobs: LogprobSettings
    rank: int  # this process's rank in the data-parallel group (0 for one process)
    world_size: int  # ranks in the group (1 for one process)

    def backward(self, loss: torch.Tensor) -> None: ...

    def step(self) -> float: ...

    def learning_rate(self) -> float:
        """The learning rate the next ``step`` applies (the LR scheduler steps once per ``step``)."""
        ...

    def save_checkpoint(self, path: str, extra: dict) -> None:
        """Write the trainable weights, optimiser and LR-scheduler state, and ``extra``, under ``path``.
        Collective (every rank writes its part)."""
        ...

    def load_checkpoint(self, path: str) -> dict:
        """Restore what ``save_checkpoint`` wrote into this (freshly built) backend; return ``extra``."""
        ...

    def reference_model(self) -> contextlib.AbstractContextManager[torch.nn.Module]:
        """A context giving the frozen reference policy to forward without gradient, in eval mode
        (LoRA: the policy with its adapters disabled for the block)."""
        ...

    def full_state_dict(self, on_device: bool = False) -> dict[str, torch.Tensor]:
        """Full weights with Hugging Face names (LoRA merged), for weight sync: CPU copies for the
        object store, or with ``on_device`` (the broadcast transport) tensors on the backend's
        device, no host round trip: the parameters themselves where no cast or merge is needed,
        valid until the next optimiser step."""
        ...

    def adapter_state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The LoRA adapter's weights (peft names) and its peft config, for adapter-only sync."""
        ...

    def save_pretrained(self, path: str) -> None:
        """The policy in Hugging Face format (the adapter only, with LoRA)."""
        ...


@contextlib.contextmanager
def reference_forward(
    has_reference: bool, lora: bool, adapters: Any, policy: torch.nn.Module, reference: torch.nn.Module | None
) -> Iterator[torch.nn.Module]:
    """What every backend's ``reference_model`` yields: with LoRA ``policy`` in eval mode with the
    adapters of ``adapters`` (its peft model) disabled for the block, else the frozen ``reference``.
    RuntimeError when the backend was built without a reference."""
    if not has_reference:
        raise RuntimeError("no reference policy: the backend was built without one (algorithm.beta = 0)")
    if lora:
        with adapters.disable_adapter(), eval_mode(policy):
            yield policy
        return
    assert reference is not None  # built with a reference and without LoRA
    yield reference


def apply_lora(model: CausalLM, lora: LoraConfig) -> CausalLM:
    """Wrap ``model`` with trainable LoRA adapters (base weights frozen)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_cfg = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_cfg)


def enable_gradient_checkpointing(model: CausalLM) -> None:
    """Activation checkpointing on a Hugging Face ``model``, in place (call before LoRA wrapping).

    Non-reentrant checkpointing: gradients reach the parameters even when a
    checkpointed layer's inputs need none (a frozen base model under LoRA); the
    KV cache, useless in training, is turned off. Active in train mode only.
    """
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False


def prepare_policy(model: CausalLM, learner: LearnerConfig) -> CausalLM:
    """The loaded policy made trainable as ``learner`` says: checkpointing, then LoRA adapters.

    A model that already carries a trainable LoRA adapter (loaded from an adapter
    directory with ``model.adapter=continue``) keeps training it; that needs
    ``learner.lora.enabled``, and no second adapter is added.
    """
    from peft import PeftModel

    if isinstance(model, PeftModel):
        if learner.disable_dropout:
            disable_dropout(model.get_base_model())
        if not learner.lora.enabled:
            raise ValueError(
                "model.adapter=continue trains the adapter of model.path: set learner.lora.enabled=true "
                "(or model.adapter=merge to train the merged weights)"
            )
        if learner.gradient_checkpointing:
            enable_gradient_checkpointing(model.get_base_model())
        return model
    if learner.disable_dropout:
        disable_dropout(model)
    if learner.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return apply_lora(model, learner.lora) if learner.lora.enabled else model


def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout off in ``model``, in place, in train mode too: every ``nn.Dropout`` gets p = 0, and every
    float ``attention_dropout``/``dropout`` attribute (the rate Hugging Face attention modules pass to
    their kernels) and config ``*dropout*`` rate becomes 0. A LoRA adapter's own dropout
    (``lora_dropout``) is kept: it is the user's choice (``learner.lora.dropout``)."""
    for name, module in model.named_modules():
        if "lora_dropout" in name:
            continue
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for rate in ("attention_dropout", "dropout"):
            if isinstance(getattr(module, rate, None), float):
                setattr(module, rate, 0.0)
    config = getattr(model, "config", None)
    for key in [k for k, v in vars(config).items() if "dropout" in k and isinstance(v, float)] if config else []:
        setattr(config, key, 0.0)
