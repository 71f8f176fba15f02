"""The learner at the Ray edge: one actor, or a data-parallel DeepSpeed group of actors.

``LearnerGroup`` is the only place ``actors.learner.learner.Learner`` becomes Ray
actors. With ``learner.world_size == 1`` it is exactly the single actor the
driver always had (today's resources, no placement group, no environment
variables). With ``world_size = N > 1`` it starts N ``Learner`` actors, the
ranks of one DeepSpeed process group (gloo on CPU, NCCL on GPU):

1. A placement group reserves N bundles of ``{"CPU": num_cpus, "GPU":
   num_gpus}`` (zero entries left out) with ``learner.placement_strategy``
   (``ray_jobs/runtime/placement.py``'s ``learner_placement``: rank r runs in bundle r
   asking exactly what the bundle holds, so each GPU rank gets a GPU of its own); a
   group Ray cannot place within ``placement_timeout_s`` is an early, explicit
   ``LearnerPlacementError`` (it would otherwise wait forever).
2. One resource-free probe task per bundle reports the bundle's node; the
   probe in bundle 0, where rank 0 will run, also reports that node's IP and
   a TCP port free there (``MASTER_ADDR``/``MASTER_PORT``: rank 0 hosts the
   rendezvous store). The port is free when probed, not reserved: if another
   process takes it before rank 0 listens on it, every rank starts again on a
   newly probed port (``_start_ranks``; a warning is logged).
3. Rank r starts in bundle r with ``runtime_env={"env_vars": ...}`` setting
   ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``
   (merged by Ray with the job's own ``env_vars``).

``LOCAL_RANK`` (see ``local_ranks``): DeepSpeed uses it to pick the device
``cuda:LOCAL_RANK``. Ray gives each GPU actor a ``CUDA_VISIBLE_DEVICES`` of
its own GPU only, where that GPU is ``cuda:0``, so on GPU every rank's
LOCAL_RANK is 0 (and ``num_gpus`` per rank is 1, enforced by
``LearnerConfig``). On CPU it is the rank's index among the ranks on its node,
which is what torch.distributed tooling expects there.

Calls are collective: every method calls every rank, in the same order, with
the same arguments (``Learner`` keeps the ranks in lockstep). While one rank
fails the others may be blocked in a collective; ``train`` and ``save`` raise
the first rank failure as soon as it happens, and the caller should then
``kill`` the group.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.colocated import ColocatedWorker
from actors.learner.learner import Learner, LearnerConfig
from actors.learner.process_group import PORT_ATTEMPTS, port_taken
from actors.learner.sequence_objectives import SequenceObjective
from actors.messages import SequenceBatch, TrainBatch, TrainResult
from actors.model.loading import ModelConfig
from actors.rollout.worker import RolloutConfig
from algorithms.config import AlgorithmConfig
from ray_jobs.config.experiment import ACTOR_START_TIMEOUT_S, ExperimentConfig
from ray_jobs.runtime.faults import ActorStartError, check_started
from ray_jobs.runtime.placement import learner_placement, ray_options

DEFAULT_PLACEMENT_TIMEOUT_S = 120.0

log = logging.getLogger(__name__)


class LearnerPlacementError(RuntimeError):
    """Ray could not place the learner's ranks (too few CPUs/GPUs or nodes for the strategy)."""


def local_ranks(node_ids: Sequence[str], gpus: bool) -> list[int]:
    """``LOCAL_RANK`` per rank, from the node each rank runs on (in rank order).

    On GPU all 0 (each rank sees only its own GPU, as ``cuda:0``); on CPU the
    rank's index among the earlier ranks on the same node.
    """
    if gpus:
        return [0] * len(node_ids)
    return [list(node_ids[:rank]).count(node) for rank, node in enumerate(node_ids)]


def rank_env(rank: int, world_size: int, local_rank: int, master_addr: str, master_port: int) -> dict[str, str]:
    """The torch.distributed variables of one rank (all strings, as environment variables are)."""
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(local_rank),
        "WORLD_SIZE": str(world_size),
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
    }


def _bundle(learner: LearnerConfig) -> dict[str, float]:
    """One rank's bundle (``world_size > 1``), zero entries left out (``LearnerConfig`` guarantees it is not empty)."""
    return learner_placement(learner).groups[0].bundles[0]


