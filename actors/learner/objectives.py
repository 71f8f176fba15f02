"""The RL policy objective: batch tensors and the loss composed from ``algorithms/``.

``collate`` turns rows of a ``TrainBatch`` into right-padded tensors with the
completion mask aligned to the logits that predict each token;
``compose_loss`` is the one place the pure functions of ``algorithms/`` are
composed into the policy loss, identically for every backend; ``policy_loss``
adds the forward pass. ``LossTotals`` are the minibatch totals every
micro-batch loss is normalised by (so accumulation is exact).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from actors.learner.data_parallel import Rows, take
from actors.messages import TrainBatch
from actors.model.logprobs import LogprobSettings, masked_logprobs
from algorithms.config import AlgorithmConfig, AlgorithmSettings
from algorithms.importance import rollout_correction_weights
from algorithms.kl import kl_estimate
from algorithms.logprobs import masked_mean
from algorithms.losses import aggregate_loss, clip_stats, clipped_surrogate, importance_log_ratio

PerToken = dict[str, list[torch.Tensor]]  # name -> one 1-D tensor per sequence, over its completion tokens


@dataclass(frozen=True)
class LossTotals:
    """A minibatch's totals, by which every one of its micro-batch losses is normalised."""

    sequences: int
    tokens: int
    max_length: int | None = None


def collate(batch: TrainBatch, rows: Rows, per_token: PerToken | None = None) -> dict[str, torch.Tensor]:
    """Right-padded tensors for sequences ``rows`` of the batch (a slice or row indices), padded to
    their longest.

    ``input_ids`` is prompt + completion; ``completion_mask[b, t]`` is 1 where
    ``input_ids[b, t + 1]`` is a completion token, so that logits[:, t] predict
    it; ``old_logprobs`` (the behaviour policy's, as sampled) and every
    ``per_token`` entry are aligned the same way. ``advantages`` is (n,) from the
    batch, unless ``per_token`` holds per-token ``advantages``, which replace it.
    """
    per_token = per_token or {}
    prompts = take(batch.prompt_token_ids, rows)
    completions = take(batch.completion_token_ids, rows)
    width = max(len(p) + len(c) for p, c in zip(prompts, completions))
    n = len(prompts)
    input_ids = torch.zeros(n, width, dtype=torch.long)
    attention = torch.zeros(n, width, dtype=torch.long)
    mask = torch.zeros(n, width - 1)
    aligned = {name: torch.zeros(n, width - 1) for name in ("old_logprobs", *per_token)}
    sources: dict[str, Sequence[list[float] | torch.Tensor]] = {
        "old_logprobs": take(batch.sampling_logprobs, rows),
        **{k: take(v, rows) for k, v in per_token.items()},
    }
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
        "advantages": torch.tensor(take(batch.advantages, rows), dtype=torch.float32),
        **aligned,
    }


def sequence_lengths(batch: TrainBatch) -> list[int]:
    """Each row's tokens, prompt + completion: the width ``collate`` pads a micro-batch to is its
    rows' longest."""
    return [len(p) + len(c) for p, c in zip(batch.prompt_token_ids, batch.completion_token_ids)]


def policy_loss(
    model: torch.nn.Module,
    tensors: dict[str, torch.Tensor],
    algorithm: AlgorithmConfig | AlgorithmSettings,
    temperature: float,
    totals: LossTotals | None = None,
    forward: tuple[torch.Tensor, torch.Tensor] | None = None,
    logprobs: LogprobSettings | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Forward pass and the configured policy loss for one micro-batch.

    ``tensors`` come from ``collate`` (with ``proximal_logprobs`` /
    ``ref_logprobs`` when prepared); ``totals`` default to this micro-batch's own.
    ``forward``: this micro-batch's ``forward_logprobs``, already computed (then the
    model is not called). ``logprobs``: the backend's chunking and autocast.
    """
    s = algorithm.settings if isinstance(algorithm, AlgorithmConfig) else algorithm
    logps, entropy = forward if forward is not None else forward_logprobs(model, tensors, temperature, logprobs)
    loss, stats = compose_loss(logps, tensors, s, totals)
    stats["entropy"] = float(masked_mean(entropy, tensors["completion_mask"]))
    return loss, stats


def forward_logprobs(
    model: torch.nn.Module,
    tensors: dict[str, torch.Tensor],
    temperature: float,
    logprobs: LogprobSettings | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient pass's forward: per-token log-probs (B, T-1) of ``input_ids[:, 1:]``, with
    autograd, and the per-token entropy (B, T-1), detached; aligned with ``completion_mask`` and
    computed at its positions only (zeros elsewhere; ``actors/model/logprobs.py``)."""
    logps, entropy = masked_logprobs(
        model,
        tensors["input_ids"],
        tensors["attention_mask"],
        tensors["completion_mask"],
        temperature,
        logprobs,
        entropy=True,
    )
    assert entropy is not None  # asked for
    return logps, entropy


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
    surrogate = clipped_surrogate(
        importance_log_ratio(logps, old, mask, s.importance_sampling_level),
        tensors["advantages"],
        s.epsilon,
        s.epsilon_high,
    )
    per_token = surrogate.per_token
    mode = "truncate" if s.rollout_correction == "none" else s.rollout_correction  # none: statistics only
    weights, is_stats = rollout_correction_weights(
        proximal, behaviour, mask, s.rollout_correction_level, mode, s.rollout_correction_cap
    )
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
