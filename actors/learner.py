"""Policy learner: the optimiser steps for one ``TrainBatch``, then versioned weights.

``Learner`` is a plain class (Ray wraps it at the edge). It owns a
``LearnerBackend`` (plain torch or DeepSpeed) that holds the model, the
optimiser and, when the KL term is on, the frozen reference policy; the loss is
composed here, identically for every backend and every algorithm, from the
pure functions in ``algorithms/`` (``policy_loss`` is the one place that does it).

One ``train`` call, in ``AlgorithmSettings`` terms:

1. Preparation, without gradients, of only what the settings need:
   *proximal* log-probs (the learner's own, under the pre-update weights) when
   ``uses_proximal`` and the batch takes more than one optimiser step (with a
   single step they equal the gradient pass's log-probs, used detached);
   *reference* log-probs when ``beta > 0``; per-token advantages when the KL is
   folded into the reward (re-estimated from ``TrainBatch.rewards`` with the
   per-token KL between the behaviour policy and the reference).
2. ``num_iterations`` passes over the batch, each split into ``num_minibatches``
   contiguous minibatches, one optimiser step per minibatch, gradients
   accumulated over micro-batches of ``micro_batch_size`` sequences. Each
   micro-batch loss is normalised by its minibatch's totals (``LossTotals``), so
   the accumulated gradient is the minibatch loss's whatever the micro-batch size.

The clip's "old" policy. By default it is the *behaviour* policy, the
log-probs the rollout recorded while sampling (computed as the learner computes
them), which makes the ratio of a stale sample correct. When
``num_iterations > 1`` or ``rollout_correction != none`` it is the *proximal*
policy (the learner before this batch's first update), and the rollout's
log-probs enter through the detached importance weight ``pi_prox / pi_behav``,
truncated or masked at ``rollout_correction_cap`` (decoupled PPO as in AReaL;
TRL's vLLM importance-sampling correction is the same with one rollout
version). With ``num_iterations > 1`` and ``rollout_correction = none`` the
behaviour/proximal mismatch (staleness, engine differences) is left
uncorrected: use that on-policy (``pipeline.max_staleness = 0``) only.

Data parallelism (``learner.world_size > 1``, DeepSpeed only). Every rank gets
the same full ``TrainBatch`` and takes the same optimiser steps; rank ``r``
forwards and backwards only ``shard(rows, r, world_size)``, a contiguous share
of each minibatch's rows, in the micro-batches ``micro_batch_plan`` gives it:

* Gradient: each micro-batch loss is still normalised by the GLOBAL minibatch
  ``LossTotals`` and multiplied by ``world_size`` before ``backward``; DeepSpeed
  averages gradients over ranks, so the applied gradient is the sum of the
  ranks' parts, i.e. the single-process minibatch gradient.
* Collectives: ZeRO reduces gradients in every ``backward`` and ZeRO-3 gathers
  parameters in every forward, so every rank must run the same number of each.
  ``micro_batch_plan`` pads a rank's list with *padding* micro-batches (the
  minibatch's first row again, loss times 0, statistics ignored) up to the
  count of the largest share, which every rank computes alike from the row
  count alone. The no-gradient log-probs (proximal, reference) are sharded the
  same way over the whole batch and then summed across ranks into every rank's
  copy (each token has one owner, the others add zeros: exact).
* Metrics: after each optimiser step one ``all_reduce`` on the default process
  group sums the row-weighted statistics and the loss parts and takes the max
  of ``*_max`` keys, so every rank (rank 0 included) reports what one process
  would with the same micro-batches; ``grad_norm`` is DeepSpeed's global norm.
  Statistics that are per-micro-batch means (clip fractions, entropy) are
  weighted by rows, as in one process, so they equal the single-process values
  exactly when the micro-batch boundaries coincide (e.g. each share a multiple
  of ``micro_batch_size``), and otherwise differ only in that weighting.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.nn.utils.rnn import pad_sequence

from actors import learner_state
from actors.messages import TrainBatch, TrainResult, WeightsUpdate
from actors.models import ModelConfig, resolve_model_path
from actors.weight_broadcast import Plan, broadcast_buckets, bucket_plan, join_group
from actors.weight_sync import ObjectStoreWeightSync
from algorithms.advantages import token_advantages
from algorithms.config import AlgorithmConfig, AlgorithmSettings
from algorithms.importance import rollout_correction_weights
from algorithms.kl import kl_estimate
from algorithms.logprobs import masked_mean, token_entropy, token_logprobs
from algorithms.losses import aggregate_loss, clip_stats, clipped_surrogate, importance_log_ratio


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

    backend: Literal["torch", "deepspeed"] = Field(default="torch", description="torch: plain AdamW in one process; deepspeed: a DeepSpeed ZeRO engine (one or several ranks).")
    zero_stage: Literal[2, 3] = Field(default=2, description="DeepSpeed ZeRO stage (deepspeed backend only).")
    world_size: int = Field(default=1, ge=1, description="Data-parallel learner ranks (one Ray actor each, placed by a placement group); more than 1 needs backend deepspeed. Every rank trains on its share of each minibatch; the result equals one rank's.")
    lr: float = Field(default=1e-3, gt=0, description="AdamW learning rate (1e-3 suits the built-in tiny model; real 0.5B-4B policies want about 1e-6).")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field(default=(0.9, 0.999), description="AdamW betas.")
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradient clipping norm.")
    micro_batch_size: int = Field(default=64, ge=1, description="Sequences per forward/backward on each rank; larger shares accumulate gradients.")
    gradient_checkpointing: bool = Field(default=False, description="Activation checkpointing on the Hugging Face model: recompute each layer's activations in the backward pass (less memory, about one more forward of compute). Both backends.")
    offload_optimizer: bool = Field(default=False, description="Keep the ZeRO optimiser state (fp32 master weights, Adam moments) and its update on the CPU (deepspeed backend only; torch's AdamW, no compiled op).")
    torch_threads: int = Field(default=1, ge=1, description="torch intra-op threads in each learner process.")
    num_cpus: float = Field(default=1.0, ge=0, description="CPUs Ray reserves per learner rank (world_size times this in all).")
    num_gpus: float = Field(default=0.0, ge=0, description="GPUs Ray reserves per learner rank (world_size times this in all); with world_size > 1, 0 or 1.")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(default="PACK", description="Ray placement-group strategy for the ranks' bundles (world_size > 1): PACK fills few nodes, SPREAD spreads over nodes; STRICT_ variants fail instead of falling back.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA adapters.")
    lr_scheduler: Literal["constant", "linear", "cosine"] = Field(default="constant", description="Learning-rate schedule over the run's optimiser steps (run.steps x num_iterations x num_minibatches), after the warm-up: constant, linear decay to 0, or cosine decay to 0 (transformers' get_scheduler).")
    warmup_steps: int = Field(default=0, ge=0, description="Optimiser steps of linear warm-up from lr 0 (the first step has lr 0, as in transformers); at most one of warmup_steps and warmup_ratio may be set.")
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1, description="Warm-up as a fraction of the run's optimiser steps (rounded up); instead of warmup_steps.")

    @model_validator(mode="after")
    def _check_schedule(self) -> LearnerConfig:
        if self.warmup_steps > 0 and self.warmup_ratio > 0:
            raise ValueError(f"learner.warmup_steps={self.warmup_steps} and learner.warmup_ratio={self.warmup_ratio:g} "
                             "are both set; set one of them")
        return self

    @model_validator(mode="after")
    def _check_parallelism(self) -> LearnerConfig:
        if self.world_size > 1 and self.backend != "deepspeed":
            raise ValueError(f"learner.world_size={self.world_size} needs learner.backend=deepspeed "
                             f"(the {self.backend} backend runs one process)")
        if self.offload_optimizer and self.backend != "deepspeed":
            raise ValueError("learner.offload_optimizer needs learner.backend=deepspeed (it offloads ZeRO's optimiser state)")
        if self.world_size > 1 and self.num_cpus == 0 and self.num_gpus == 0:
            raise ValueError("learner.world_size > 1 needs learner.num_cpus or learner.num_gpus > 0 per rank "
                             "(a placement-group bundle cannot be empty)")
        if self.world_size > 1 and self.num_gpus not in (0, 1):
            raise ValueError(f"learner.num_gpus={self.num_gpus:g} with world_size > 1: a rank uses 0 or 1 GPU "
                             "(NCCL cannot run two ranks on one GPU; for more GPUs raise world_size)")
        return self


class LearnerBackend(Protocol):
    """Holds the trainable model, its optimiser and the optional frozen reference.

    Contract: ``backward`` may be called several times (one per micro-batch)
    before one ``step``; ``step`` clips, updates, zeroes the gradients and
    returns the pre-clip gradient norm. ``reference_logits`` is available iff
    the backend was built with ``reference=True``.
    """

    model: torch.nn.Module
    device: torch.device
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

    def reference_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits of the frozen reference policy, without gradient (LoRA: adapters disabled)."""
        ...

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Full weights with Hugging Face names (LoRA merged), for weight sync."""
        ...

    def adapter_state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The LoRA adapter's weights (peft names) and its peft config, for adapter-only sync."""
        ...

    def save_pretrained(self, path: str) -> None:
        """The policy in Hugging Face format (the adapter only, with LoRA)."""
        ...


