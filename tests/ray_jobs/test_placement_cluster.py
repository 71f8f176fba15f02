"""GPU placement on a simulated cluster: two Ray nodes on this machine, each declaring 2 GPUs.

The real edge code starts the actors (``start_rollout_worker``, ``LearnerGroup``) with
light stand-ins in place of ``RolloutWorker`` and ``Learner``, so the options under test are
exactly the ones a run uses. vLLM cannot start here: the rollout stand-in does what vLLM
0.32's Ray executor does in the engine it starts (``v1/executor/ray_executor.py``
``_init_workers_ray``): take the actor's current placement group, the bundles
``VLLM_RAY_BUNDLE_INDICES`` names (else the first tensor-parallel-size bundles holding a
GPU), and start one shard actor per bundle asking ``num_cpus=0,
num_gpus=VLLM_RAY_PER_WORKER_GPUS``; it also checks, as ``ray_utils._verify_bundles``
does, that its own node holds bundles of the group.

Each actor reports its node, Ray's accelerator ids and ``CUDA_VISIBLE_DEVICES``; the test
asserts the layout equals ``assign_nodes``'s plan up to naming the nodes, and that each GPU
actor sees exactly its GPUs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from placement_standins import START_TIMEOUT_S, LearnerStandIn, RolloutStandIn

from actors.model.loading import ModelConfig
from algorithms.config import AlgorithmConfig
from ray_jobs.config.evaluation import EvaluateConfig
from ray_jobs.config.experiment import ExperimentConfig
from ray_jobs.evaluation import conditions as eval_conditions
from ray_jobs.rl import actor_start
from ray_jobs.rl.weight_publish import WeightPublisher
from ray_jobs.runtime import learner_group
from ray_jobs.runtime.placement import assign_nodes, learner_placement, rollout_placement

GPUS_PER_NODE, CPUS_PER_NODE = 2, 4


@pytest.fixture(scope="module")
def gpu_cluster() -> Iterator[None]:
    from ray.cluster_utils import Cluster

    here, root = Path(__file__).resolve().parent, Path(__file__).resolve().parents[2]
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(here), str(root), before or ""])  # the stand-ins, for the nodes
    node = {"num_cpus": CPUS_PER_NODE, "num_gpus": GPUS_PER_NODE}
    try:
        cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
        cluster.add_node(**node)
        cluster.wait_for_nodes()
    finally:  # the nodes' processes have inherited it
        if before is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = before
    ray.init(address=cluster.address)
    yield
    ray.shutdown()
    cluster.shutdown()


def _config() -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "rollout": {
                "backend": "vllm",
                "num_cpus_per_worker": 2,
                "num_gpus_per_worker": 2,
                "vllm": {"tensor_parallel_size": 2},
            },
            "learner": {"backend": "deepspeed", "world_size": 2, "num_cpus": 2, "num_gpus": 1},
            "weight_sync": {"transport": "broadcast"},
        }
    )


def test_tp2_engine_and_two_rank_learner_land_where_the_plan_says(gpu_cluster, monkeypatch) -> None:
    cfg = _config()
    monkeypatch.setattr(actor_start, "RolloutWorker", RolloutStandIn)
    monkeypatch.setattr(learner_group, "Learner", LearnerStandIn)
    engine_groups: list = []
    worker = actor_start.start_rollout_worker(cfg, 0, "placement-test", engine_groups)
    seen = {"rollout worker 0": ray.get(worker.where.remote(), timeout=START_TIMEOUT_S)}
    for s, where in enumerate(ray.get(worker.start_engine.remote(), timeout=START_TIMEOUT_S)):
        seen[f"rollout worker 0 shard {s}"] = where
    group = learner_group.LearnerGroup(cfg.learner, ModelConfig(), AlgorithmConfig(), 1.0, 0, 8, placement_timeout_s=30)
    for r, rank in enumerate(group.ranks):
        seen[f"learner rank {r}"] = ray.get(rank.where.remote(), timeout=START_TIMEOUT_S)

    plan = rollout_placement(cfg.rollout, 0) + learner_placement(cfg.learner)
    placed = assign_nodes(plan, GPUS_PER_NODE, CPUS_PER_NODE, nodes=2)
    assert sorted(p.actor.name for p in placed) == sorted(seen)
    node_of: dict[int, str] = {}  # the plan's node index -> Ray's node id, consistent for every actor
    for p in placed:
        actual = seen[p.actor.name]
        assert node_of.setdefault(p.node, actual["node"]) == actual["node"], (
            f"{p.actor.name} is not where the plan says"
        )
        assert len(actual["gpus"]) == len(p.gpus), f"{p.actor.name}: Ray gave GPUs {actual['gpus']}, plan {p.gpus}"
        if p.actor.num_gpus > 0:  # Ray shows a GPU actor its GPUs only
            assert actual["cuda_visible"] == ",".join(actual["gpus"])
    assert len(set(node_of.values())) == 2  # the engine on one node, the learner on the other
    for gpu_actors in (["rollout worker 0 shard 0", "rollout worker 0 shard 1"], ["learner rank 0", "learner rank 1"]):
        assert len({seen[a]["gpus"] for a in gpu_actors}) == 2  # distinct GPUs of one node
    assert seen["rollout worker 0"]["gpus"] == ()  # the worker holds no GPU: its shards do
    assert seen["rollout worker 0"]["env"]["VLLM_RAY_BUNDLE_INDICES"] == "1,2"
    assert [seen[f"learner rank {r}"]["env"]["RANK"] for r in range(2)] == ["0", "1"]
    assert {seen[f"learner rank {r}"]["env"]["LOCAL_RANK"] for r in range(2)} == {"0"}  # each sees its GPU as cuda:0

    group.kill()
    for engine in engine_groups:
        ray.util.remove_placement_group(engine)


class _BroadcastLearner:
    """What ``WeightPublisher`` asks of the learner group when it forms the broadcast group."""

    def open_weight_group(self, world: int) -> tuple[str, int]:
        self.world = world
        return "127.0.0.1", 1

    def join_weight_group(self, host: str, port: int, world: int, backend: str) -> None:
        self.joined_world = world

    def weight_plan(self, bucket_bytes: int) -> list:
        return []


def test_the_broadcast_group_ranks_every_shard_of_every_engine(gpu_cluster) -> None:
    """Two TP=2 engines: learner rank 0 is rank 0, engine 0's shards 1-2, engine 1's 3-4 (each
    engine's shard s joins at its first rank + s, ``actors/rollout/vllm_worker.py``); world 5."""
    cfg = _config()
    engines = [ray.remote(RolloutStandIn).options(num_cpus=0).remote(None, None) for _ in range(2)]
    learner = _BroadcastLearner()
    WeightPublisher(cfg, learner, engines)  # type: ignore[arg-type]  # the stand-in learner
    tp = cfg.rollout.vllm.tensor_parallel_size
    joined = ray.get([e.joined_at.remote() for e in engines])
    shard_ranks = [first + s for first, _ in joined for s in range(tp)]
    assert learner.world == learner.joined_world == 1 + 2 * tp
    assert {world for _, world in joined} == {learner.world}
    assert sorted(shard_ranks) == list(range(1, learner.world))  # every rank but the sender's, once


def test_evaluation_workers_use_and_reuse_their_engine_groups(gpu_cluster, monkeypatch) -> None:
    """The evaluate job starts rollout workers per policy: a TP=2 engine's worker runs in its own
    STRICT_PACK group, and the next policy's worker reuses it once the first one is closed."""
    monkeypatch.setattr(eval_conditions, "RolloutWorker", RolloutStandIn)
    cfg = EvaluateConfig.model_validate({"rollout": _config().rollout.model_dump()})
    groups: list = []
    nodes = []
    for policy in ("first", "second"):
        (worker,) = eval_conditions.start_workers(cfg, policy, 1, groups)
        node = ray.get(worker.where.remote(), timeout=START_TIMEOUT_S)["node"]
        shards = ray.get(worker.start_engine.remote(), timeout=START_TIMEOUT_S)
        assert {s["node"] for s in shards} == {node} and len({s["gpus"] for s in shards}) == 2
        nodes.append(node)
        ray.get(worker.close.remote())
        ray.kill(worker)
    assert len(groups) == 1 and nodes[0] == nodes[1]  # one group, reserved once
    ray.util.remove_placement_group(groups[0])
