"""Where a run's actors go: placement groups, their bundles, and what each actor asks Ray for.

Pure: everything here is computed from the config (and, for ``assign_nodes``, a
node shape), with Ray neither imported nor running, so that the Ray edge
(``ray_jobs/rl/actor_set.py``, ``ray_jobs/runtime/learner_group.py``) starts actors with
exactly these options and a dry run can print them.

Layouts (the reasons are in vLLM 0.32's and Ray 2.60's source):

- A rollout worker without tensor parallelism is one actor with no placement
  group, asking ``rollout.num_cpus_per_worker`` CPUs, ``num_gpus_per_worker``
  GPUs and ``rollout.resources``.
- A vLLM engine of tensor parallelism ``t > 1`` gets one STRICT_PACK group:
  bundle 0 holds the worker actor's own CPUs and custom resources (left out
  when they are all zero), bundles ``1..t`` (``0..t-1`` without it) one GPU
  each. The worker actor asks for no GPU; vLLM's Ray executor, running in the
  engine process the actor spawns, finds the actor's placement group and starts
  one shard worker per GPU bundle asking ``num_cpus=0, num_gpus=1``
  (``VLLM_RAY_PER_WORKER_GPUS``) in the bundles ``VLLM_RAY_BUNDLE_INDICES``
  names (both set in the actor's environment, so the plan is what vLLM does).
  STRICT_PACK keeps the shards on the actor's node: vLLM requires the engine's
  node in the group, and weight updates are staged as files under the actor's
  node-local ``rollout.vllm.staging_dir`` (``/dev/shm``) that every shard reads.
- A learner of ``world_size`` ranks gets one group of ``world_size`` equal
  bundles ``{CPU: num_cpus, GPU: num_gpus}`` (zero entries left out) with
  ``learner.placement_strategy``; rank r runs in bundle r asking exactly its
  bundle, so Ray gives each GPU rank its own GPU (its ``CUDA_VISIBLE_DEVICES``).
  One rank is one actor with no group.

Invariant (``check_fits``, run on every layout made here): the actors in a
bundle together ask for no more of any resource than the bundle holds; an actor
asking for more is never scheduled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from actors.learner.config import LearnerConfig
from actors.rollout.worker import RolloutConfig

if TYPE_CHECKING:
    from ray_jobs.config.experiment import ExperimentConfig

from ray_jobs.runtime.bundles import ActorSpec as ActorSpec  # re-exported: the layout's data types live there
from ray_jobs.runtime.bundles import Bundle as Bundle
from ray_jobs.runtime.bundles import GroupSpec as GroupSpec
from ray_jobs.runtime.bundles import Placement as Placement
from ray_jobs.runtime.bundles import PlacementError as PlacementError
from ray_jobs.runtime.bundles import Strategy as Strategy
from ray_jobs.runtime.bundles import check_fits as check_fits
from ray_jobs.runtime.bundles import nonzero
from ray_jobs.runtime.colocation import shared_gpu_placement

VLLM_GPUS_PER_SHARD = 1.0
"""What each of vLLM's tensor-parallel shard workers asks for (``VLLM_RAY_PER_WORKER_GPUS``)."""


def engine_shards(rollout: RolloutConfig) -> int:
    """Processes that hold an engine's weights: vLLM's tensor-parallel shard workers, else 1."""
    return rollout.vllm.tensor_parallel_size if rollout.backend == "vllm" else 1