PerToken = dict[str, list[torch.Tensor]]  # name -> one 1-D tensor per sequence, over its completion tokens


@dataclass(frozen=True)
class LossTotals:
    """A minibatch's totals, by which every one of its micro-batch losses is normalised."""

    sequences: int
    tokens: int
    max_length: int | None = None


def collate(batch: TrainBatch, rows: slice, per_token: PerToken | None = None) -> dict[str, torch.Tensor]:
    """Right-padded tensors for sequences ``rows`` of the batch.

    ``input_ids`` is prompt + completion; ``completion_mask[b, t]`` is 1 where
    ``input_ids[b, t + 1]`` is a completion token, so that logits[:, t] predict
    it; ``old_logprobs`` (the behaviour policy's, as sampled) and every
    ``per_token`` entry are aligned the same way. ``advantages`` is (n,) from the
    batch, unless ``per_token`` holds per-token ``advantages``, which replace it.
    """
    per_token = per_token or {}
    prompts = batch.prompt_token_ids[rows]
    completions = batch.completion_token_ids[rows]
    width = max(len(p) + len(c) for p, c in zip(prompts, completions))
    n = len(prompts)
    input_ids = torch.zeros(n, width, dtype=torch.long)
    attention = torch.zeros(n, width, dtype=torch.long)
    mask = torch.zeros(n, width - 1)
    aligned = {name: torch.zeros(n, width - 1) for name in ("old_logprobs", *per_token)}
    sources = {"old_logprobs": batch.sampling_logprobs[rows], **{k: v[rows] for k, v in per_token.items()}}
    for i, (p, c) in enumerate(zip(prompts, completions)):
        seq = p + c
        input_ids[i, : len(seq)] = torch.tensor(seq)
        attention[i, : len(seq)] = 1
        mask[i, len(p) - 1 : len(seq) - 1] = 1
        for name, values in sources.items():
            aligned[name][i, len(p) - 1 : len(seq) - 1] = torch.as_tensor(values[i], dtype=torch.float32)
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "completion_mask": mask,
        "advantages": torch.tensor(batch.advantages[rows], dtype=torch.float32),
        **aligned,
    }


