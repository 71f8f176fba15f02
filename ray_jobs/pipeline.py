"""Pure pipeline logic: admission control, load balancing and batch assembly.

Nothing here touches Ray; the driver (``ray_jobs/train.py``) calls these with
the results it collects, and the tests call them by hand.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass

import torch

from actors.messages import ScoredSample, ScoreResult, TrainBatch
from algorithms.advantages import group_normalized_advantages
from algorithms.config import AlgorithmConfig


def may_launch(batch_index: int, published_version: int, max_staleness: int) -> bool:
    """Admission control: batch ``b`` (trained at learner version ``b``) may start
    generating only once weights of version >= ``b - k`` are published, so no
    sample of it can be more than ``k`` versions stale when trained. Stale work
    is never produced, so none is ever discarded."""
    return batch_index - published_version <= max_staleness


class LeastLoadedRouter:
    """Chooses the rollout worker with the fewest outstanding calls (lowest id on ties).

    Invariant: ``outstanding[w]`` = calls sent to worker ``w`` minus calls it finished.
    """

    def __init__(self, num_workers: int) -> None:
        self.outstanding = [0] * num_workers

    def pick(self) -> int:
        worker = min(range(len(self.outstanding)), key=lambda w: (self.outstanding[w], w))
        self.outstanding[worker] += 1
        return worker

    def finished(self, worker: int) -> None:
        if self.outstanding[worker] <= 0:
            raise ValueError(f"worker {worker} has no outstanding call")
        self.outstanding[worker] -= 1


@dataclass(frozen=True)
class AssembledBatch:
    """A step's train batch plus everything the step logs.

    ``advantages`` has one entry per scored sample, aligned with ``scored``
    (None for unscored samples, which are not in ``train``).
    """

    train: TrainBatch
    scored: list[ScoredSample]
    advantages: list[float | None]
    metrics: dict[str, float]


def assemble_batch(step: int, results: list[ScoreResult], algorithm: AlgorithmConfig) -> AssembledBatch:
    """Turn a step's judged groups into a ``TrainBatch``.

    Unscored samples are left out of their group's baseline and out of the loss
    (and counted); they are never treated as reward 0. Raises ``ValueError`` if
    no sample of the step was scored.
    """
    scored = [s for r in results for s in r.scored]
    usable = [i for i, s in enumerate(scored) if s.reward is not None]
    if not usable:
        causes = Counter(s.reward_error for s in scored)
        raise ValueError(f"step {step}: none of {len(scored)} samples was scored ({dict(causes)}); "
                         "check the judge endpoint and reward functions")
    group_number = {gid: g for g, gid in enumerate(dict.fromkeys(scored[i].sample.group_id for i in usable))}
    groups = torch.tensor([group_number[scored[i].sample.group_id] for i in usable])
    rewards = torch.tensor([float(scored[i].reward) for i in usable])
    adv = group_normalized_advantages(rewards, groups, scale=algorithm.scale_rewards).tolist()
    per_sample: list[float | None] = [None] * len(scored)
    for i, a in zip(usable, adv):
        per_sample[i] = a
    samples = [scored[i].sample for i in usable]
    train = TrainBatch(
        step=step,
        prompt_token_ids=[s.prompt.prompt_token_ids for s in samples],
        completion_token_ids=[s.completion_token_ids for s in samples],
        sampling_logprobs=[s.sampling_logprobs for s in samples],
        advantages=adv,
        policy_versions=[s.policy_version for s in samples],
    )
    return AssembledBatch(train, scored, per_sample, _batch_metrics(step, scored, train, results))


def _batch_metrics(step: int, scored: list[ScoredSample], train: TrainBatch, results: list[ScoreResult]) -> dict[str, float]:
    rewards = [s.reward for s in scored if s.reward is not None]
    staleness = [step - v for v in train.policy_versions]
    lengths = [len(s.sample.completion_token_ids) for s in scored]
    metrics = {
        "reward/mean": statistics.fmean(rewards),
        "reward/std": statistics.pstdev(rewards),
        "reward/unscored": float(len(scored) - len(rewards)),
        "staleness/mean": statistics.fmean(staleness),
        "staleness/max": float(max(staleness)),
        "judge/requests": float(sum(r.judge_requests for r in results)),
        "judge/failures": float(sum(r.judge_failures for r in results)),
        "time/generate_s": sum(r.generate_s for r in results),
        "time/judge_s": sum(r.judge_s for r in results),
        "completion/length_mean": statistics.fmean(lengths),
        "completion/truncated_frac": sum(s.sample.truncated for s in scored) / len(scored),
        "samples/generated": float(len(scored)),
        "samples/trained": float(len(train)),
    }
    for name in sorted({t for s in scored for t in s.terms}):
        values = [s.terms[name] for s in scored if s.terms.get(name) is not None]
        if values:
            metrics[f"reward/{name}"] = statistics.fmean(values)
    return metrics
