"""The RL job's set of actors: the plain classes become actors here (the learner's ranks in
``ray_jobs/runtime/learner_group.py``), and nowhere else.

``ActorSet`` owns the rollout workers, the judge pool and the learner group, and
the few calls the driver makes on them. Rollout results flow to the judge pool
by object reference (Ray resolves them when the rollout finishes), so the
driver never waits on generation or judging except when it needs a step's
batch. Rollout workers are async actors: with vLLM, an engine serves several
calls at once and takes weight updates while they run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import ray
from pydantic import SecretStr
from ray.util.placement_group import remove_placement_group

from actors.messages import PromptItem, ScoreResult, TrainBatch, TrainResult
from ray_jobs.config.experiment import ExperimentConfig
from ray_jobs.data.prompts import PromptSource
from ray_jobs.rl.actor_start import start_actors
from ray_jobs.rl.engine_turns import EngineTurns
from ray_jobs.rl.judge_outage import OutageGuard, judge_outage_cause
from ray_jobs.rl.pipeline import LeastLoadedRouter, refill_size, shaped_rewards, signal_groups
from ray_jobs.rl.weight_publish import WeightPublisher
from ray_jobs.runtime.faults import (
    ActorProcesses,
    FaultCounters,
    LearnerDied,
    RolloutCall,
    RunFaultError,
    StopRequested,
    failed,
    is_actor_fault,
)

log = logging.getLogger(__name__)


class ActorSet:
    """Rollout workers + judge pool + learner group as Ray actors.

    Invariant: ``version`` is the newest policy version sent to every rollout
    worker. A generation sent after an update starts on the updated weights
    (``RolloutWorker``); with HF a worker switches between generations, with
    vLLM also during them (each sample records the versions it spans).

    Faults (``ray_jobs/runtime/faults.py``): rollout workers and the judge pool are
    restartable actors; a call lost with one is sent again (``collect``); a
    rollout call running past ``rollout.call_timeout_s`` gets its worker
    restarted. A dead learner rank raises ``LearnerDied``.
    """

    def __init__(self, cfg: ExperimentConfig, api_keys: dict[str, SecretStr]) -> None:
        self.cfg = cfg
        restarts = cfg.pipeline.max_actor_restarts
        started = start_actors(cfg, api_keys, f"{id(self):x}")
        self.learner, self.rollouts, self.judge = started.learner, started.rollouts, started.judge
        self._engine_groups = started.engine_groups
        workers = {} if cfg.generates_in_learner else {f"rollout worker {w}": a for w, a in enumerate(self.rollouts)}
        self._processes = ActorProcesses(
            {**workers, "judge pool": self.judge},
            restarts,
            cfg.run.actor_start_timeout_s,
        )
        self.router = LeastLoadedRouter(len(self.rollouts))
        self._generating: dict[ray.ObjectRef, tuple[int, int]] = {}  # call -> (worker, prompts)
        self.faults = FaultCounters()
        self._worker_epochs = [0] * len(self.rollouts)  # restarts seen per worker
        self._seqs = [0] * len(self.rollouts)  # next call number per worker (RolloutWorker.generate's seq)
        self._progress_at = [time.monotonic()] * len(self.rollouts)  # when each worker last finished a call
        self._killed: set[tuple[int, int]] = set()  # (worker, epoch) restarted for a hung call
        self.weights = WeightPublisher(cfg, self.learner, self.rollouts)
        self.turns = EngineTurns(self.rollouts, self.learner.ranks, cfg.engine_sleeps)  # sleeps through each step
        self.outage = OutageGuard.of_pool(self.judge, cfg.judge.max_outage_s)  # the judge pool's outage state

    @property
    def version(self) -> int:
        """The newest policy version sent to every rollout worker."""
        return self.weights.version

    def launch_batch(self, batch_index: int, prompts: list[PromptItem], first_call: int = 0) -> list[RolloutCall]:
        """Send a batch's prompts to the rollout workers in calls of
        ``pipeline.prompts_per_call``; each call's result goes straight to the
        judge pool. Each call starts on weights of at least the newest version
        sent (``self.version``), which is what admission control counted on.
        Returns the calls. Calls are numbered from ``first_call`` (refills of a
        batch continue its numbering, so group ids stay unique).

        With ``pipeline.forward_ahead`` on, the learner is given the batch's generations
        too: it runs their forward as soon as they exist, while the judge scores them.
        """
        self._reap_finished_calls()
        per_call = self.cfg.pipeline.call_size(self.cfg.rollout.backend)
        calls = [
            self._send(batch_index, call, prompts[lo : lo + per_call])
            for call, lo in enumerate(range(0, len(prompts), per_call), start=first_call)
        ]
        if self.cfg.forward_ahead and first_call == 0:
            self.learner.forward_ahead(batch_index, [c.generated for c in calls])
        return calls

    def _send(self, batch_index: int, call: int, chunk: list[PromptItem], resends: int = 0) -> RolloutCall:
        worker = self.router.pick(len(chunk))
        seq, self._seqs[worker] = self._seqs[worker], self._seqs[worker] + 1
        generated = self.rollouts[worker].generate.remote(batch_index, call, chunk, self.version, seq)
        self._generating[generated] = (worker, len(chunk))
        return RolloutCall(
            batch_index,
            call,
            chunk,
            worker,
            self._worker_epochs[worker],
            generated,
            self.judge.score.remote(generated),
            resends=resends,
        )

    def _reap_finished_calls(self) -> None:
        if not self._generating:
            return
        done, _ = ray.wait(list(self._generating), num_returns=len(self._generating), timeout=0, fetch_local=False)
        for ref in done:
            worker, prompts = self._generating.pop(ref)
            self.router.finished(worker, prompts)
            self._progress_at[worker] = time.monotonic()

    def collect(
        self, step: int, calls: list[RolloutCall], source: PromptSource, stop: Callable[[], bool] = lambda: False
    ) -> tuple[list[ScoreResult], dict[str, float]]:
        """Wait for a step's judged calls; with dynamic sampling, refill until the step
        has ``pipeline.prompts_per_step`` groups with reward variance.

        Each refill round sends ``refill_size`` new prompts, generated with the newest
        published weights (version ``step`` when the previous step has been
        published), so refills can only lower the step's staleness. After
        ``algorithm.max_refill_rounds`` rounds the step goes on with what it has
        (``dynamic_sampling/exhausted`` = 1); ``assemble_batch`` fails if that is nothing.
        ``stop()`` is polled while the step's own calls are awaited (never during
        refills, whose prompts are already taken): ``StopRequested`` when it says so.
        Returns the results and the ``dynamic_sampling/*`` refill metrics.
        """
        results = self.wait(calls, stop)
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
            results += self.wait(self.launch_batch(step, source.take(n), first_call=len(results)))
            rounds, prompts = rounds + 1, prompts + n
        if len(kept) < target:
            log.warning(
                "step %d: dynamic sampling exhausted %d refill rounds with %d of %d groups",
                step,
                rounds,
                len(kept),
                target,
            )
        return results, {
            "dynamic_sampling/refill_rounds": float(rounds),
            "dynamic_sampling/refill_prompts": float(prompts),
            "dynamic_sampling/exhausted": float(len(kept) < target),
        }

    def wait(self, calls: list[RolloutCall], stop: Callable[[], bool] = lambda: False) -> list[ScoreResult]:
        """The calls' ScoreResults, in call order, recovering from actor faults on the way.

        A call whose worker or judge died (or whose restarted worker lacked its weights)
        is sent again; a call past ``rollout.call_timeout_s`` gets its worker restarted
        (its calls then fail and are sent again). ``calls`` is updated in place, so a
        caller interrupted by ``StopRequested`` still holds every call's prompts.
        """
        results: dict[int, ScoreResult] = {}
        while len(results) < len(calls):
            if stop():
                raise StopRequested()
            pending = {c.scored: i for i, c in enumerate(calls) if i not in results}
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0.5, fetch_local=True)
            for ref in done:
                i = pending[ref]
                try:
                    results[i] = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - classified below
                    if (cause := judge_outage_cause(exc)) is not None:
                        raise StopRequested(cause) from None  # past judge.max_outage_s: stop as on SIGTERM
                    if not is_actor_fault(exc):
                        raise
                    calls[i] = self._recover(calls[i], exc)
            self._restart_hung(calls[i] for i in pending.values() if i not in results)
        return [results[i] for i in range(len(calls))]

    def _recover(self, call: RolloutCall, exc: BaseException) -> RolloutCall:
        """Send ``call`` again after a fault: the whole call if generation failed, else only its scoring.

        First waits until the actor answers again; if it is a new process (Ray
        restarted it) the restart is counted, and a rollout worker is sent the
        current weights. Several calls lost with one process count one restart.
        """
        limit = self.cfg.pipeline.max_actor_restarts + 1
        gen_error = failed(call.generated)
        cause = gen_error if gen_error is not None else exc
        if call.resends >= limit:
            raise RunFaultError(
                f"batch {call.batch_index} call {call.call_index} failed {call.resends + 1} times "
                f"(last: {type(cause).__name__}); the actors are not recovering "
                f"(pipeline.max_actor_restarts={limit - 1})"
            )
        self.faults.add("calls_resent")
        if gen_error is None:  # the judge pool died: score the same generation again
            if self._processes.restarted("judge pool"):
                self.faults.add("judge_restarts")
            log.warning(
                "judge pool lost batch %d call %d (%s); scoring it again",
                call.batch_index,
                call.call_index,
                type(exc).__name__,
            )
            return RolloutCall(
                call.batch_index,
                call.call_index,
                call.prompts,
                call.worker,
                call.epoch,
                call.generated,
                self.judge.score.remote(call.generated),
                resends=call.resends + 1,
            )
        if self.cfg.generates_in_learner:  # the learner's process: the run restarts it from the newest checkpoint
            raise LearnerDied(
                f"the colocated learner died during batch {call.batch_index} ({type(gen_error).__name__})"
            )
        if self._processes.restarted(f"rollout worker {call.worker}"):
            self._on_worker_restart(call.worker, gen_error)
        log.warning(
            "rollout worker %d lost batch %d call %d (%s); sending it again",
            call.worker,
            call.batch_index,
            call.call_index,
            type(gen_error).__name__,
        )
        return self._send(call.batch_index, call.call_index, call.prompts, resends=call.resends + 1)

    def _on_worker_restart(self, worker: int, cause: BaseException) -> None:
        """A worker came back as a new process: count it and send it the current weights."""
        self._worker_epochs[worker] += 1
        self.faults.add("rollout_restarts")
        self.weights.resend(worker, cause)

    def _restart_hung(self, calls: Iterable[RolloutCall]) -> None:
        """Kill (Ray restarts) the worker of a call that is not done while its worker has
        finished nothing for ``rollout.call_timeout_s`` since the call was sent (calls
        queued behind others on a busy worker are not hung)."""
        limit = self.cfg.rollout.call_timeout_s
        self._reap_finished_calls()
        for call in calls:
            quiet = time.monotonic() - max(call.sent_at, self._progress_at[call.worker])
            if quiet <= limit or (call.worker, call.epoch) in self._killed:
                continue
            ready, _ = ray.wait([call.generated], timeout=0, fetch_local=False)
            if not ready and call.epoch == self._worker_epochs[call.worker]:
                log.warning(
                    "rollout worker %d: batch %d call %d still running after %g s; restarting it",
                    call.worker,
                    call.batch_index,
                    call.call_index,
                    limit,
                )
                ray.kill(self.rollouts[call.worker], no_restart=False)  # its calls fail, and are sent again
                self._killed.add((call.worker, call.epoch))

    def train(self, batch: TrainBatch) -> TrainResult:
        """One learner step; ``LearnerDied`` (naming the rank) if a rank died."""
        try:
            self.turns.before_step()
            trained = self.learner.train(batch)
            self.turns.after_step()
            return trained
        except ray.exceptions.RayActorError as exc:
            raise LearnerDied(
                f"learner {self._dead_rank()} died during step {batch.step} ({type(exc).__name__})"
            ) from None

    def _dead_rank(self) -> str:
        for rank, actor in enumerate(self.learner.ranks):
            try:
                ray.get(actor.__ray_ready__.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - any failure marks the rank
                return f"rank {rank}"
        return "a rank"

    def publish_weights(self) -> None:
        """Send the learner's new weights to every rollout worker (``WeightPublisher.publish``); a
        sleeping colocated engine wakes its KV cache once it holds them."""
        self.turns.after_load(self.weights.publish())

    def restore(self, version: int) -> None:
        """After the learner loaded a checkpoint of ``version``, give every rollout worker those weights."""
        self.weights.restore(version)

    def rollout_rng_states(self) -> list[list[int]]:
        return ray.get([w.rng_state.remote() for w in self.rollouts])

    def set_rollout_rng_states(self, states: list[list[int]]) -> None:
        """Restore the workers' sampling RNGs (skipped when the worker count changed)."""
        if len(states) == len(self.rollouts):
            ray.get([w.set_rng_state.remote(s) for w, s in zip(self.rollouts, states)])

    def save_checkpoint(self, directory: str) -> dict[str, float]:
        """The learner's training state under ``directory/learner`` and the policy, in
        Hugging Face format, under ``directory/policy`` (collective over the ranks)."""
        info = self.learner.save_checkpoint(f"{directory}/learner")
        self.learner.save(f"{directory}/policy")
        return info

    def completed_sync_seconds(self) -> float:
        return self.weights.completed_sync_seconds()

    def save(self, path: str) -> None:
        self.learner.save(path)

    def judge_stats(self) -> dict:
        return ray.get(self.judge.stats.remote())

    def judge_spent(self) -> tuple[str, float] | None:
        """The judge pool's (instance id, US dollars spent so far: ``JudgePool.spent``); None when it
        does not answer within a minute (e.g. while Ray restarts it)."""
        try:
            return ray.get(self.judge.spent.remote(), timeout=60)
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
            return None

    def close(self) -> None:
        """Stop this run's actors (a driver that runs several trainings in one Ray session).

        Rollout workers first shut their engines down (vLLM runs its engine in
        a child process), then every actor is killed."""
        ray.wait([w.close.remote() for w in self.rollouts], num_returns=len(self.rollouts), timeout=60)
        for actor in [*self.rollouts, self.judge]:
            ray.kill(actor, no_restart=True)
        self.learner.kill()
        for group in self._engine_groups:
            remove_placement_group(group)
