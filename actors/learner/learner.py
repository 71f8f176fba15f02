"""Policy learner: the optimiser steps for one ``TrainBatch``, then versioned weights.

``Learner`` is a plain class (Ray wraps it at the edge). It owns a
``LearnerBackend`` (plain torch or DeepSpeed) that holds the model, the
optimiser and, when the KL term is on, the frozen reference policy; the loss is
composed identically for every backend and every algorithm, from the pure
functions in ``algorithms/`` (``actors/learner/objectives.py``: ``compose_loss`` is the
one place that does it). The config and backend contract live in
``actors/learner/config.py``, the row shares and reductions of several ranks in
``actors/learner/data_parallel.py`` (this module re-exports their public names), step 1
below in ``actors/learner/train_preparation.py``.

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
   accumulated over micro-batches (``micro_batch_size`` sequences, or by token
   budget). Each micro-batch loss is normalised by its minibatch's totals
   (``LossTotals``), so the accumulated gradient is the minibatch loss's
   whatever the split.

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

Micro-batches and data parallelism (``learner.world_size > 1``, DeepSpeed only):
``actors/learner/data_parallel.py`` says how each rank's share of a minibatch is
cut (``micro_batch_size`` rows) or packed by a token budget
(``max_tokens_per_micro_batch``: sorted by length, each micro-batch padded to
its own longest row), how every rank keeps the same number of forwards,
backwards and collectives, and how the metrics are combined over ranks.
``learner/padding_fraction`` reports the share of the gradient pass's token
positions that were padding.
"""

from __future__ import annotations

import contextlib
import time

import torch

from actors.core_share import board_for
from actors.learner import state as learner_state
from actors.learner.config import (
    LearnerBackend,
    LearnerConfig,
    LoraConfig,
    apply_lora,
    enable_gradient_checkpointing,
    prepare_policy,
)
from actors.learner.data_parallel import (
    MicroBatch,
    accumulate_metrics,
    combine_over_ranks,
    mean_metrics,
    micro_batch_plan,
    padding_fraction,
    row_count,
    shard,
    split_rows,
    take,
)
from actors.learner.forward_ahead import HeldForward, forward_samples, held_logprobs, held_reference, held_rows
from actors.learner.objectives import LossTotals, PerToken, collate, compose_loss, policy_loss, sequence_lengths
from actors.learner.sequence_objectives import SequenceObjective
from actors.learner.sequence_training import SequenceTraining
from actors.learner.train_preparation import TrainPreparation
from actors.messages import RolloutResult, TrainBatch, TrainResult, WeightsUpdate
from actors.model.loading import ModelConfig, apply_torch_threads, resolve_model_path
from actors.weights.broadcast import Plan, broadcast_buckets, bucket_plan, join_group, open_store
from actors.weights.sync import ObjectStoreWeightSync
from algorithms.config import AlgorithmConfig

__all__ = [
    "Learner",
    "LearnerBackend",
    "LearnerConfig",
    "LoraConfig",
    "LossTotals",
    "MicroBatch",
    "PerToken",
    "apply_lora",
    "build_backend",
    "collate",
    "compose_loss",
    "enable_gradient_checkpointing",
    "micro_batch_plan",
    "policy_loss",
    "prepare_policy",
    "shard",
]


def build_backend(
    learner: LearnerConfig, model: ModelConfig, reference: bool = False, lr_horizon: int | None = None
) -> LearnerBackend:
    """The configured backend, with the model loaded (and LoRA applied), the
    frozen reference policy when ``reference`` (none is loaded otherwise), and
    the LR schedule over ``lr_horizon`` optimiser steps (``actors/learner/state.py``)."""
    path = resolve_model_path(model)
    if learner.backend == "torch":
        from actors.learner.torch_backend import TorchLearnerBackend

        return TorchLearnerBackend(
            path, model.dtype, learner, reference=reference, lr_horizon=lr_horizon, attention=model.attention
        )
    from actors.learner.deepspeed_backend import DeepSpeedLearnerBackend

    return DeepSpeedLearnerBackend(
        path, model.dtype, learner, reference=reference, lr_horizon=lr_horizon, attention=model.attention
    )


