"""The Ray edge: the plain classes become actors here, and nowhere else.

``Stages`` owns the rollout workers, the judge pool and the learner, and the
few calls the driver makes on them. Rollout results flow to the judge pool by
object reference (Ray resolves them when the rollout finishes), so the driver
never waits on generation or judging except when it needs a step's batch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import ray
from pydantic import SecretStr

from actors.judge_pool import JudgePool
from actors.learner import Learner
from actors.messages import PromptItem, ScoreResult, TrainBatch, TrainResult
from actors.rollout import RolloutWorker
from ray_jobs.config import ExperimentConfig
from ray_jobs.data import PromptSource
from ray_jobs.pipeline import LeastLoadedRouter, refill_size, shaped_rewards, signal_groups

log = logging.getLogger(__name__)


@dataclass
class _PendingSync:
    version: int
    export_s: float
    loads: list[ray.ObjectRef] = field(default_factory=list)


class Stages:
    """Rollout workers + judge pool + learner as Ray actors.

    Invariant: ``version`` is the newest policy version published to every
    rollout worker (updates are queued behind calls already sent, so each
    worker switches between, never during, generations).
    """

    def __init__(self, cfg: ExperimentConfig, api_keys: dict[str, SecretStr]) -> None:
        ro, lr = cfg.rollout, cfg.learner
        self.cfg = cfg
        self.rollouts = [
            ray.remote(RolloutWorker)
            .options(num_cpus=ro.num_cpus_per_worker, num_gpus=ro.num_gpus_per_worker)
            .remote(ro, cfg.model, worker_id=w, seed=cfg.run.seed)
            for w in range(ro.num_workers)
        ]
        self.judge = ray.remote(JudgePool).options(num_cpus=0, max_concurrency=1000).remote(cfg.judge, cfg.reward, api_keys)
        self.learner = ray.remote(Learner).options(num_cpus=lr.num_cpus, num_gpus=lr.num_gpus).remote(
            lr, cfg.model, cfg.algorithm, ro.temperature, seed=cfg.run.seed, max_new_tokens=ro.max_new_tokens)
        self.router = LeastLoadedRouter(len(self.rollouts))
        self._generating: dict[ray.ObjectRef, int] = {}
        self._syncs: list[_PendingSync] = []
        self.last_sync_s = 0.0
        self.version = 0

    def launch_batch(self, batch_index: int, prompts: list[PromptItem], first_call: int = 0) -> list[ray.ObjectRef]:
        """Send a batch's prompts to the rollout workers in calls of
        ``pipeline.prompts_per_call``; each call's result goes straight to the
        judge pool. Returns the ScoreResult references. Calls are numbered from
        ``first_call`` (refills of a batch continue its numbering, so group ids
        stay unique)."""
        self._reap_finished_calls()
        per_call = self.cfg.pipeline.prompts_per_call
        scores = []
        for call, lo in enumerate(range(0, len(prompts), per_call), start=first_call):
            worker = self.router.pick()
            generated = self.rollouts[worker].generate.remote(batch_index, call, prompts[lo : lo + per_call])
            self._generating[generated] = worker
            scores.append(self.judge.score.remote(generated))
        return scores

    def _reap_finished_calls(self) -> None:
        if not self._generating:
            return
        done, _ = ray.wait(list(self._generating), num_returns=len(self._generating), timeout=0)
        for ref in done:
            self.router.finished(self._generating.pop(ref))

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
        return ray.get(self.learner.train.remote(batch))

    def publish_weights(self) -> None:
        """Export the learner's weights once and queue them on every rollout worker.

        Does not wait for the workers: they load the update after the
        generations already queued on them.
        """
        start = time.perf_counter()
        update = self.learner.export_weights.remote()
        ray.wait([update], fetch_local=False)
        sync = _PendingSync(self.version + 1, time.perf_counter() - start)
        sync.loads = [w.update_weights.remote(update) for w in self.rollouts]
        self._syncs.append(sync)
        self.version += 1

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
        ray.get(self.learner.save.remote(path))

    def judge_stats(self) -> dict:
        return ray.get(self.judge.stats.remote())

    def close(self) -> None:
        """Stop this run's actors (a driver that runs several trainings in one Ray session)."""
        for actor in [*self.rollouts, self.judge, self.learner]:
            ray.kill(actor)
