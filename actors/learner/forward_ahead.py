"""The gradient pass's forward, run on a step's samples before the judge has scored them.

On-policy (``pipeline.max_staleness`` 0) the stages run in turn: generate, judge,
train. The forward pass does not depend on the rewards, so the learner can run it
while the judge works and keep its autograd graph; once the scores arrive only the
loss, the backward pass and the optimiser step are left (``Learner.forward_ahead``).
With the KL term on, the frozen reference's forward (no gradient) is held too.

A held forward is used only where it equals the forward the step would run
itself: the batch takes one optimiser step in one micro-batch on one rank, and
the learner's weights have not changed since (``HeldForward.step`` is the
learner's version when it ran). The batch's rows are matched to the held rows by
their tokens (unscored samples leave the batch; duplicates match in turn); a
batch row with no held row makes the step run its own forward instead.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from actors.learner.objectives import collate, forward_logprobs
from actors.messages import RolloutResult, TrainBatch
from actors.model.logprobs import LogprobSettings

SequenceKey = tuple[tuple[int, ...], tuple[int, ...]]  # (prompt token ids, completion token ids)


@dataclass(frozen=True)
class HeldForward:
    """Log-probs with their autograd graph, and entropies, of a step's generated samples.

    Invariants: computed with the learner's weights of version ``step``, in train
    mode; ``rows[key]`` lists the rows of ``logps`` whose sequence is ``key``;
    ``logps`` and ``entropy`` are (N, W - 1) for the N samples right-padded to
    width W, aligned as ``collate`` aligns them. ``ref_logps`` (when the KL term
    needs the frozen reference, else None) holds each row's completion-token
    reference log-probs, as ``TrainPreparation`` computes them in the step.
    """

    step: int
    rows: dict[SequenceKey, list[int]]
    logps: torch.Tensor
    entropy: torch.Tensor
    seconds: float
    ref_logps: list[torch.Tensor] | None = None


def forward_samples(
    model: torch.nn.Module,
    step: int,
    results: list[RolloutResult],
    temperature: float,
    device: torch.device,
    reference: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None,
    logprobs: LogprobSettings | None = None,
) -> HeldForward:
    """Run the gradient pass's forward over every sample of ``results`` (autograd on) and, given
    ``reference`` (``collate`` tensors -> the frozen reference's (B, T-1) log-probs, no gradient),
    the reference's forward too: it does not change with the weights, so it need not wait for the
    scores either. ``logprobs``: the backend's chunking and autocast."""
    start = time.perf_counter()
    samples = [s for r in results for s in r.samples]
    batch = TrainBatch(
        step=step,
        prompt_token_ids=[s.prompt.prompt_token_ids for s in samples],
        completion_token_ids=[s.completion_token_ids for s in samples],
        sampling_logprobs=[s.sampling_logprobs for s in samples],
        advantages=[0.0] * len(samples),
        policy_versions=[s.policy_version for s in samples],
    )
    tensors = {k: v.to(device) for k, v in collate(batch, slice(0, len(samples))).items()}
    logps, entropy = forward_logprobs(model, tensors, temperature, logprobs)
    ref_logps = None
    if reference is not None:
        ref = reference(tensors)
        keep = tensors["completion_mask"].bool()
        ref_logps = [ref[i][keep[i]].cpu() for i in range(len(samples))]
    rows: dict[SequenceKey, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        rows[_key(s.prompt.prompt_token_ids, s.completion_token_ids)].append(i)
    return HeldForward(step, dict(rows), logps, entropy, time.perf_counter() - start, ref_logps)


def held_rows(held: HeldForward, batch: TrainBatch) -> list[int] | None:
    """For each row of ``batch``, a distinct held row with the same tokens; None if some has none."""
    if held.step != batch.step:
        return None
    unused = {key: list(rows) for key, rows in held.rows.items()}
    chosen = []
    for prompt, completion in zip(batch.prompt_token_ids, batch.completion_token_ids):
        free = unused.get(_key(prompt, completion))
        if not free:
            return None
        chosen.append(free.pop(0))
    return chosen


def held_logprobs(
    held: HeldForward, rows: list[int], tensors: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The held (log-probs, entropies) of ``rows``, trimmed to the width of ``tensors`` (the
    batch's own ``collate``; never wider than the held forward, whose rows include the batch's)."""
    width = tensors["completion_mask"].shape[1]
    index = torch.tensor(rows, device=held.logps.device)
    return held.logps[index, :width], held.entropy[index, :width]


def held_reference(held: HeldForward, rows: list[int]) -> list[torch.Tensor] | None:
    """The held reference log-probs of ``rows`` (None when none were computed ahead)."""
    return [held.ref_logps[r] for r in rows] if held.ref_logps is not None else None


def _key(prompt: list[int], completion: list[int]) -> SequenceKey:
    return tuple(prompt), tuple(completion)