class Learner(TrainPreparation, SequenceTraining):
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

    Offline objectives (``objective``: SFT, SimPO, DPO; ``actors/learner/sequence_training.py``):
    ``train_sequences`` takes one optimiser step per ``SequenceBatch`` (the
    schedule spans ``total_steps`` steps), ``evaluate_sequences`` and
    ``score_sequences`` make none; the reference is loaded iff the objective
    needs one (DPO), and ``algorithm`` is then unused.
    """

    def __init__(
        self,
        learner: LearnerConfig,
        model: ModelConfig,
        algorithm: AlgorithmConfig,
        temperature: float,
        seed: int = 0,
        max_new_tokens: int | None = None,
        total_steps: int | None = None,
        objective: SequenceObjective | None = None,
    ) -> None:
        apply_torch_threads(learner.torch_threads)
        torch.manual_seed(seed)
        self.config = learner
        self.algorithm = algorithm
        self.settings = algorithm.settings
        self.objective = objective
        if self.settings.loss_aggregation == "constant" and not max_new_tokens:
            raise ValueError("algorithm.loss_aggregation 'constant' needs max_new_tokens (rollout.max_new_tokens)")
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.version = 0
        per_batch = (1, 1) if objective else (self.settings.num_iterations, self.settings.num_minibatches)
        horizon = learner_state.optimizer_step_horizon(
            learner.lr_scheduler, learner.warmup_steps, learner.warmup_ratio, total_steps, *per_batch
        )
        reference = objective.needs_reference if objective else self.settings.needs_reference
        self.backend = build_backend(learner, model, reference=reference, lr_horizon=horizon)
        self.rank, self.world_size = self.backend.rank, self.backend.world_size
        if self.world_size != learner.world_size:
            raise RuntimeError(
                f"learner.world_size={learner.world_size} but the backend's process group has {self.world_size} ranks"
            )
        self.cores = board_for(learner.torch_threads, self.rank)  # torch backend only: the driver sets a CoreShare then
        for net in (getattr(self.backend, "model", None), getattr(self.backend, "reference", None)):
            if self.cores is not None and net is not None:
                self.cores.attach(net)
        self._sync = ObjectStoreWeightSync()
        self._held: HeldForward | None = None  # forward_ahead's, until the next train
        lora = learner.lora.model_dump(include={"r", "alpha", "target_modules"}) if learner.lora.enabled else None
        self._layout = learner_state.checkpoint_layout(
            learner.backend, learner.zero_stage, learner.world_size, self.backend.param_dtype, lora
        )

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
        with self._computing():
            self.backend.model.train()
            ahead, ahead_metrics = self._take_held(batch)
            per_token = self._prepare(batch, held_reference(*ahead) if ahead else None)
            minibatches = split_rows(slice(0, len(batch)), self.settings.num_minibatches)
            records = [
                self._optimizer_step(batch, rows, per_token, ahead)
                for _ in range(self.settings.num_iterations)
                for rows in minibatches
            ]
        self.version += 1
        metrics = {
            **mean_metrics(records),
            "optim/steps": float(len(records)),
            "learner/padding_fraction": padding_fraction(minibatches, self.world_size, *self._batching(batch)),
            "time/train_s": time.perf_counter() - start,
            **ahead_metrics,
        }
        return TrainResult(step=batch.step, policy_version=self.version, metrics=metrics)

    def forward_ahead(self, step: int, *results: RolloutResult) -> float:
        """Run the gradient pass's forward over step ``step``'s generated samples now, while
        the judge scores them, and hold it for that step's ``train`` (``actors/learner/forward_ahead.py``).

        Runs only where ``train`` can use it: the learner is at version ``step``, one rank
        of the torch backend, one optimiser step per batch and the samples in one
        micro-batch; otherwise holds nothing. Returns the forward's seconds (0: not run).
        """
        self._held = None
        lengths = [len(s.prompt.prompt_token_ids) + len(s.completion_token_ids) for r in results for s in r.samples]
        if step != self.version or not self._forward_ahead_fits(lengths):
            return 0.0
        self.backend.model.train()
        reference = self._reference_logprobs if self.settings.needs_reference else None
        with self._computing():
            self._held = forward_samples(
                self.backend.model,
                step,
                list(results),
                self.temperature,
                self.backend.device,
                reference,
                self.backend.logprobs,
            )
        return self._held.seconds

    def _computing(self) -> contextlib.AbstractContextManager:
        """Marks this rank busy on the node's core board while it computes (``actors/core_share.py``)."""
        return self.cores.busy() if self.cores is not None else contextlib.nullcontext()

    def _forward_ahead_fits(self, lengths: list[int]) -> bool:
        """One rank, plain torch, one optimiser step per batch, all samples (of ``lengths`` tokens) in one
        micro-batch."""
        s, budget, n = self.settings, self.config.max_tokens_per_micro_batch, len(lengths)
        single_step = s.num_iterations == 1 and s.num_minibatches == 1
        one_rank = self.config.backend == "torch" and self.world_size == 1
        one_micro = 0 < n <= self.config.micro_batch_size and (budget is None or n * max(lengths) <= budget)
        return single_step and one_rank and self.objective is None and one_micro

    def _take_held(self, batch: TrainBatch) -> tuple[tuple[HeldForward, list[int]] | None, dict[str, float]]:
        """The held forward with the held row of each batch row, when it is this batch's;
        its metrics (``time/forward_ahead_s``; ``learner/forward_ahead``: 1 used, 0 not matched)."""
        held, self._held = self._held, None
        if held is None or held.step != batch.step:
            return None, {}
        rows = held_rows(held, batch) if self._forward_ahead_fits(sequence_lengths(batch)) else None
        metrics = {"time/forward_ahead_s": held.seconds, "learner/forward_ahead": float(rows is not None)}
        return (held, rows) if rows is not None else None, metrics

    def _optimizer_step(
        self, batch: TrainBatch, rows: slice, per_token: PerToken, ahead: tuple[HeldForward, list[int]] | None = None
    ) -> dict[str, float]:
        """One optimiser step on minibatch ``rows`` (this rank's share), accumulated over micro-batches.

        Each micro-batch loss is normalised by the whole minibatch's totals and
        multiplied by ``world_size`` (DeepSpeed averages gradients over ranks),
        a padding one by 0, so the applied gradient is the minibatch loss's.
        Returns the minibatch's metrics, combined over ranks. With ``ahead`` (the batch's
        held forward and rows; one micro-batch, one rank) its log-probs replace the forward.
        """
        totals = LossTotals(
            rows.stop - rows.start, sum(len(c) for c in batch.completion_token_ids[rows]), self.max_new_tokens
        )
        record: dict[str, float] = {"loss": 0.0}
        for micro in micro_batch_plan(rows, self.rank, self.world_size, *self._batching(batch)):
            tensors = {k: v.to(self.backend.device) for k, v in collate(batch, micro.rows, per_token).items()}
            forward = held_logprobs(ahead[0], take(ahead[1], micro.rows), tensors) if ahead is not None else None
            loss, stats = policy_loss(
                self.backend.model, tensors, self.settings, self.temperature, totals, forward, self.backend.logprobs
            )
            scale = 0.0 if micro.padding else float(self.world_size)
            self.backend.backward(loss if scale == 1.0 else loss * scale)
            if not micro.padding:
                record["loss"] += float(loss.detach())  # normalised by the minibatch totals: the parts add up
            accumulate_metrics(record, stats, row_count(micro.rows) / totals.sequences, micro.padding)
        record = self._combine_over_ranks(record)
        record["lr"] = self.backend.learning_rate()
        record["grad_norm"] = self.backend.step()  # DeepSpeed's is global: the same on every rank
        return record

    def _combine_over_ranks(self, record: dict[str, float]) -> dict[str, float]:
        """``record`` summed over ranks (``*_max`` keys: their max); unchanged with one rank."""
        return combine_over_ranks(record, self.world_size, self.backend.device)

    def export_weights(self, adapter_only: bool = False) -> WeightsUpdate:
        """Weights at the current version for the rollout workers: full (LoRA
        merged into the copy) or, with ``adapter_only``, the LoRA adapter alone.
        Collective (every rank calls it); ranks other than 0 return an empty update."""
        if adapter_only:
            if not self.config.lora.enabled:
                raise ValueError("adapter-only weight sync needs learner.lora.enabled")
            state, config = self.backend.adapter_state_dict()
            return self._sync.export_adapter(state, config, version=self.version)
        return self._sync.export(self.backend.full_state_dict(), self.version)

    def weight_plan(self, bucket_bytes: int) -> Plan:
        """The bucket layout of every broadcast (names, dtypes and shapes never change).
        Collective; rank 0's plan is the one that counts."""
        state = self.backend.full_state_dict(on_device=True)  # names, dtypes and shapes only: no host copy
        return bucket_plan(state, bucket_bytes) if state else []

    def open_weight_group(self, world_size: int) -> int:
        """Rank 0 only, before ``join_weight_group``: open the weight-broadcast group's store; its port."""
        self._broadcast_store = open_store(world_size)
        return int(self._broadcast_store.port)

    def join_weight_group(self, host: str, port: int, world_size: int, backend: str) -> None:
        """Rank 0 only: host the weight-broadcast group as its rank 0 (the sender), on the store
        ``open_weight_group`` opened; blocks until every engine joined."""
        device = self.backend.device
        self._broadcast_group = join_group(host, port, 0, world_size, backend, device, store=self._broadcast_store)

    def broadcast_weights(self, plan: Plan) -> int:
        """Send the current full weights to every engine in the group; returns the bytes sent.
        Collective (the ZeRO-3 gather): every rank calls it, rank 0 sends, from its device (no
        host round trip: ``full_state_dict(on_device=True)``)."""
        state = self.backend.full_state_dict(on_device=True)
        if self.backend.rank != 0:
            return 0
        return broadcast_buckets(self._broadcast_group, state, plan, self.backend.device)

    def release_cached_memory(self) -> None:
        """Return the memory the last step freed to the device (CUDA's caching allocator keeps it
        otherwise), for a colocated engine that wakes next (``ray_jobs/rl/engine_turns.py``)."""
        if self.backend.device.type == "cuda":
            torch.cuda.empty_cache()

    def save(self, path: str) -> None:
        """Save the final policy in Hugging Face format."""
        self.backend.save_pretrained(path)

    def save_checkpoint(self, path: str) -> dict[str, float]:
        """Everything needed to continue training exactly, under directory ``path`` (collective).

        Trainable weights, optimiser and LR-scheduler state (the backend's
        files), every rank's torch RNG state and ``version``; then rank 0's
        manifest (``actors/learner/state.py``: its presence marks a complete
        checkpoint). Not saved: the frozen reference, which construction
        rebuilds. Returns the same ``{"bytes", "seconds"}`` on every rank: the
        directory's size as rank 0 counts it, and the slowest rank's wall time.
        """
        start = time.perf_counter()
        learner_state.begin_save(path, self.rank)
        extra = {"version": self.version, "rng": learner_state.every_rank_rng_state(self.world_size)}
        self.backend.save_checkpoint(path, extra)  # returns once every rank's files are written
        written = learner_state.commit_save(path, self._layout, self.version) if self.rank == 0 else 0
        size, seconds = learner_state.max_over_ranks(
            (float(written), time.perf_counter() - start), self.backend.device, self.world_size
        )
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
