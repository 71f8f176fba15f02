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
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.nn.utils.rnn import pad_sequence

from actors.messages import TrainBatch, TrainResult, WeightsUpdate
from actors.models import ModelConfig, resolve_model_path
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
    """Holds the trainable model, its optimiser and the optional frozen reference.

    Contract: ``backward`` may be called several times (one per micro-batch)
    before one ``step``; ``step`` clips, updates, zeroes the gradients and
    returns the pre-clip gradient norm. ``reference_logits`` is available iff
    the backend was built with ``reference=True``.
    """

    model: torch.nn.Module
    device: torch.device

    def backward(self, loss: torch.Tensor) -> None: ...

    def step(self) -> float: ...

    def reference_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits of the frozen reference policy, without gradient (LoRA: adapters disabled)."""
        ...

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Full weights with Hugging Face names (LoRA merged), for weight sync."""
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


def build_backend(learner: LearnerConfig, model: ModelConfig, reference: bool = False) -> LearnerBackend:
    """The configured backend, with the model loaded (and LoRA applied), and the
    frozen reference policy when ``reference`` (none is loaded otherwise)."""
    path = resolve_model_path(model)
    if learner.backend == "torch":
        from actors.learner_torch import TorchLearnerBackend

        return TorchLearnerBackend(path, model.dtype, learner, reference=reference)
    from actors.learner_deepspeed import DeepSpeedLearnerBackend

    return DeepSpeedLearnerBackend(path, model.dtype, learner, reference=reference)


def _slices(rows: slice, parts: int) -> list[slice]:
    """``rows`` cut into at most ``parts`` contiguous, non-empty slices of near-equal size."""
    n = rows.stop - rows.start
    parts = max(1, min(parts, n))
    bounds = [rows.start + (n * k) // parts for k in range(parts + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def _chunks(rows: slice, size: int) -> list[slice]:
    """``rows`` cut into consecutive slices of ``size`` sequences (the last may be shorter)."""
    return [slice(lo, min(lo + size, rows.stop)) for lo in range(rows.start, rows.stop, size)]


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
    """

    def __init__(self, learner: LearnerConfig, model: ModelConfig, algorithm: AlgorithmConfig,
                 temperature: float, seed: int = 0, max_new_tokens: int | None = None) -> None:
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
        self.backend = build_backend(learner, model, reference=self.settings.needs_reference)
        self._sync = ObjectStoreWeightSync()

    def train(self, batch: TrainBatch) -> TrainResult:
        """``num_iterations`` passes of ``num_minibatches`` optimiser steps over ``batch``."""
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
        """One optimiser step on minibatch ``rows``, accumulated over micro-batches."""
        totals = LossTotals(rows.stop - rows.start, sum(len(c) for c in batch.completion_token_ids[rows]),
                            self.max_new_tokens)
        sums: dict[str, float] = {"loss": 0.0}
        for micro in _chunks(rows, self.config.micro_batch_size):
            tensors = {k: v.to(self.backend.device) for k, v in collate(batch, micro, per_token).items()}
            loss, stats = policy_loss(self.backend.model, tensors, self.settings, self.temperature, totals)
            self.backend.backward(loss)
            sums["loss"] += float(loss.detach())  # normalised by the minibatch totals: the parts add up
            share = (micro.stop - micro.start) / totals.sequences
            for key, value in stats.items():
                sums[key] = max(sums.get(key, value), value) if key.endswith("_max") else sums.get(key, 0.0) + value * share
        sums["grad_norm"] = self.backend.step()
        return sums

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
        """Per-sequence completion log-probs of the current (pre-update) policy and of the reference."""
        out: PerToken = {name: [] for name, on in (("proximal_logprobs", proximal), ("ref_logprobs", reference)) if on}
        if not out:
            return out
        for rows in _chunks(slice(0, len(batch)), self.config.micro_batch_size):
            t = {k: v.to(self.backend.device) for k, v in collate(batch, rows).items()}
            keep, targets = t["completion_mask"].bool(), t["input_ids"][:, 1:]
            forwards = {"proximal_logprobs": lambda: self.backend.model(input_ids=t["input_ids"],
                                                                         attention_mask=t["attention_mask"]).logits,
                        "ref_logprobs": lambda: self.backend.reference_logits(t["input_ids"], t["attention_mask"])}
            for name in out:
                logps = token_logprobs(forwards[name]()[:, :-1], targets, self.temperature)
                out[name].extend(logps[i][keep[i]].cpu() for i in range(len(keep)))
        return out

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

    def export_weights(self) -> WeightsUpdate:
        """Full (merged) weights at the current version, for the rollout workers."""
        return self._sync.export(self.backend.full_state_dict(), self.version)

    def save(self, path: str) -> None:
        """Save the final policy in Hugging Face format."""
        self.backend.save_pretrained(path)