def rollout_placement(rollout: RolloutConfig, worker_id: int) -> Placement:
    """Rollout worker ``worker_id``'s layout (module docstring): the worker actor
    ``rollout worker <id>`` and, for a vLLM engine with tensor parallelism ``t > 1``,
    its group ``rollout engine <id>`` and vLLM's shard workers ``... shard <s>``."""
    name = f"rollout worker {worker_id}"
    tp = engine_shards(rollout)
    if tp == 1:
        worker = ActorSpec(name, rollout.num_cpus_per_worker, rollout.num_gpus_per_worker, dict(rollout.resources))
        return Placement(actors=(worker,))
    group = f"rollout engine {worker_id}"
    own = nonzero({"CPU": rollout.num_cpus_per_worker, **rollout.resources})
    first_gpu = 1 if own else 0
    gpu_bundles = list(range(first_gpu, first_gpu + tp))
    env = {
        "VLLM_RAY_BUNDLE_INDICES": ",".join(map(str, gpu_bundles)),
        "VLLM_RAY_PER_WORKER_GPUS": f"{VLLM_GPUS_PER_SHARD:g}",
    }
    worker = ActorSpec(name, rollout.num_cpus_per_worker, 0.0, dict(rollout.resources), group, 0, env=env)
    shards = tuple(
        ActorSpec(f"{name} shard {s}", 0.0, VLLM_GPUS_PER_SHARD, group=group, bundle=b, started_by="vllm")
        for s, b in enumerate(gpu_bundles)
    )
    bundles = ((own,) if own else ()) + ({"GPU": VLLM_GPUS_PER_SHARD},) * tp
    return check_fits(Placement((GroupSpec(group, bundles, "STRICT_PACK"),), (worker, *shards)))


def learner_placement(learner: LearnerConfig) -> Placement:
    """The learner's layout (module docstring): ``learner rank <r>`` in bundle r of group
    ``learner``, or one actor and no group when ``world_size == 1``."""
    if learner.world_size == 1:
        return Placement(actors=(ActorSpec("learner rank 0", learner.num_cpus, learner.num_gpus),))
    bundle = nonzero({"CPU": learner.num_cpus, "GPU": learner.num_gpus})
    group = GroupSpec("learner", (bundle,) * learner.world_size, learner.placement_strategy)
    ranks = tuple(
        ActorSpec(f"learner rank {r}", learner.num_cpus, learner.num_gpus, group="learner", bundle=r)
        for r in range(learner.world_size)
    )
    return check_fits(Placement((group,), ranks))


JUDGE_POOL = ActorSpec("judge pool", 0.0, 0.0)
"""The judge pool: I/O-bound (async HTTP), it reserves nothing."""


def run_placement(cfg: ExperimentConfig) -> Placement:
    """A training run's whole layout, in the order ``ActorSet`` starts it: rollout workers
    (and their engine groups), the judge pool, the learner. Colocated
    (``ray_jobs/runtime/colocation.py``): with vLLM the engine's worker and the learner rank share
    one GPU bundle; with HF the learner's process generates, so no rollout worker actor exists."""
    judge = Placement(actors=(JUDGE_POOL,))
    if cfg.colocated and cfg.rollout.backend == "vllm":
        shared = shared_gpu_placement(cfg.learner, cfg.rollout)
        return Placement(shared.groups, (shared.actors[0], JUDGE_POOL, shared.actors[1]))
    plan = Placement()
    for worker in range(0 if cfg.colocated else cfg.rollout.num_workers):
        plan += rollout_placement(cfg.rollout, worker)
    return plan + judge + learner_placement(cfg.learner)


def total_resources(plan: Placement) -> tuple[float, float]:
    """(CPUs, GPUs) that ``plan`` reserves: its groups' bundles and the actors outside groups."""
    reserved = [b for g in plan.groups for b in g.bundles] + [a.demand() for a in plan.actors if a.group is None]
    return sum(b.get("CPU", 0.0) for b in reserved), sum(b.get("GPU", 0.0) for b in reserved)


@dataclass(frozen=True)
class PlacedActor:
    """Where ``assign_nodes`` puts an actor: a node (index) and the GPUs of that node it gets
    (a fractional GPU: the one it shares; none: an empty tuple)."""

    actor: ActorSpec
    node: int
    gpus: tuple[int, ...]


@dataclass
class _Node:
    gpu_free: list[float]  # per GPU index
    cpu_free: float | None  # None: not limited

    def take(self, demand: Bundle) -> tuple[int, ...] | None:
        """Reserve ``demand`` here and return the GPU indices it gets, or None (nothing reserved)."""
        cpus, gpus = demand.get("CPU", 0.0), demand.get("GPU", 0.0)
        if self.cpu_free is not None and cpus > self.cpu_free + 1e-9:
            return None
        if gpus >= 1:
            ids = tuple(i for i, free in enumerate(self.gpu_free) if free >= 1.0)[: int(gpus)]
            if len(ids) < gpus:
                return None
            share = 1.0
        elif gpus > 0:
            ids = tuple(i for i, free in enumerate(self.gpu_free) if free >= gpus - 1e-9)[:1]
            if not ids:
                return None
            share = gpus
        else:
            ids, share = (), 0.0
        for i in ids:
            self.gpu_free[i] -= share
        if self.cpu_free is not None:
            self.cpu_free -= cpus
        return ids

    def copy(self) -> _Node:
        return _Node(list(self.gpu_free), self.cpu_free)


