"""Starting an RL run's actors: the rollout workers, the judge pool and the learner group, each
where ``ray_jobs/runtime/placement.py`` plans it (the only place besides ``LearnerGroup`` where the
plain classes become Ray actors).

Colocated (``pipeline.placement: colocated``): with HF generation the learner's one rank generates
(``actors/colocated.py``) and no worker is started; a vLLM engine's worker and the learner rank
share one GPU's bundle (``shared_gpu_options``), the engine started and ready first, because vLLM
measures the device's free memory when it starts and takes ``gpu_memory_utilization`` of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import ray
from pydantic import SecretStr

from actors.judge_pool import JudgePool
from actors.rollout.worker import RolloutWorker
from ray_jobs.config.experiment import ExperimentConfig
from ray_jobs.runtime.faults import check_started
from ray_jobs.runtime.learner_group import LearnerGroup
from ray_jobs.runtime.placement import JUDGE_POOL, ray_options, rollout_worker_options, shared_gpu_options

JUDGE_POOL_NAME = "relay-judge-pool"  # + a per-run suffix: ray.util.list_named_actors() finds it
ROLLOUT_WORKER_NAME = "relay-rollout"  # + "-<worker>-" + the same suffix


@dataclass
class StartedActors:
    """A run's actor handles, every constructor returned. ``rollouts`` is ``[learner.ranks[0]]`` when
    the learner generates; ``engine_groups`` are the placement groups to remove at the end."""

    learner: LearnerGroup
    rollouts: list
    judge: Any
    engine_groups: list = field(default_factory=list)


def start_rollout_worker(
    cfg: ExperimentConfig, worker_id: int, suffix: str, engine_groups: list, options: dict[str, Any] | None = None
) -> ray.actor.ActorHandle:
    """One rollout worker actor, placed as ``rollout_placement`` says (or with ``options``, placed by
    another plan). A vLLM engine with tensor parallelism gets a STRICT_PACK placement group of its
    own (the worker's CPUs, one GPU bundle per shard: vLLM's Ray executor starts its shard
    workers in those; the worker itself asks for no GPU), appended to ``engine_groups``."""
    ro = cfg.rollout
    if options is None:
        group, options = rollout_worker_options(ro, worker_id)
        if group is not None:
            engine_groups.append(group)
    lora_rank = cfg.learner.lora.r if cfg.adapter_sync else None
    return (
        ray.remote(RolloutWorker)
        .options(
            **options,
            max_concurrency=1000,
            max_restarts=cfg.pipeline.max_actor_restarts,
            max_task_retries=0,
            name=f"{ROLLOUT_WORKER_NAME}-{worker_id}-{suffix}",
        )
        .remote(ro, cfg.model, worker_id=worker_id, seed=cfg.run.seed, lora_rank=lora_rank)
    )


def start_actors(cfg: ExperimentConfig, api_keys: dict[str, SecretStr], suffix: str) -> StartedActors:
    """Every actor of the run, started and ready (``check_started``: a constructor that fails or
    does not return in ``run.actor_start_timeout_s`` is a one-line ``ActorStartError``)."""
    ro, timeout = cfg.rollout, cfg.run.actor_start_timeout_s
    groups: list = []
    rank_options = None
    rollouts: list = []
    if cfg.colocated and ro.backend == "vllm":  # the engine first, ready, then the learner beside it
        group, worker_options, rank_options = shared_gpu_options(cfg.learner, ro)
        groups.append(group)
        rollouts = [start_rollout_worker(cfg, 0, suffix, groups, worker_options)]
        check_started({"rollout worker 0": rollouts[0]}, timeout)
    learner = LearnerGroup.for_training(cfg, rank_options=rank_options)
    if cfg.generates_in_learner:
        rollouts = list(learner.ranks)
    elif not rollouts:
        rollouts = [start_rollout_worker(cfg, w, suffix, groups) for w in range(ro.num_workers)]
    judge = (
        ray.remote(JudgePool)
        .options(
            **ray_options(JUDGE_POOL),
            max_concurrency=1000,
            max_restarts=cfg.pipeline.max_actor_restarts,
            max_task_retries=0,
            name=f"{JUDGE_POOL_NAME}-{suffix}",
        )
        .remote(cfg.judge, cfg.reward, api_keys)
    )
    actors = {f"rollout worker {w}": a for w, a in enumerate(rollouts)} | {"judge pool": judge}
    check_started(actors | {f"learner rank {r}": a for r, a in enumerate(learner.ranks)}, timeout)
    return StartedActors(learner, rollouts, judge, groups)