def _probe_node() -> tuple[str, str, int]:
    """(node id, node IP, a TCP port free on all of this node's interfaces just now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        port = int(sock.getsockname()[1])
    return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address(), port


def _in_bundle(group: PlacementGroup, index: int) -> PlacementGroupSchedulingStrategy:
    return PlacementGroupSchedulingStrategy(placement_group=group, placement_group_bundle_index=index)


def _get_all(refs: list[ray.ObjectRef]) -> list[Any]:
    """Every rank's result, raising the first rank failure as soon as it arrives
    (``ray.get`` of the list would first wait on ranks that may block forever)."""
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        ray.get(done)
    return ray.get(refs)


class LearnerGroup:
    """``world_size`` ``Learner`` actors trained in lockstep, seen by the driver as one learner.

    Invariants: ``ranks[r]`` is rank r (rank 0 holds the exported weights);
    every call below reaches every rank, in call order; with ``world_size ==
    1`` there is one actor, no placement group and no environment variables.

    Extending it: a ``Learner`` method that trains or reads full weights
    (``backend.full_state_dict``, ``save_pretrained``: ZeRO-3 gathers) must go
    to every rank (``_on_all``); one that only rank 0 can do (e.g. join a
    weight-broadcast group as its sender) goes to ``ranks[0]`` alone.
    """

    def __init__(
        self,
        learner: LearnerConfig,
        model: ModelConfig,
        algorithm: AlgorithmConfig,
        temperature: float,
        seed: int,
        max_new_tokens: int | None,
        placement_timeout_s: float = DEFAULT_PLACEMENT_TIMEOUT_S,
        *,
        total_steps: int | None = None,
        objective: SequenceObjective | None = None,
        start_timeout_s: float = ACTOR_START_TIMEOUT_S,
        colocated_rollout: RolloutConfig | None = None,
        rank_options: dict[str, Any] | None = None,
    ) -> None:
        """``total_steps``: the run's learner batches (``run.steps``), the LR schedule's horizon; every rank gets it.
        ``objective``: the offline objective (SFT, SimPO, DPO) of ``train_sequences``, if any.
        ``start_timeout_s``: how long the ranks' constructors may take (``run.actor_start_timeout_s``).
        ``colocated_rollout``: the one rank is a ``ColocatedWorker`` that also generates, with this
        rollout section (``pipeline.placement: colocated``; one rank only). ``rank_options``: the one
        rank's ``.options`` when another plan places it (a colocated vLLM engine's shared GPU)."""
        self.config = learner
        self.start_timeout_s = start_timeout_s
        self.placement_group: PlacementGroup | None = None
        self._ahead: dict[int, ray.ObjectRef] = {}  # step -> its forward_ahead call, until that step trains
        args = (learner, model, algorithm, temperature, seed, max_new_tokens, total_steps, objective)
        actor = ray.remote(Learner)
        self._plan = learner_placement(learner)
        options = rank_options or (ray_options(self._plan.actors[0]) if learner.world_size == 1 else {})
        if colocated_rollout is not None:  # an async actor: its generations wait for versions while others run
            colocated = ray.remote(ColocatedWorker).options(**options, max_concurrency=1000)
            self.ranks = [colocated.remote(*args, colocated_rollout)]
            return
        if learner.world_size == 1:
            self.ranks = [actor.options(**options).remote(*args)]
            return
        self.placement_group = self._reserve(placement_timeout_s)
        try:
            self.ranks = self._start_ranks(actor, args)
        except BaseException:
            remove_placement_group(self.placement_group)
            raise

    @classmethod
    def for_training(cls, cfg: ExperimentConfig, rank_options: dict[str, Any] | None = None) -> LearnerGroup:
        """The RL run's group: its learner, model and algorithm sections; with ``pipeline.placement:
        colocated`` (HF generation) its one rank also generates."""
        ro = cfg.rollout
        return cls(
            cfg.learner,
            cfg.model,
            cfg.algorithm,
            ro.temperature,
            seed=cfg.run.seed,
            max_new_tokens=ro.max_new_tokens,
            total_steps=cfg.run.steps,
            start_timeout_s=cfg.run.actor_start_timeout_s,
            colocated_rollout=ro if cfg.generates_in_learner else None,
            rank_options=rank_options,
        )

    @staticmethod
    def resources(learner: LearnerConfig) -> tuple[float, float]:
        """(CPUs, GPUs) the group reserves: ``world_size`` times the per-rank amounts."""
        return learner.world_size * learner.num_cpus, learner.world_size * learner.num_gpus

    def _reserve(self, timeout_s: float) -> PlacementGroup:
        """A placement group of one bundle per rank, ready, or ``LearnerPlacementError``."""
        lr = self.config
        spec = self._plan.groups[0]
        group = placement_group([dict(bundle) for bundle in spec.bundles], strategy=spec.strategy)
        ready, _ = ray.wait([group.ready()], timeout=timeout_s)
        if not ready:
            remove_placement_group(group)
            cpus, gpus = self.resources(lr)
            raise LearnerPlacementError(
                f"Ray could not place the learner's {lr.world_size} ranks of {_bundle(lr)} each "
                f"({lr.placement_strategy}, {cpus:g} CPUs and {gpus:g} GPUs in all) within {timeout_s:g} s; "
                f"the cluster has {ray.cluster_resources()}, of which {ray.available_resources()} are free "
                "(learner.world_size, learner.num_cpus, learner.num_gpus, learner.placement_strategy)"
            )
        return group

    def _start_ranks(self, actor: Any, args: tuple) -> list[ray.actor.ActorHandle]:
        """The ranks, started and joined in one process group (their constructors returned; a
        single rank is not waited for here: callers check it with their other actors).

        Rank 0 hosts the rendezvous store on a port probed free, which another
        process can take before rank 0 listens on it; rank 0 then fails with
        ``RendezvousPortTaken`` and every rank starts again on a newly probed
        port, up to ``PORT_ATTEMPTS`` starts. Any other failure, or no start
        within ``start_timeout_s``, is an ``ActorStartError`` naming the rank; the
        ranks of a failed start are killed.
        """
        assert self.placement_group is not None
        for attempt in range(1, PORT_ATTEMPTS + 1):
            envs = self._rank_envs()
            ranks = [
                actor.options(
                    **ray_options(self._plan.actors[rank], self.placement_group), runtime_env={"env_vars": env}
                ).remote(*args)
                for rank, env in enumerate(envs)
            ]
            try:
                check_started({f"learner rank {r}": rank for r, rank in enumerate(ranks)}, self.start_timeout_s)
                return ranks
            except ActorStartError as exc:
                for rank in ranks:
                    ray.kill(rank)
                if not port_taken(exc) or attempt == PORT_ATTEMPTS:
                    raise
                log.warning(
                    "learner group: MASTER_PORT=%s was taken before rank 0 listened on it; "
                    "starting the %d ranks again on another port (start %d of %d)",
                    envs[0]["MASTER_PORT"],
                    len(ranks),
                    attempt + 1,
                    PORT_ATTEMPTS,
                )
        raise AssertionError("unreachable")

    def _rank_envs(self) -> list[dict[str, str]]:
        """Each rank's torch.distributed variables, from a probe of every bundle's node."""
        assert self.placement_group is not None
        probe = ray.remote(num_cpus=0)(_probe_node)
        where = ray.get(
            [
                probe.options(scheduling_strategy=_in_bundle(self.placement_group, rank)).remote()
                for rank in range(self.config.world_size)
            ]
        )
        _, master_addr, master_port = where[0]
        nodes = [node for node, _, _ in where]
        return [
            rank_env(rank, self.config.world_size, local, master_addr, master_port)
            for rank, local in enumerate(local_ranks(nodes, gpus=self.config.num_gpus > 0))
        ]

    def _on_all(self, method: str, *args: Any, **kwargs: Any) -> list[ray.ObjectRef]:
        """Call ``Learner.<method>(*args, **kwargs)`` on every rank, in rank order; the result refs.

        For any method that is collective (it trains, or reads full weights:
        ``backend.full_state_dict``/``save_pretrained`` gather under ZeRO-3).
        """
        return [getattr(rank, method).remote(*args, **kwargs) for rank in self.ranks]

    def train(self, batch: TrainBatch) -> TrainResult:
        """Train every rank on ``batch`` (sent once through the object store); rank 0's result.

        Every rank's metrics are already combined over ranks inside ``Learner``.
        """
        results = _get_all(self._on_all("train", ray.put(batch)))
        self._collect_forward_ahead(batch.step)
        versions = {result.policy_version for result in results}
        if len(versions) != 1:
            raise RuntimeError(f"learner ranks diverged: policy versions {sorted(versions)} after step {batch.step}")
        return results[0]

    def train_sequences(self, batch: SequenceBatch) -> TrainResult:
        """One optimiser step of the offline objective on every rank; rank 0's result."""
        results = _get_all(self._on_all("train_sequences", ray.put(batch)))
        if len({result.policy_version for result in results}) != 1:
            raise RuntimeError(f"learner ranks diverged after step {batch.step}")
        return results[0]

    def evaluate_sequences(self, batch: SequenceBatch) -> dict[str, float]:
        """The offline objective's ``eval/`` metrics over ``batch`` (collective; rank 0's)."""
        return _get_all(self._on_all("evaluate_sequences", ray.put(batch)))[0]

    def score_sequences(self, batch: SequenceBatch, adapter: bool = True) -> list[dict[str, float]]:
        """Per row: summed and length-normalised target log-probs under the policy (collective; rank 0's)."""
        return _get_all(self._on_all("score_sequences", ray.put(batch), adapter=adapter))[0]

    def forward_ahead(self, step: int, generated: list[ray.ObjectRef]) -> None:
        """Rank 0's ``Learner.forward_ahead`` on step ``step``'s rollout results (resolved by Ray
        when they exist); returns without waiting. One rank only: it needs the torch backend."""
        if len(self.ranks) != 1:
            raise ValueError("forward_ahead needs a learner of one rank")
        self._ahead[step] = self.ranks[0].forward_ahead.remote(step, *generated)

    def _collect_forward_ahead(self, step: int) -> None:
        """Collect the forward-ahead calls up to ``step`` (done: the learner ran them before
        ``train``). One fails when a rollout call of its batch was lost and sent again; the
        step then ran its own forward."""
        for ahead in [s for s in self._ahead if s <= step]:
            try:
                ray.get(self._ahead.pop(ahead))
            except ray.exceptions.RayError as exc:
                log.info("step %d: no forward ahead of the judge (%s); the step ran its own", ahead, type(exc).__name__)

    def export_weights(self, **options: Any) -> ray.ObjectRef:
        """Rank 0's ``Learner.export_weights(**options)`` (a ``WeightsUpdate``), by reference;
        returns without waiting.

        Every rank is called (the ZeRO-3 gather is collective); the other
        ranks' results are empty updates and are dropped.
        """
        return self._on_all("export_weights", **options)[0]

    def open_weight_group(self, world_size: int) -> tuple[str, int]:
        """Rank 0 opens the weight-broadcast group's store of ``world_size`` ranks; (rank 0's node
        IP, the store's port): where the engines join."""
        return ray.get(
            self.ranks[0].__ray_call__.remote(
                lambda learner: (ray.util.get_node_ip_address(), learner.open_weight_group(world_size))
            )
        )

    def join_weight_group(self, host: str, port: int, world_size: int, backend: str) -> None:
        """Rank 0 joins the weight-broadcast group as its sender (blocks until every engine joined)."""
        ray.get(self.ranks[0].join_weight_group.remote(host, port, world_size, backend))

    def weight_plan(self, bucket_bytes: int) -> list:
        """The broadcast bucket layout (collective; rank 0's)."""
        return _get_all(self._on_all("weight_plan", bucket_bytes))[0]

    def broadcast_weights(self, plan: list) -> int:
        """Broadcast the current weights to the engines (collective; rank 0 sends); bytes sent."""
        return _get_all(self._on_all("broadcast_weights", plan))[0]

    def save(self, path: str) -> None:
        """Save the policy in Hugging Face format (rank 0 writes; every rank takes part)."""
        _get_all(self._on_all("save", path))

    def save_checkpoint(self, path: str) -> dict[str, float]:
        """``Learner.save_checkpoint`` on every rank (each writes its shard); ``{"bytes", "seconds"}``,
        the same on every rank (rank 0's byte count, the slowest rank's time)."""
        return _get_all(self._on_all("save_checkpoint", path))[0]

    def load_checkpoint(self, path: str) -> int:
        """``Learner.load_checkpoint`` on every rank of a freshly started group; the restored version."""
        versions = set(_get_all(self._on_all("load_checkpoint", path)))
        if len(versions) != 1:
            raise RuntimeError(f"learner ranks restored different versions {sorted(versions)} from {path}")
        return versions.pop()

    def kill(self) -> None:
        """Stop every rank and release the placement group."""
        for rank in self.ranks:
            ray.kill(rank)
        if self.placement_group is not None:
            remove_placement_group(self.placement_group)
            self.placement_group = None