class _Cluster:
    """Identical nodes, added on demand up to ``limit`` (None: no limit)."""

    def __init__(self, gpus_per_node: int, cpus_per_node: float | None, limit: int | None) -> None:
        self.shape, self.limit = (gpus_per_node, cpus_per_node), limit
        self.nodes: list[_Node] = []

    def _new(self) -> _Node:
        return _Node([1.0] * self.shape[0], self.shape[1])

    def candidates(self) -> list[int]:
        """Node indices to try in order: the existing nodes, then a new one if allowed."""
        extra = [len(self.nodes)] if self.limit is None or len(self.nodes) < self.limit else []
        return list(range(len(self.nodes))) + extra

    def take(self, node: int, demands: list[Bundle]) -> list[tuple[int, ...]] | None:
        """Reserve every demand on ``node`` (all or nothing); each one's GPU indices."""
        trial = self.nodes[node].copy() if node < len(self.nodes) else self._new()
        got = [trial.take(d) for d in demands]
        if any(ids is None for ids in got):
            return None
        if node == len(self.nodes):
            self.nodes.append(trial)
        self.nodes[node] = trial
        return [ids for ids in got if ids is not None]


def _place_group(cluster: _Cluster, group: GroupSpec) -> list[tuple[int, tuple[int, ...]]]:
    """(node, GPU indices) per bundle of ``group``, following its strategy, or ``PlacementError``."""
    bundles = list(group.bundles)
    if group.strategy in ("STRICT_PACK", "PACK"):
        for node in cluster.candidates():
            got = cluster.take(node, bundles)
            if got is not None:
                return [(node, ids) for ids in got]
        if group.strategy == "STRICT_PACK":
            raise PlacementError(
                f"{group.name}: its bundles {bundles} must share one node (STRICT_PACK) {_shape(cluster)}"
            )
    placed: list[tuple[int, tuple[int, ...]]] = []
    for index, bundle in enumerate(bundles):
        used = {node for node, _ in placed}
        fresh = [n for n in cluster.candidates() if n not in used]
        if group.strategy == "STRICT_SPREAD":
            order = fresh
        elif group.strategy == "SPREAD":
            order = fresh + sorted(used)
        else:  # PACK that did not fit one node: first fit, bundle by bundle
            order = cluster.candidates()
        for node in order:
            got = cluster.take(node, [bundle])
            if got is not None:
                placed.append((node, got[0]))
                break
        else:
            raise PlacementError(
                f"{group.name}: bundle {index} {bundle} cannot be placed ({group.strategy}) {_shape(cluster)}"
            )
    return placed


def _shape(cluster: _Cluster) -> str:
    gpus, cpus = cluster.shape
    count = "" if cluster.limit is None else f"{cluster.limit} "
    return f"on {count}nodes of {gpus} GPUs and {'any number of' if cpus is None else f'{cpus:g}'} CPUs"


def assign_nodes(
    plan: Placement, gpus_per_node: int, cpus_per_node: float | None = None, nodes: int | None = None
) -> list[PlacedActor]:
    """A feasible layout of ``plan`` on identical nodes of ``gpus_per_node`` GPUs and ``cpus_per_node``
    CPUs (None: CPUs not limited), ``nodes`` of them (None: as many as it needs), in ``plan``'s
    order, first fit; ``PlacementError`` (one line) when there is none. Custom resources are not
    modelled (every node is taken to have them).

    Ray may choose other nodes and other GPU indices, but what the plan's strategies
    force holds in both: a STRICT_PACK group's actors share one node, a STRICT_SPREAD
    group's bundles are on distinct nodes, and each actor gets as many GPUs as it asks.
    """
    cluster = _Cluster(gpus_per_node, cpus_per_node, nodes)
    bundles = {group.name: _place_group(cluster, group) for group in plan.groups}
    placed = []
    for actor in plan.actors:
        if actor.group is None:
            for node in cluster.candidates():
                got = cluster.take(node, [actor.demand()])
                if got is not None:
                    placed.append(PlacedActor(actor, node, got[0]))
                    break
            else:
                raise PlacementError(f"{actor.name} ({actor.demand()}) cannot be placed {_shape(cluster)}")
            continue
        assert actor.bundle is not None  # check_fits made sure
        node, ids = bundles[actor.group][actor.bundle]
        wanted = 0 if actor.num_gpus == 0 else max(1, int(actor.num_gpus))
        placed.append(PlacedActor(actor, node, ids[:wanted]))
    return placed


