"""Pure pipeline logic: admission control, load balancing and batch assembly.

Nothing here touches Ray; the driver (``ray_jobs/train.py``) calls these with
the results it collects, and the tests call them by hand.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, deque
from dataclasses import dataclass

import torch

from actors.messages import ScoredSample, ScoreResult, TrainBatch
from algorithms.advantages import group_has_signal, sequence_advantages, whiten
from algorithms.config import AlgorithmConfig, AlgorithmSettings
from algorithms.shaping import soft_overlong_penalty


def may_launch(batch_index: int, published_version: int, max_staleness: int) -> bool:
    """Admission control: batch ``b`` (trained at learner version ``b``) may start
    generating only once weights of version >= ``b - k`` are published, so no
    sample of it can be more than ``k`` versions stale when trained. Stale work
    is never produced, so none is ever discarded."""
    return batch_index - published_version <= max_staleness


def judge_inflight_bound(
    prompts_per_step: int, group_size: int, max_staleness: int, refills: bool = False, eval_samples: int = 0
) -> int:
    """The most samples that can be generating or waiting for the judge at once, which is what
    ``judge.max_concurrency: auto`` allows (one judge request per sample).

    Admission control keeps at most ``max_staleness + 1`` batches in flight; a dynamic-sampling
    refill adds at most one step's prompts; a held-out evaluation adds its samples.
    """
    per_step = prompts_per_step * group_size
    return per_step * (max_staleness + 1) + (per_step if refills else 0) + eval_samples


THROUGHPUT_WINDOW_STEPS = 10
"""Learner steps the steady-state ``throughput/*`` metrics average over."""


class ThroughputWindow:
    """Steady-state throughput over the last ``steps`` learner steps: their samples (and the
    steps themselves) over the wall time from the step before the window to the newest one.

    Steps come in bursts when batches overlap (a short step after a long one), so a per-step
    rate swings; over a window it does not. Invariant: at most ``steps + 1`` marks are kept,
    the oldest being the window's start (at first, the time the loop started).
    """

    def __init__(self, start: float, steps: int = THROUGHPUT_WINDOW_STEPS) -> None:
        self._marks: deque[tuple[float, float]] = deque([(start, 0.0)], maxlen=steps + 1)

    def add(self, now: float, samples: float) -> dict[str, float]:
        """Record a step that finished at ``now`` with ``samples`` generated; the window's rates."""
        self._marks.append((now, samples))
        span = max(now - self._marks[0][0], 1e-9)
        window = list(self._marks)[1:]
        return {
            "throughput/samples_per_s": sum(n for _, n in window) / span,
            "throughput/steps_per_s": len(window) / span,
        }


class LeastLoadedRouter:
    """Chooses the rollout worker with the fewest outstanding requests (prompts;
    each prompt is one engine request for its whole group), lowest id on ties.

    Invariant: ``outstanding[w]`` = requests sent to worker ``w`` minus requests it finished.
    """

    def __init__(self, num_workers: int) -> None:
        self.outstanding = [0] * num_workers

    def pick(self, requests: int = 1) -> int:
        worker = min(range(len(self.outstanding)), key=lambda w: (self.outstanding[w], w))
        self.outstanding[worker] += requests
        return worker

    def finished(self, worker: int, requests: int = 1) -> None:
        if self.outstanding[worker] < requests:
            raise ValueError(f"worker {worker} has {self.outstanding[worker]} outstanding requests, not {requests}")
        self.outstanding[worker] -= requests


@dataclass(frozen=True)
class AssembledBatch:
    """A step's train batch plus everything the step logs.

    ``advantages`` has one entry per generated sample, aligned with ``scored``:
    the advantage of each sample in ``train``, None for every other (unscored,
    in a group dropped by dynamic sampling, or truncated under overlong filtering).
    """

    train: TrainBatch
    scored: list[ScoredSample]
    advantages: list[float | None]
    metrics: dict[str, float]


def shaped_rewards(
    scored: list[ScoredSample], algorithm: AlgorithmSettings, max_new_tokens: int | None
) -> list[float | None]:
    """Each sample's reward plus DAPO's soft overlong penalty (None stays None).

    The penalty is added here, at batch assembly, not by the reward terms: it
    depends on the rollout's length limit, not on the judge.
    """
    buffer = algorithm.overlong_buffer_tokens(max_new_tokens) if max_new_tokens else 0
    if not max_new_tokens or not buffer:
        return [s.reward for s in scored]
    lengths = torch.tensor([len(s.sample.completion_token_ids) for s in scored])
    penalty = soft_overlong_penalty(lengths, max_new_tokens, buffer, algorithm.overlong_penalty_factor).tolist()
    return [None if s.reward is None else s.reward + p for s, p in zip(scored, penalty)]


def signal_groups(scored: list[ScoredSample], rewards: list[float | None]) -> tuple[list[str], list[str]]:
    """(groups with reward variance, all groups with a scored sample), in order of appearance.

    A group whose scored rewards are all equal, or that has one scored sample,
    gives no learning signal under a group baseline.
    """
    usable = [i for i, r in enumerate(rewards) if r is not None]
    order = list(dict.fromkeys(scored[i].sample.group_id for i in usable))
    if not usable:
        return [], order
    number = {gid: g for g, gid in enumerate(order)}
    signal = group_has_signal(
        torch.tensor([_known(rewards[i]) for i in usable]),
        torch.tensor([number[scored[i].sample.group_id] for i in usable]),
    )
    with_signal = dict.fromkeys(scored[i].sample.group_id for i, ok in zip(usable, signal.tolist()) if ok)
    return list(with_signal), order


def _known(reward: float | None) -> float:
    """The reward of a sample the caller knows was scored."""
    if reward is None:
        raise TypeError("an unscored sample's reward was used")
    return float(reward)


def refill_size(missing: int, kept: int, seen: int, limit: int) -> int:
    """Prompts to ask for in a dynamic-sampling refill round: ``missing`` groups
    scaled by the share of groups kept so far (``seen / kept``), at least
    ``missing`` and at most ``limit`` (one step's prompts)."""
    if missing <= 0:
        return 0
    estimate = math.ceil(missing * seen / kept) if kept else limit
    return max(missing, min(estimate, limit))


def assemble_batch(
    step: int,
    results: list[ScoreResult],
    algorithm: AlgorithmConfig,
    max_new_tokens: int | None = None,
    target_groups: int | None = None,
) -> AssembledBatch:
    """Turn a step's judged groups into a ``TrainBatch``.

    Unscored samples are left out of their group's baseline and out of the loss
    (and counted); they are never treated as reward 0. Rewards get the soft
    overlong penalty when configured (``max_new_tokens`` is the rollout limit).
    With dynamic sampling, groups without reward variance are dropped and at
    most ``target_groups`` groups are kept (in order of appearance). With
    overlong filtering, truncated samples stay in their group's baseline but
    leave the loss. Raises ``ValueError`` if no sample of the step was scored,
    or if nothing is left to train on.
    """
    settings = algorithm.settings
    scored = [s for r in results for s in r.scored]
    rewards = shaped_rewards(scored, settings, max_new_tokens)
    usable = [i for i, r in enumerate(rewards) if r is not None]
    if not usable:
        causes = Counter(s.reward_error for s in scored)
        raise ValueError(
            f"step {step}: none of {len(scored)} samples was scored ({dict(causes)}); "
            "check the judge endpoint and reward functions"
        )
    with_signal, groups = signal_groups(scored, rewards)
    kept = with_signal[:target_groups] if settings.dynamic_sampling else groups
    if not kept:
        raise ValueError(
            f"step {step}: dynamic sampling found no group with differing rewards among "
            f"{len(groups)} groups (algorithm.max_refill_rounds={settings.max_refill_rounds})"
        )
    number = {gid: g for g, gid in enumerate(kept)}
    members = [i for i in usable if scored[i].sample.group_id in number]
    adv = _advantages(members, scored, rewards, number, settings)
    trained = [(i, a) for i, a in zip(members, adv) if not (settings.overlong_filtering and scored[i].sample.truncated)]
    if not trained:
        raise ValueError(
            f"step {step}: every kept sample was truncated at the token limit and "
            "algorithm.overlong_filtering leaves them out of the loss; raise rollout.max_new_tokens"
        )
    per_sample: list[float | None] = [None] * len(scored)
    for i, a in trained:
        per_sample[i] = a
    samples = [scored[i].sample for i, _ in trained]
    train = TrainBatch(
        step=step,
        prompt_token_ids=[s.prompt.prompt_token_ids for s in samples],
        completion_token_ids=[s.completion_token_ids for s in samples],
        sampling_logprobs=[s.sampling_logprobs for s in samples],
        advantages=[a for _, a in trained],
        policy_versions=[s.policy_version for s in samples],
        rewards=[_known(rewards[i]) for i, _ in trained],
        group_ids=[number[scored[i].sample.group_id] for i, _ in trained],
    )
    metrics = _batch_metrics(step, scored, train, results)
    shaping = bool(max_new_tokens and settings.overlong_buffer_tokens(max_new_tokens))
    metrics.update(_sampling_metrics(scored, rewards, groups, with_signal, kept, settings, shaping))
    return AssembledBatch(train, scored, per_sample, metrics)


def _advantages(
    members: list[int],
    scored: list[ScoredSample],
    rewards: list[float | None],
    number: dict[str, int],
    settings: AlgorithmSettings,
) -> list[float]:
    """The configured estimator over the kept groups; whitened over tokens (each
    sequence weighted by its length) for REINFORCE++."""
    r = torch.tensor([_known(rewards[i]) for i in members])
    g = torch.tensor([number[scored[i].sample.group_id] for i in members])
    adv = sequence_advantages(r, g, settings.baseline, settings.scale_rewards)
    if settings.whiten_advantages:
        lengths = torch.tensor([len(scored[i].sample.completion_token_ids) for i in members])
        mask = torch.arange(int(lengths.max())) < lengths.unsqueeze(-1)
        adv = whiten(adv.unsqueeze(-1).expand(mask.shape), mask)[:, 0]
    return adv.tolist()


def _sampling_metrics(
    scored: list[ScoredSample],
    rewards: list[float | None],
    groups: list[str],
    with_signal: list[str],
    kept: list[str],
    settings: AlgorithmSettings,
    shaping: bool,
) -> dict[str, float]:
    """Groups without signal, dynamic-sampling drops, overlong shaping and filtering."""
    metrics = {"reward/frac_zero_std": 1.0 - len(with_signal) / len(groups)}
    if settings.dynamic_sampling:
        metrics["dynamic_sampling/dropped_groups"] = float(len(groups) - len(with_signal))
        metrics["dynamic_sampling/surplus_groups"] = float(len(with_signal) - len(kept))
        metrics["dynamic_sampling/kept_groups"] = float(len(kept))
    if shaping:
        metrics["reward/overlong_penalty"] = statistics.fmean(
            r - s.reward for s, r in zip(scored, rewards) if r is not None and s.reward is not None
        )
    if settings.overlong_filtering:
        keep = set(kept)
        metrics["samples/overlong_filtered"] = float(
            sum(
                1 for s, r in zip(scored, rewards) if r is not None and s.sample.group_id in keep and s.sample.truncated
            )
        )
    return metrics


def _batch_metrics(
    step: int, scored: list[ScoredSample], train: TrainBatch, results: list[ScoreResult]
) -> dict[str, float]:
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
        **_lag_metrics([lag for r in results for lag in r.score_lags]),
        "completion/length_mean": statistics.fmean(lengths),
        "completion/length_max": float(max(lengths)),
        "completion/length_min": float(min(lengths)),
        "completion/truncated_frac": sum(s.sample.truncated for s in scored) / len(scored),
        "samples/generated": float(len(scored)),
        "samples/trained": float(len(train)),
        "samples/spanning_versions": float(sum(s.sample.final_policy_version is not None for s in scored)),
    }
    for name in sorted({t for s in scored for t in s.terms}):
        values = [v for s in scored if (v := s.terms.get(name)) is not None]
        if values:
            metrics[f"reward/{name}"] = statistics.fmean(values)
    metrics.update(_judge_metrics(results))
    return metrics


def _lag_metrics(lags: list[float]) -> dict[str, float]:
    """``time/score_lag_mean_s`` and ``_max_s``: wall seconds from a group's last token to its score."""
    if not lags:
        return {}
    return {"time/score_lag_mean_s": statistics.fmean(lags), "time/score_lag_max_s": max(lags)}


def _judge_metrics(results: list[ScoreResult]) -> dict[str, float]:
    """The step's judge health metrics, combined from its calls' ``judge_metrics``:
    ``judge/latency_p50_s``/``_p95_s``, ``judge/retries[/<cause>]``,
    ``judge/failures/<cause>``, ``judge/cache_hits``, ``judge/rule_gated``,
    ``judge/inflight`` (peak) and ``term/<name>/...`` (see ``rewards/metrics.py``)."""
    from rewards.metrics import aggregate_judge_metrics  # the judge's own metric rules

    return aggregate_judge_metrics(r.judge_metrics for r in results)