def policy_loss(
    model: torch.nn.Module,
    tensors: dict[str, torch.Tensor],
    algorithm: AlgorithmConfig | AlgorithmSettings,
    temperature: float,
    totals: LossTotals | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Forward pass and the configured policy loss for one micro-batch.

    ``tensors`` come from ``collate`` (with ``proximal_logprobs`` /
    ``ref_logprobs`` when prepared); ``totals`` default to this micro-batch's own.
    """
    s = algorithm.settings if isinstance(algorithm, AlgorithmConfig) else algorithm
    logits = model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"]).logits[:, :-1]
    logps = token_logprobs(logits, tensors["input_ids"][:, 1:], temperature)
    loss, stats = compose_loss(logps, tensors, s, totals)
    with torch.no_grad():
        stats["entropy"] = float(masked_mean(token_entropy(logits, temperature), tensors["completion_mask"]))
    return loss, stats


def compose_loss(
    logps: torch.Tensor,
    tensors: dict[str, torch.Tensor],
    s: AlgorithmSettings,
    totals: LossTotals | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The one place the pure functions are composed into the policy loss.

    From the current log-probs ``logps`` (B, T) and the ``collate`` tensors:
    importance ratio at the configured level against the clip's old policy
    (behaviour, or proximal when ``uses_proximal``), PPO-clip surrogate,
    rollout-correction weight ``pi_prox / pi_behav`` (when on), ``beta * KL``
    (when the KL is a loss term), aggregation by the minibatch ``totals``.
    Missing ``proximal_logprobs`` means "the current policy before this update":
    ``logps`` detached.
    """
    mask = tensors["completion_mask"]
    behaviour = tensors["old_logprobs"]
    proximal = tensors.get("proximal_logprobs", logps.detach())
    old = proximal if s.uses_proximal else behaviour
    surrogate = clipped_surrogate(importance_log_ratio(logps, old, mask, s.importance_sampling_level),
                                  tensors["advantages"], s.epsilon, s.epsilon_high)
    per_token = surrogate.per_token
    mode = "truncate" if s.rollout_correction == "none" else s.rollout_correction  # none: statistics only
    weights, is_stats = rollout_correction_weights(proximal, behaviour, mask, s.rollout_correction_level, mode,
                                                   s.rollout_correction_cap)
    if s.rollout_correction != "none":
        per_token = per_token * weights
    stats = {**clip_stats(surrogate, mask), **is_stats}
    if s.needs_reference:
        kl = kl_estimate(logps, tensors["ref_logprobs"], s.kl_estimator)
        if s.kl_penalty == "loss":
            per_token = per_token + s.beta * kl
        stats["kl"] = float(masked_mean(kl.detach(), mask))
    totals = totals or LossTotals(len(mask), int(mask.sum()))
    loss = aggregate_loss(per_token, mask, s.loss_aggregation, totals.sequences, totals.tokens, totals.max_length)
    stats["logprob_gap/mean_abs"] = float(masked_mean((logps.detach() - behaviour).abs(), mask))
    return loss, stats


def apply_lora(model: torch.nn.Module, lora: LoraConfig) -> torch.nn.Module:
    """Wrap ``model`` with trainable LoRA adapters (base weights frozen)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_cfg = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                              target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, peft_cfg)


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Activation checkpointing on a Hugging Face ``model``, in place (call before LoRA wrapping).

    Non-reentrant checkpointing: gradients reach the parameters even when a
    checkpointed layer's inputs need none (a frozen base model under LoRA); the
    KV cache, useless in training, is turned off. Active in train mode only.
    """
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False


def prepare_policy(model: torch.nn.Module, learner: LearnerConfig) -> torch.nn.Module:
    """The loaded policy made trainable as ``learner`` says: checkpointing, then LoRA adapters."""
    if learner.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return apply_lora(model, learner.lora) if learner.lora.enabled else model


def build_backend(learner: LearnerConfig, model: ModelConfig, reference: bool = False,
                  lr_horizon: int | None = None) -> LearnerBackend:
    """The configured backend, with the model loaded (and LoRA applied), the
    frozen reference policy when ``reference`` (none is loaded otherwise), and
    the LR schedule over ``lr_horizon`` optimiser steps (``actors/learner_state.py``)."""
    path = resolve_model_path(model)
    if learner.backend == "torch":
        from actors.learner_torch import TorchLearnerBackend

        return TorchLearnerBackend(path, model.dtype, learner, reference=reference, lr_horizon=lr_horizon)
    from actors.learner_deepspeed import DeepSpeedLearnerBackend

    return DeepSpeedLearnerBackend(path, model.dtype, learner, reference=reference, lr_horizon=lr_horizon)


def _slices(rows: slice, parts: int) -> list[slice]:
    """``rows`` cut into at most ``parts`` contiguous, non-empty slices of near-equal size."""
    n = rows.stop - rows.start
    parts = max(1, min(parts, n))
    bounds = [rows.start + (n * k) // parts for k in range(parts + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def _chunks(rows: slice, size: int) -> list[slice]:
    """``rows`` cut into consecutive slices of ``size`` sequences (the last may be shorter)."""
    return [slice(lo, min(lo + size, rows.stop)) for lo in range(rows.start, rows.stop, size)]


def shard(rows: slice, rank: int, world_size: int) -> slice:
    """Rank ``rank``'s contiguous share of ``rows``: ``n * r // world_size`` to ``n * (r + 1) // world_size``.

    The shares of ranks 0..world_size-1 are in order, disjoint, cover ``rows``
    and differ in size by at most one (some are empty when ``n < world_size``).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a group of {world_size}")
    n = rows.stop - rows.start
    return slice(rows.start + n * rank // world_size, rows.start + n * (rank + 1) // world_size)


@dataclass(frozen=True)
class MicroBatch:
    """One forward (and, in training, one backward) on one rank.

    A ``padding`` micro-batch repeats a real row only so that this rank makes
    the same collective calls as the others: its loss is multiplied by 0, its
    statistics and log-probs are ignored.
    """

    rows: slice
    padding: bool = False


def micro_batch_plan(rows: slice, rank: int, world_size: int, micro_batch_size: int) -> list[MicroBatch]:
    """This rank's micro-batches for ``rows``: its ``shard`` in chunks of ``micro_batch_size``, then padding.

    Invariants: every rank's plan has the same length, the chunk count of the
    largest share, ``ceil(ceil(n / world_size) / micro_batch_size)``, which
    depends on the row count only; the real micro-batches of all ranks, in rank
    order, are the rows in order, each exactly once; padding repeats the first
    row of ``rows``. With ``world_size == 1`` the plan is ``rows`` in chunks,
    with no padding.
    """
    n = rows.stop - rows.start
    if n <= 0:
        raise ValueError(f"no rows to plan: {rows}")
    real = [MicroBatch(chunk) for chunk in _chunks(shard(rows, rank, world_size), micro_batch_size)]
    largest_share = -(-n // world_size)
    count = -(-largest_share // micro_batch_size)
    return real + [MicroBatch(slice(rows.start, rows.start + 1), padding=True)] * (count - len(real))


def _accumulate(record: dict[str, float], stats: dict[str, float], share: float, padding: bool) -> None:
    """Fold one micro-batch's statistics into ``record``, in place.

    ``*_max`` keys by max, the others weighted by ``share`` (the micro-batch's
    rows over the minibatch's). A padding micro-batch adds its keys with no
    weight (0, or -inf for maxima), so that every rank holds the same keys.
    """
    for key, value in stats.items():
        if key.endswith("_max"):
            record[key] = max(record.get(key, -math.inf), -math.inf if padding else value)
        else:
            record[key] = record.get(key, 0.0) + (0.0 if padding else value * share)


def _all_reduce(values: torch.Tensor, op: torch.distributed.ReduceOp, device: torch.device) -> torch.Tensor:
    """``values`` reduced over the default process group, back on the CPU (sent from ``device``:
    NCCL only reduces CUDA tensors)."""
    on_device = values.to(device)
    torch.distributed.all_reduce(on_device, op=op)
    return on_device.cpu()


def _mean_metrics(records: list[dict[str, float]]) -> dict[str, float]:
    """Per-optimiser-step metrics to one value each: the max for ``*_max`` keys, else the mean."""
    keys = dict.fromkeys(k for r in records for k in r)
    return {k: (max if k.endswith("_max") else statistics.fmean)([r[k] for r in records if k in r]) for k in keys}


class Learner:
    """Takes the optimiser steps for each rollout batch and publishes versioned weights.

    Invariants: ``version`` equals the number of batches trained (each takes
    ``num_iterations * num_minibatches`` optimiser steps); ``train`` accepts only
    the batch for step ``version`` (so no batch is trained twice or skipped). A
    reference policy is loaded iff ``algorithm.beta > 0``.

    Several ranks (``learner.world_size > 1``; one ``Learner`` per process, the
    backend's process group of exactly ``world_size`` ranks): every rank is
    given the same calls with the same arguments, in the same order (``train``,
    ``export_weights``, ``save`` are collective); every rank makes the same
    number of forwards, backwards and reductions per call (``micro_batch_plan``);
    every rank returns the same ``TrainResult``; only rank 0's
    ``export_weights`` holds weights (the others' are empty).

    LR schedule: ``total_steps`` is the run's number of batches (``run.steps``);
    the schedule spans ``total_steps * num_iterations * num_minibatches``
    optimiser steps and is stepped once per optimiser step. Without
    ``total_steps`` only the constant schedule without warm-up is allowed.
    """

    def __init__(self, learner: LearnerConfig, model: ModelConfig, algorithm: AlgorithmConfig,
                 temperature: float, seed: int = 0, max_new_tokens: int | None = None,
                 total_steps: int | None = None) -> None:
        torch.set_num_threads(learner.torch_threads)
        torch.manual_seed(seed)
        self.config = learner
        self.algorithm = algorithm
        self.settings = algorithm.settings
        if self.settings.loss_aggregation == "constant" and not max_new_tokens:
            raise ValueError("algorithm.loss_aggregation 'constant' needs max_new_tokens (rollout.max_new_tokens)")
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.version = 0
        horizon = learner_state.optimizer_step_horizon(learner.lr_scheduler, learner.warmup_steps, learner.warmup_ratio,
                                                       total_steps, self.settings.num_iterations,
                                                       self.settings.num_minibatches)
        self.backend = build_backend(learner, model, reference=self.settings.needs_reference, lr_horizon=horizon)
        self.rank, self.world_size = self.backend.rank, self.backend.world_size
        if self.world_size != learner.world_size:
            raise RuntimeError(f"learner.world_size={learner.world_size} but the backend's process group has "
                               f"{self.world_size} ranks")
        self._sync = ObjectStoreWeightSync()
        lora = learner.lora.model_dump(include={"r", "alpha", "target_modules"}) if learner.lora.enabled else None
        self._layout = learner_state.checkpoint_layout(learner.backend, learner.zero_stage, learner.world_size,
                                                       model.dtype, lora)

    def train(self, batch: TrainBatch) -> TrainResult:
        """``num_iterations`` passes of ``num_minibatches`` optimiser steps over ``batch``.

        With several ranks every rank gets the same full ``batch`` and trains
        on its shares of it; the result is the same on every rank.
        """
        if batch.step != self.version:
            raise ValueError(f"learner is at version {self.version} but got the batch for step {batch.step}")
        if len(batch) == 0:
            raise ValueError(f"step {batch.step}: empty batch (every sample unscored?)")
        start = time.perf_counter()
        self.backend.model.train()
        per_token = self._prepare(batch)
        everything = slice(0, len(batch))
        records = [self._optimizer_step(batch, rows, per_token)
                   for _ in range(self.settings.num_iterations)
                   for rows in _slices(everything, self.settings.num_minibatches)]
        self.version += 1
        metrics = {**_mean_metrics(records), "optim/steps": float(len(records)),
                   "time/train_s": time.perf_counter() - start}
        return TrainResult(step=batch.step, policy_version=self.version, metrics=metrics)

    def _optimizer_step(self, batch: TrainBatch, rows: slice, per_token: PerToken) -> dict[str, float]:
        """One optimiser step on minibatch ``rows`` (this rank's share), accumulated over micro-batches.

        Each micro-batch loss is normalised by the whole minibatch's totals and
        multiplied by ``world_size`` (DeepSpeed averages gradients over ranks),
        a padding one by 0, so the applied gradient is the minibatch loss's.
        Returns the minibatch's metrics, combined over ranks.
        """
        totals = LossTotals(rows.stop - rows.start, sum(len(c) for c in batch.completion_token_ids[rows]),
                            self.max_new_tokens)
        record: dict[str, float] = {"loss": 0.0}
        for micro in micro_batch_plan(rows, self.rank, self.world_size, self.config.micro_batch_size):
            tensors = {k: v.to(self.backend.device) for k, v in collate(batch, micro.rows, per_token).items()}
            loss, stats = policy_loss(self.backend.model, tensors, self.settings, self.temperature, totals)
            scale = 0.0 if micro.padding else float(self.world_size)
            self.backend.backward(loss if scale == 1.0 else loss * scale)
            if not micro.padding:
                record["loss"] += float(loss.detach())  # normalised by the minibatch totals: the parts add up
            _accumulate(record, stats, (micro.rows.stop - micro.rows.start) / totals.sequences, micro.padding)
        record = self._combine_over_ranks(record)
        record["lr"] = self.backend.learning_rate()
        record["grad_norm"] = self.backend.step()  # DeepSpeed's is global: the same on every rank
        return record

    def _combine_over_ranks(self, record: dict[str, float]) -> dict[str, float]:
        """``record`` summed over ranks (``*_max`` keys: their max); unchanged with one rank.

        Every rank holds the same keys (``_accumulate`` adds padding
        micro-batches' keys too, and the statistics' keys depend on the settings
        only), so the values line up when sent in sorted key order.
        """
        if self.world_size == 1:
            return record
        combined: dict[str, float] = {}
        keys = sorted(record)
        for op, names in ((torch.distributed.ReduceOp.SUM, [k for k in keys if not k.endswith("_max")]),
                          (torch.distributed.ReduceOp.MAX, [k for k in keys if k.endswith("_max")])):
            if names:
                values = torch.tensor([record[k] for k in names], dtype=torch.float64)
                combined.update(zip(names, _all_reduce(values, op, self.backend.device).tolist()))
        return {key: combined[key] for key in record}

    def _prepare(self, batch: TrainBatch) -> PerToken:
        """Proximal and reference log-probs and per-token advantages, as the settings need them."""
        s = self.settings
        steps = s.num_iterations * len(_slices(slice(0, len(batch)), s.num_minibatches))
        per_token = self._no_grad_logprobs(batch, proximal=s.uses_proximal and steps > 1,
                                           reference=s.needs_reference)
        if s.needs_reference and s.kl_penalty == "reward":
            per_token["advantages"] = self._kl_reward_advantages(batch, per_token["ref_logprobs"])
        return per_token

    @torch.no_grad()
    def _no_grad_logprobs(self, batch: TrainBatch, proximal: bool, reference: bool) -> PerToken:
        """Per-sequence completion log-probs of the current (pre-update) policy and of the reference.

        Every rank returns them for all rows of ``batch``; it computes only its
        ``shard`` of the rows (with padding forwards, see ``micro_batch_plan``)
        and gets the others' through ``_share_rows``.
        """
        out: PerToken = {name: [] for name, on in (("proximal_logprobs", proximal), ("ref_logprobs", reference)) if on}
        if not out:
            return out
        everything = slice(0, len(batch))
        for micro in micro_batch_plan(everything, self.rank, self.world_size, self.config.micro_batch_size):
            t = {k: v.to(self.backend.device) for k, v in collate(batch, micro.rows).items()}
            keep, targets = t["completion_mask"].bool(), t["input_ids"][:, 1:]
            forwards = {"proximal_logprobs": lambda: self.backend.model(input_ids=t["input_ids"],
                                                                         attention_mask=t["attention_mask"]).logits,
                        "ref_logprobs": lambda: self.backend.reference_logits(t["input_ids"], t["attention_mask"])}
            for name in out:
                logps = token_logprobs(forwards[name]()[:, :-1], targets, self.temperature)
                if not micro.padding:
                    out[name].extend(logps[i][keep[i]].cpu() for i in range(len(keep)))
        return self._share_rows(batch, shard(everything, self.rank, self.world_size), out)

    def _share_rows(self, batch: TrainBatch, mine: slice, local: PerToken) -> PerToken:
        """All ranks' rows on every rank, from ``local`` holding rows ``mine`` (unchanged with one rank).

        One flat buffer over every completion token of the batch: each rank
        writes its rows' values, zeros elsewhere, and the buffers are summed
        over ranks. Every token has exactly one writer, so each value arrives
        unchanged (x + 0 == x), in float32.
        """
        if self.world_size == 1:
            return local
        lengths = [len(c) for c in batch.completion_token_ids]
        start = sum(lengths[: mine.start])
        flat = torch.zeros(len(local), sum(lengths))
        for j, values in enumerate(local.values()):
            if values:
                flat[j, start : start + sum(lengths[mine])] = torch.cat(values).float()
        summed = _all_reduce(flat, torch.distributed.ReduceOp.SUM, self.backend.device)
        return {name: list(summed[j].split(lengths)) for j, name in enumerate(local)}

    def _kl_reward_advantages(self, batch: TrainBatch, ref_logprobs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-token advantages with ``-beta * KL(behaviour || reference)`` folded into the reward."""
        s = self.settings
        if len(batch.rewards) != len(batch) or len(batch.group_ids) != len(batch):
            raise ValueError("algorithm.kl_penalty 'reward' needs TrainBatch.rewards and group_ids for every sequence")
        lengths = [len(c) for c in batch.completion_token_ids]
        mask = pad_sequence([torch.ones(n) for n in lengths], batch_first=True)
        behaviour = pad_sequence([torch.tensor(lp, dtype=torch.float32) for lp in batch.sampling_logprobs], batch_first=True)
        kl = kl_estimate(behaviour, pad_sequence(ref_logprobs, batch_first=True), s.kl_estimator)
        adv = token_advantages(torch.tensor(batch.rewards), torch.tensor(batch.group_ids), mask, kl, s.beta,
                               s.baseline, s.scale_rewards, s.whiten_advantages)
        return [adv[i, :n] for i, n in enumerate(lengths)]

    def export_weights(self, adapter_only: bool = False) -> WeightsUpdate:
        """Weights at the current version for the rollout workers: full (LoRA
        merged into the copy) or, with ``adapter_only``, the LoRA adapter alone.
        Collective (every rank calls it); ranks other than 0 return an empty update."""
        if adapter_only:
            if not self.config.lora.enabled:
                raise ValueError("adapter-only weight sync needs learner.lora.enabled")
            return self._sync.export_adapter(*self.backend.adapter_state_dict(), version=self.version)
        return self._sync.export(self.backend.full_state_dict(), self.version)

    def weight_plan(self, bucket_bytes: int) -> Plan:
        """The bucket layout of every broadcast (names, dtypes and shapes never change).
        Collective; rank 0's plan is the one that counts."""
        state = self.backend.full_state_dict()
        return bucket_plan(state, bucket_bytes) if state else []

    def join_weight_group(self, host: str, port: int, world_size: int, backend: str) -> None:
        """Rank 0 only: host the weight-broadcast group as its rank 0 (the sender)."""
        self._broadcast_group = join_group(host, port, 0, world_size, backend, self.backend.device)

    def broadcast_weights(self, plan: Plan) -> int:
        """Send the current full weights to every engine in the group; returns the bytes sent.
        Collective (the ZeRO-3 gather): every rank calls it, rank 0 sends."""
        state = self.backend.full_state_dict()
        if self.backend.rank != 0:
            return 0
        return broadcast_buckets(self._broadcast_group, state, plan, self.backend.device)

    def save(self, path: str) -> None:
        """Save the final policy in Hugging Face format."""
        self.backend.save_pretrained(path)

    def save_checkpoint(self, path: str) -> dict[str, float]:
        """Everything needed to continue training exactly, under directory ``path`` (collective).

        Trainable weights, optimiser and LR-scheduler state (the backend's
        files), every rank's torch RNG state and ``version``; then rank 0's
        manifest (``actors/learner_state.py``: its presence marks a complete
        checkpoint). Not saved: the frozen reference, which construction
        rebuilds. Returns the same ``{"bytes", "seconds"}`` on every rank: the
        directory's size as rank 0 counts it, and the slowest rank's wall time.
        """
        start = time.perf_counter()
        learner_state.begin_save(path, self.rank)
        extra = {"version": self.version, "rng": learner_state.every_rank_rng_state(self.world_size)}
        self.backend.save_checkpoint(path, extra)  # returns once every rank's files are written
        size = learner_state.commit_save(path, self._layout, self.version) if self.rank == 0 else 0
        size, seconds = learner_state.max_over_ranks((float(size), time.perf_counter() - start), self.backend.device,
                                                     self.world_size)
        return {"bytes": size, "seconds": seconds}

    def load_checkpoint(self, path: str) -> int:
        """Restore a ``save_checkpoint`` of a learner with this layout into this one; the restored version.

        Collective. The next ``train`` then equals the one the saved learner
        would have run. A missing or incomplete checkpoint, or one of another
        backend, ZeRO stage, world size, dtype or LoRA shape: ``ValueError``.
        """
        learner_state.read_manifest(path, self._layout)
        extra = self.backend.load_checkpoint(path)
        learner_state.set_rng_state(extra["rng"][self.rank])
        self.version = int(extra["version"])
        return self.version
