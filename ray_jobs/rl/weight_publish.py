"""Policy weights from the learner group to the rollout workers: the object store
(full weights or the LoRA adapter, exported once and handed to every worker by
reference) or a process-group broadcast (``weight_sync.transport``).

``WeightPublisher`` is the one place that knows which version the rollout workers
were sent; ``ActorSet`` asks it when it starts a generation.

A broadcast is a collective that learner rank 0 cannot leave until every engine
took part (gloo: its 600 s timeout; NCCL: never), so the engines are asked first
whether they will take it (``RolloutWorker.check_receive``) and a refusal fails
the sync at once, before anyone enters it. A restore (a resumed run, or a learner
group restarted from its checkpoint, which also forms a new group: ``ActorSet`` is
started again) is sent as one: the engines take it even when they already hold
its version (the step-0 checkpoint) or a newer one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import ray

from actors.weights.broadcast import group_ranks
from ray_jobs.config.experiment import ExperimentConfig
from ray_jobs.runtime.faults import LearnerDied, RunFaultError, is_actor_fault
from ray_jobs.runtime.learner_group import LearnerGroup
from ray_jobs.runtime.placement import engine_shards


@dataclass
class _PendingSync:
    version: int
    export_s: float
    loads: list[ray.ObjectRef] = field(default_factory=list)


class WeightPublisher:
    """Sends the learner group's weights to ``rollouts`` (Ray actor handles, which stay
    valid across Ray's restarts of a worker).

    Invariant: ``version`` is the newest policy version sent to every rollout worker,
    and a generation sent after a publish starts on weights of at least that version
    (the worker waits for them). Ray does not order an async actor's calls, so a
    worker may get v + 1 before v; it then skips v (``RolloutWorker.update_weights``).
    """

    def __init__(self, cfg: ExperimentConfig, learner: LearnerGroup, rollouts: list) -> None:
        self.cfg, self.learner, self.rollouts = cfg, learner, rollouts
        self.version = 0
        self.last_sync_s = 0.0
        self._syncs: list[_PendingSync] = []
        self._latest_update: ray.ObjectRef | None = None  # what a restarted worker is sent (object store)
        broadcast = cfg.weight_sync.transport == "broadcast" and not cfg.generates_in_learner
        self._plan = self._join_broadcast() if broadcast else None

    def _join_broadcast(self) -> list:
        """Form the weight-broadcast group (learner rank 0 = rank 0, then each worker's engine
        processes: ``group_ranks``) and return the bucket plan every sync follows."""
        ws = self.cfg.weight_sync
        backend = ws.backend if ws.backend != "auto" else ("nccl" if self.cfg.learner.num_gpus > 0 else "gloo")
        firsts, world = group_ranks([engine_shards(self.cfg.rollout)] * len(self.rollouts))
        host, port = self.learner.open_weight_group(world)
        joins = [w.join_weight_group.remote(host, port, f, world, backend) for f, w in zip(firsts, self.rollouts)]
        self.learner.join_weight_group(host, port, world, backend)
        ray.get(joins)
        return self.learner.weight_plan(ws.bucket_mb * 2**20)

    def publish(self) -> list[ray.ObjectRef]:
        """Send the learner's new weights to every rollout worker.

        Object store: export once (full weights or the LoRA adapter), then hand
        every worker the reference, without waiting for the loads. Broadcast:
        the workers are told to receive and the learner sends; this returns
        when the learner has sent the last bucket. Returns the workers' loads (to wait on).
        """
        start = time.perf_counter()
        version = self.version + 1
        loads = self._send(version, restore=False)
        self._syncs.append(_PendingSync(version, time.perf_counter() - start, loads))
        self.version = version
        return loads

    def restore(self, version: int) -> None:
        """After the learner loaded a checkpoint of ``version``: give every rollout worker
        those weights and wait until they hold them (a resumed run's first batches need them),
        whatever version they hold now."""
        ray.get(self._send(version, restore=True))
        self.version = version

    def _send(self, version: int, restore: bool) -> list[ray.ObjectRef]:
        """The learner's current weights to every worker, as ``version``; returns the workers' loads.
        Object store: the export, once exported, goes to each worker's ``restore_weights`` (a
        restore) or ``update_weights``."""
        if self.cfg.generates_in_learner:  # generation reads the learner's own weights: the version is all that changes
            return []
        if self._plan is not None:
            return self._broadcast(self._plan, version, restore)
        update = self.learner.export_weights(adapter_only=self.cfg.adapter_sync)
        ray.wait([update], fetch_local=False)
        self._latest_update = update
        load = "restore_weights" if restore else "update_weights"
        return [getattr(w, load).remote(update) for w in self.rollouts]

    def _broadcast(self, plan: list, version: int, restore: bool) -> list[ray.ObjectRef]:
        """Every engine agrees to take ``version`` (else ``RunFaultError``, before the collective),
        then receives while learner rank 0 sends; returns when it sent the last bucket. A learner
        rank lost on the way is ``LearnerDied`` (the run may restart the group)."""
        checks = [w.check_receive.remote(version, restore) for w in self.rollouts]
        for worker, check in enumerate(checks):
            try:
                ray.get(check)
            except Exception as exc:  # noqa: BLE001 - a refusal or a lost worker: either way nobody sends
                cause = "it died" if is_actor_fault(exc) else str(getattr(exc, "cause", exc)).splitlines()[0]
                raise RunFaultError(
                    f"rollout worker {worker} cannot take weight broadcast v{version}"
                    f"{' (a restore)' if restore else ''}: {cause}; nothing was sent; re-run the "
                    "same command to resume from the newest checkpoint"
                ) from None
        loads = [w.receive_weights.remote(plan, version, restore) for w in self.rollouts]
        try:
            self.learner.broadcast_weights(plan)
        except ray.exceptions.RayActorError as exc:
            raise LearnerDied(
                f"a learner rank died during weight broadcast v{version} ({type(exc).__name__})"
            ) from None
        return loads

    def resend(self, worker: int, cause: BaseException) -> None:
        """Worker ``worker`` came back as a new process: send it the newest weights (nothing
        before the first publish). A broadcast group cannot admit it: ``RunFaultError``."""
        if self.version == 0:
            return
        if self._latest_update is None:
            raise RunFaultError(
                f"rollout worker {worker} was restarted ({type(cause).__name__}) but "
                "weight_sync.transport=broadcast cannot admit a restarted engine to its group; "
                "re-run the same command to resume from the newest checkpoint"
            )
        self.rollouts[worker].restore_weights.remote(self._latest_update)

    def completed_sync_seconds(self) -> float:
        """Export time plus the slowest worker's load time of the newest sync
        that every worker has finished (the previous value if none finished since)."""
        while self._syncs:
            sync = self._syncs[0]
            done, _ = ray.wait(sync.loads, num_returns=len(sync.loads), timeout=0)
            if len(done) < len(sync.loads):
                break
            self.last_sync_s = sync.export_s + max(_load_times(sync.loads), default=0.0)
            self._syncs.pop(0)
        return self.last_sync_s


def _load_times(loads: list[ray.ObjectRef]) -> list[float]:
    """The loads' durations, leaving out those lost with a worker that died (it gets the weights again)."""
    times = []
    for ref in loads:
        try:
            times.append(ray.get(ref))
        except Exception as exc:  # noqa: BLE001 - classified
            if not is_actor_fault(exc):
                raise
    return times
