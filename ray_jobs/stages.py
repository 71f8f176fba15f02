"""The Ray edge: the plain classes become actors here (the learner's ranks in
``ray_jobs/learner_group.py``), and nowhere else.

``Stages`` owns the rollout workers, the judge pool and the learner group, and
the few calls the driver makes on them. Rollout results flow to the judge pool
by object reference (Ray resolves them when the rollout finishes), so the
driver never waits on generation or judging except when it needs a step's
batch. Rollout workers are async actors: with vLLM, an engine serves several
calls at once and takes weight updates while they run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import ray
from pydantic import SecretStr
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.judge_pool import JudgePool
from actors.messages import PromptItem, ScoreResult, TrainBatch, TrainResult
from actors.rollout import RolloutWorker
from ray_jobs.config import ExperimentConfig
from ray_jobs.data import PromptSource
from ray_jobs.learner_group import LearnerGroup
from ray_jobs.pipeline import LeastLoadedRouter, refill_size, shaped_rewards, signal_groups

log = logging.getLogger(__name__)


@dataclass
class _PendingSync:
    version: int
    export_s: float
    loads: list[ray.ObjectRef] = field(default_factory=list)


class Stages:
    """Rollout workers + judge pool + learner group as Ray actors.

    Invariant: ``version`` is the newest policy version sent to every rollout
    worker. A generation sent after an update starts on the updated weights
    (``RolloutWorker``); with HF a worker switches between generations, with
    vLLM also during them (each sample records the versions it spans).
    """

    def __init__(self, cfg: ExperimentConfig, api_keys: dict[str, SecretStr]) -> None:
        ro, lr = cfg.rollout, cfg.learner
        self.cfg = cfg
        self._engine_groups: list = []
        lora_rank = lr.lora.r if cfg.adapter_sync else None
        self.rollouts = [self._start_rollout(w, lora_rank) for w in range(ro.num_workers)]
        self.judge = ray.remote(JudgePool).options(num_cpus=0, max_concurrency=1000).remote(cfg.judge, cfg.reward, api_keys)
        self.learner = LearnerGroup(lr, cfg.model, cfg.algorithm, ro.temperature, seed=cfg.run.seed,
                                    max_new_tokens=ro.max_new_tokens)
        self.router = LeastLoadedRouter(len(self.rollouts))
        self._generating: dict[ray.ObjectRef, tuple[int, int]] = {}  # call -> (worker, prompts)
        self._syncs: list[_PendingSync] = []
        self.last_sync_s = 0.0
        self.version = 0
        self._plan = self._join_broadcast() if cfg.weight_sync.transport == "broadcast" else None

    def _start_rollout(self, worker_id: int, lora_rank: int | None) -> ray.actor.ActorHandle:
        """One rollout worker actor. A vLLM engine with tensor parallelism gets a
        placement group of one GPU bundle per shard; vLLM's Ray executor starts
        its shard workers inside it (the worker itself reserves no GPU)."""
        ro = self.cfg.rollout
        options: dict = {"num_cpus": ro.num_cpus_per_worker, "num_gpus": ro.num_gpus_per_worker, "max_concurrency": 1000}
        if ro.backend == "vllm" and ro.vllm.tensor_parallel_size > 1:
            group = placement_group([{"GPU": 1, "CPU": 1}] * ro.vllm.tensor_parallel_size, strategy="PACK")
            ray.get(group.ready(), timeout=300)
            self._engine_groups.append(group)
            options.update(num_gpus=0, scheduling_strategy=PlacementGroupSchedulingStrategy(
                group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True))
        return ray.remote(RolloutWorker).options(**options).remote(ro, self.cfg.model, worker_id=worker_id,
                                                                   seed=self.cfg.run.seed, lora_rank=lora_rank)

    def _join_broadcast(self) -> list:
        """Form the weight-broadcast group (learner rank 0 = rank 0, worker i = rank i + 1)
        and return the bucket plan every sync follows."""
        ws = self.cfg.weight_sync
        backend = ws.backend if ws.backend != "auto" else ("nccl" if self.cfg.learner.num_gpus > 0 else "gloo")
        host, port = self.learner.broadcast_address()
        world = 1 + len(self.rollouts)
        joins = [w.join_weight_group.remote(host, port, i + 1, world, backend) for i, w in enumerate(self.rollouts)]
        self.learner.join_weight_group(host, port, world, backend)
        ray.get(joins)
        return self.learner.weight_plan(ws.bucket_mb * 2**20)

    def launch_batch(self, batch_index: int, prompts: list[PromptItem], first_call: int = 0) -> list[ray.ObjectRef]:
        """Send a batch's prompts to the rollout workers in calls of
        ``pipeline.prompts_per_call``; each call's result goes straight to the
        judge pool. Each call starts on weights of at least the newest version
        sent (``self.version``), which is what admission control counted on.
        Returns the ScoreResult references. Calls are numbered from
        ``first_call`` (refills of a batch continue its numbering, so group ids
        stay unique)."""
        self._reap_finished_calls()
        per_call = self.cfg.pipeline.prompts_per_call
        scores = []
        for call, lo in enumerate(range(0, len(prompts), per_call), start=first_call):
            chunk = prompts[lo : lo + per_call]
            worker = self.router.pick(len(chunk))
            generated = self.rollouts[worker].generate.remote(batch_index, call, chunk, self.version)
            self._generating[generated] = (worker, len(chunk))
            scores.append(self.judge.score.remote(generated))
        return scores

    def _reap_finished_calls(self) -> None:
        if not self._generating:
            return
        done, _ = ray.wait(list(self._generating), num_returns=len(self._generating), timeout=0)
        for ref in done:
            self.router.finished(*self._generating.pop(ref))

    def collect(self, step: int, refs: list[ray.ObjectRef], source: PromptSource) -> tuple[list[ScoreResult], dict[str, float]]:
        """Wait for a step's judged calls; with dynamic sampling, refill until the step
        has ``pipeline.prompts_per_step`` groups with reward variance.

        Each refill round sends ``refill_size`` new prompts, generated with the newest
        published weights (version ``step`` when the previous step has been
        published), so refills can only lower the step's staleness. After
        ``algorithm.max_refill_rounds`` rounds the step goes on with what it has
        (``dynamic_sampling/exhausted`` = 1); ``assemble_batch`` fails if that is nothing.
        Returns the results and the ``dynamic_sampling/*`` refill metrics.
        """
        results: list[ScoreResult] = ray.get(refs)
        algo, target = self.cfg.algorithm.settings, self.cfg.pipeline.prompts_per_step
        if not algo.dynamic_sampling:
            return results, {}
        rounds = prompts = 0
        while True:
            scored = [s for r in results for s in r.scored]
            kept, seen = signal_groups(scored, shaped_rewards(scored, algo, self.cfg.rollout.max_new_tokens))
            if len(kept) >= target or rounds == algo.max_refill_rounds:
                break
            n = refill_size(target - len(kept), len(kept), len(seen), target)
            results += ray.get(self.launch_batch(step, source.take(n), first_call=len(results)))
            rounds, prompts = rounds + 1, prompts + n
        if len(kept) < target:
            log.warning("step %d: dynamic sampling exhausted %d refill rounds with %d of %d groups", step, rounds,
                        len(kept), target)
        return results, {"dynamic_sampling/refill_rounds": float(rounds), "dynamic_sampling/refill_prompts": float(prompts),
                         "dynamic_sampling/exhausted": float(len(kept) < target)}

    def train(self, batch: TrainBatch) -> TrainResult:
        return self.learner.train(batch)

    def publish_weights(self) -> None:
        """Send the learner's new weights to every rollout worker.

        Object store: export once (full weights or the LoRA adapter), then hand
        every worker the reference, without waiting for the loads. Broadcast:
        the workers are told to receive and the learner sends; this returns
        when the learner has sent the last bucket.
        """
        start = time.perf_counter()
        version = self.version + 1
        if self._plan is not None:
            loads = [w.receive_weights.remote(self._plan, version) for w in self.rollouts]
            self.learner.broadcast_weights(self._plan)
        else:
            update = self.learner.export_weights(adapter_only=self.cfg.adapter_sync)
            ray.wait([update], fetch_local=False)
            loads = [w.update_weights.remote(update) for w in self.rollouts]
        self._syncs.append(_PendingSync(version, time.perf_counter() - start, loads))
        self.version = version

    def completed_sync_seconds(self) -> float:
        """Export time plus the slowest worker's load time of the newest sync
        that every worker has finished (the previous value if none finished since)."""
        while self._syncs:
            sync = self._syncs[0]
            done, _ = ray.wait(sync.loads, num_returns=len(sync.loads), timeout=0)
            if len(done) < len(sync.loads):
                break
            self.last_sync_s = sync.export_s + max(ray.get(sync.loads))
            self._syncs.pop(0)
        return self.last_sync_s

    def save(self, path: str) -> None:
        self.learner.save(path)

    def judge_stats(self) -> dict:
        return ray.get(self.judge.stats.remote())

    def close(self) -> None:
        """Stop this run's actors (a driver that runs several trainings in one Ray session).

        Rollout workers first shut their engines down (vLLM runs its engine in
        a child process), then every actor is killed."""
        ray.wait([w.close.remote() for w in self.rollouts], num_returns=len(self.rollouts), timeout=60)
        for actor in [*self.rollouts, self.judge]:
            ray.kill(actor)
        self.learner.kill()
        for group in self._engine_groups:
            remove_placement_group(group)