# The Ray edge: the two calls that turn a plan into Ray objects (Ray is imported only here).


ENGINE_PLACEMENT_TIMEOUT_S = 300.0
"""How long Ray may take to place a tensor-parallel engine's placement group."""


class PlacementTimeout(RuntimeError):
    """Ray did not place a placement group in time (too few resources, or a strategy nodes cannot meet)."""


def reserve_group(spec: GroupSpec, timeout_s: float) -> Any:
    """``spec``'s placement group (a ``ray.util.placement_group.PlacementGroup``), placed by Ray;
    ``PlacementTimeout`` naming what was asked and what the cluster has (the group removed)
    when Ray does not place it within ``timeout_s``."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    group = placement_group([dict(b) for b in spec.bundles], strategy=spec.strategy)
    ready, _ = ray.wait([group.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(group)
        raise PlacementTimeout(
            f"Ray could not place {spec.name}'s bundles {list(spec.bundles)} ({spec.strategy}) within "
            f"{timeout_s:g} s; the cluster has {ray.cluster_resources()}, of which {ray.available_resources()} are free"
        )
    return group


def ray_options(actor: ActorSpec, group: Any = None, capture_child_tasks: bool = False) -> dict[str, Any]:
    """The ``.options(...)`` that start ``actor`` as planned: what it asks for, its bundle of
    ``group`` (the placement group made from its ``GroupSpec``) and its environment."""
    options: dict[str, Any] = {"num_cpus": actor.num_cpus, "num_gpus": actor.num_gpus}
    if actor.resources:
        options["resources"] = dict(actor.resources)
    if actor.group is not None:
        if group is None or actor.bundle is None:
            raise ValueError(f"{actor.name} runs in placement group {actor.group!r}: pass it")
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            group, placement_group_bundle_index=actor.bundle, placement_group_capture_child_tasks=capture_child_tasks
        )
    if actor.env:
        options["runtime_env"] = {"env_vars": dict(actor.env)}
    return options


def rollout_worker_options(rollout: RolloutConfig, worker_id: int, group: Any = None) -> tuple[Any, dict[str, Any]]:
    """(its placement group or None, its ``.options(...)``) for rollout worker ``worker_id`` as
    ``rollout_placement`` plans it. A tensor-parallel engine's group is reserved here, unless
    ``group`` (reserved for the same worker before, and free again) is given; whoever holds the
    group removes it when the worker is gone. Child tasks are captured by the group."""
    plan = rollout_placement(rollout, worker_id)
    if not plan.groups:
        group = None
    elif group is None:
        group = reserve_group(plan.groups[0], ENGINE_PLACEMENT_TIMEOUT_S)
    return group, ray_options(plan.actor(f"rollout worker {worker_id}"), group, capture_child_tasks=True)


def shared_gpu_options(learner: LearnerConfig, rollout: RolloutConfig) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """A colocated vLLM run's placement group, reserved (``ray_jobs/runtime/colocation.py``), with the
    ``.options(...)`` of ``rollout worker 0`` and of ``learner rank 0`` in its one bundle; whoever
    holds the group removes it once both actors are gone (a restarted actor returns to it)."""
    plan = shared_gpu_placement(learner, rollout)
    group = reserve_group(plan.groups[0], ENGINE_PLACEMENT_TIMEOUT_S)
    return group, ray_options(plan.actors[0], group), ray_options(plan.actors[1], group)
