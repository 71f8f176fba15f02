"""The learner's offline calls: one optimiser step, an evaluation or a scoring pass over a ``SequenceBatch``.

``SequenceTraining`` is a mixin of ``actors.learner.learner.Learner`` (one learner
for RL, SFT and preference objectives, on the same backends): it uses the
learner's ``backend``, ``config``, ``rank``, ``world_size``, ``version``,
``objective`` and ``_combine_over_ranks``. Data parallelism is the RL path's:
every rank gets the same full batch, forwards and backwards only its
``shard`` of the units in the micro-batches ``micro_batch_plan`` gives it
(``learner.micro_batch_size`` units: rows for SFT, pairs for preference; with
``learner.max_tokens_per_micro_batch`` packed by that budget, a unit's length
being its row's, or for a pair twice its longer row's, so that units x longest
is the micro-batch's padded size), normalises each micro-batch loss by the
GLOBAL totals and multiplies it by ``world_size``; metrics are summed over
ranks after the pass.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import torch

from actors.learner.data_parallel import (
    Rows,
    accumulate_metrics,
    all_reduce_metrics,
    micro_batch_plan,
    padding_fraction,
    row_count,
    row_indices,
    shard,
)
from actors.learner.objectives import LossTotals
from actors.learner.sequence_objectives import SequenceObjective, collate_sequences, sequence_loss
from actors.messages import SequenceBatch, TrainResult
from actors.model.logprobs import masked_logprobs
from algorithms.logprobs import sequence_logprobs


class SequenceTraining:
    """SFT / SimPO / DPO steps, evaluation and sequence scoring on the learner's backend.

    Invariants: ``train_sequences`` accepts only the batch for step ``version``
    and takes exactly one optimiser step (so the LR schedule spans ``run.steps``
    steps); every call is collective with several ranks and returns the same
    value on every rank.
    """

    backend: Any
    config: Any
    rank: int
    world_size: int
    version: int
    objective: SequenceObjective | None

    _combine_over_ranks: Callable[[dict[str, float]], dict[str, float]]  # Learner's method

    def _checked_objective(self, batch: SequenceBatch) -> SequenceObjective:
        if self.objective is None:
            raise ValueError("this learner was built without a sequence objective (Learner(objective=...))")
        if batch.pairs != self.objective.pairs:
            raise ValueError(f"objective {self.objective.name} needs a batch with pairs={self.objective.pairs}")
        if len(batch) == 0:
            raise ValueError(f"step {batch.step}: empty batch")
        return self.objective

    def train_sequences(self, batch: SequenceBatch) -> TrainResult:
        """One optimiser step of the objective on ``batch`` (gradients accumulated over micro-batches)."""
        objective = self._checked_objective(batch)
        if batch.step != self.version:
            raise ValueError(f"learner is at version {self.version} but got the batch for step {batch.step}")
        start = time.perf_counter()
        self.backend.model.train()
        record = self._sequence_pass(batch, objective, train=True)
        record["lr"] = self.backend.learning_rate()
        record["grad_norm"] = self.backend.step()
        self.version += 1
        seconds = time.perf_counter() - start
        tokens = sum(len(s) for s in batch.input_ids)
        record.update(
            {
                "learner/padding_fraction": padding_fraction(
                    [slice(0, len(batch))], self.world_size, *self._unit_batching(batch), unit_tokens(batch)
                ),
                "time/train_s": seconds,
                "throughput/tokens_per_s": tokens / seconds,
                "tokens/targets": float(batch.target_tokens(slice(0, len(batch)))),
            }
        )
        return TrainResult(step=batch.step, policy_version=self.version, metrics=record)

    @torch.no_grad()
    def evaluate_sequences(self, batch: SequenceBatch) -> dict[str, float]:
        """The objective's loss and statistics over all of ``batch``, no update, as ``eval/<name>``."""
        objective = self._checked_objective(batch)
        self.backend.model.eval()
        try:
            record = self._sequence_pass(batch, objective, train=False)
        finally:
            self.backend.model.train()
        return {f"eval/{key}": value for key, value in record.items()}

    def _sequence_pass(self, batch: SequenceBatch, objective: SequenceObjective, train: bool) -> dict[str, float]:
        """Every micro-batch of this rank: loss (backward when ``train``), statistics combined over ranks."""
        everything = slice(0, len(batch))
        totals = LossTotals(len(batch), batch.target_tokens(everything))
        record: dict[str, float] = {"loss": 0.0}
        for micro in micro_batch_plan(everything, self.rank, self.world_size, *self._unit_batching(batch)):
            t = {k: v.to(self.backend.device) for k, v in collate_units(batch, micro.rows).items()}
            logps = self._target_logps(t)
            ref = self._target_logps(t, reference=True) if objective.needs_reference else None
            loss, stats = sequence_loss(logps, t, objective, totals, ref)
            if train:
                scale = 0.0 if micro.padding else float(self.world_size)
                self.backend.backward(loss if scale == 1.0 else loss * scale)
            if not micro.padding:
                record["loss"] += float(loss.detach())
            accumulate_metrics(record, stats, row_count(micro.rows) / totals.sequences, micro.padding)
        return self._combine_over_ranks(record)

    def _unit_batching(self, batch: SequenceBatch) -> tuple[int, int | None, list[int]]:
        """``micro_batch_plan``'s arguments after rank and world size, for ``batch``'s units."""
        return self.config.micro_batch_size, self.config.max_tokens_per_micro_batch, unit_lengths(batch)

    def _target_logps(self, t: dict[str, torch.Tensor], reference: bool = False) -> torch.Tensor:
        """(B, T-1) log-probs of each target token (``loss_mask``; zeros elsewhere), under the policy or
        (no gradient, eval mode) the reference; computed at the target positions only."""
        ids, attention, mask = t["input_ids"], t["attention_mask"], t["loss_mask"]
        if not reference:
            return masked_logprobs(self.backend.model, ids, attention, mask, 1.0, self.backend.logprobs)[0]
        with torch.no_grad(), self.backend.reference_model() as model:
            return masked_logprobs(model, ids, attention, mask, 1.0, self.backend.logprobs)[0]

    @torch.no_grad()
    def score_sequences(self, batch: SequenceBatch, adapter: bool = True) -> list[dict[str, float]]:
        """Per row: ``logp_sum`` and ``logp_mean`` over its target tokens and their count ``tokens``,
        under the policy (``adapter=False`` under LoRA: the base model, adapters disabled).

        Collective; every rank returns every row (each computes its share, zeros elsewhere, summed).
        """
        rows = SequenceBatch(0, batch.input_ids, batch.loss_masks)  # score row by row, pairs or not
        everything = slice(0, len(rows))
        values = torch.zeros(len(rows), 2, dtype=torch.float64)
        self.backend.model.eval()
        try:
            with self._adapters(adapter):
                for micro in micro_batch_plan(everything, self.rank, self.world_size, *self._unit_batching(rows)):
                    t = {k: v.to(self.backend.device) for k, v in collate_units(rows, micro.rows).items()}
                    summed, lengths = sequence_logprobs(self._target_logps(t), t["loss_mask"])
                    if not micro.padding:
                        values[row_indices(micro.rows)] = torch.stack([summed, lengths], dim=1).double().cpu()
        finally:
            self.backend.model.train()
        if self.world_size > 1:
            mine = shard(everything, self.rank, self.world_size)
            values[: mine.start], values[mine.stop :] = 0.0, 0.0
            values = all_reduce_metrics(values, torch.distributed.ReduceOp.SUM, self.backend.device)
        return [{"logp_sum": s, "logp_mean": s / max(n, 1.0), "tokens": n} for s, n in values.tolist()]

    def _adapters(self, on: bool) -> contextlib.AbstractContextManager:
        """The LoRA adapters enabled (``on``) or disabled for the block; a no-op without LoRA."""
        if on or not self.config.lora.enabled:
            return contextlib.nullcontext()
        module = getattr(self.backend, "module", self.backend.model)  # DeepSpeed: the engine's module
        return module.disable_adapter()


def unit_lengths(batch: SequenceBatch) -> list[int]:
    """Each unit's padded cost per unit of width: a row's tokens, or for a pair twice its longer
    row's, so that units x the longest of these is a micro-batch's padded size (rows x width)."""
    if not batch.pairs:
        return [len(ids) for ids in batch.input_ids]
    return [2 * max(len(a), len(b)) for a, b in zip(batch.input_ids[::2], batch.input_ids[1::2])]


def unit_tokens(batch: SequenceBatch) -> list[int]:
    """Each unit's real tokens (a pair: both rows')."""
    if not batch.pairs:
        return [len(ids) for ids in batch.input_ids]
    return [len(a) + len(b) for a, b in zip(batch.input_ids[::2], batch.input_ids[1::2])]


def collate_units(batch: SequenceBatch, units: Rows) -> dict[str, torch.Tensor]:
    """``collate_sequences`` of ``units`` (a slice, or unit indices from a token-budget plan)."""
    if isinstance(units, slice):
        return collate_sequences(batch, units)
    per = 2 if batch.pairs else 1
    rows = [u * per + k for u in units for k in range(per)]
    picked = SequenceBatch(
        batch.step, [batch.input_ids[r] for r in rows], [batch.loss_masks[r] for r in rows], batch.pairs
    )
    return collate_sequences(picked, slice(0, len(units)))
