"""Stand-ins for the actors of ``test_placement_cluster.py``, in a module of their own so that
the processes Ray starts for them import only Ray (the test module imports the whole stack)."""

from __future__ import annotations

import os

import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

START_TIMEOUT_S = 60.0  # an actor Ray cannot schedule never starts: the test fails after this


def _where() -> dict:
    """This process's node, Ray's GPU ids and CUDA_VISIBLE_DEVICES."""
    ctx = ray.get_runtime_context()
    return {
        "node": ctx.get_node_id(),
        "gpus": tuple(ctx.get_accelerator_ids()["GPU"]),
        "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "env": {k: v for k, v in os.environ.items() if k.startswith(("VLLM_RAY_", "RANK", "LOCAL_RANK"))},
    }


class Shard:
    """Stands in for vLLM's ``RayWorkerWrapper`` (one tensor-parallel shard)."""

    def where(self) -> dict:
        return _where()


class RolloutStandIn:
    """Takes ``RolloutWorker``'s constructor arguments; ``start_engine`` places the shards as vLLM does."""

    def __init__(self, rollout, model, worker_id: int = 0, seed: int = 0, lora_rank=None) -> None:
        self.tp = rollout.vllm.tensor_parallel_size if rollout is not None else 0  # None: no config to import

    def where(self) -> dict:
        return _where()

    def start_engine(self) -> list[dict]:
        group = ray.util.get_current_placement_group()
        assert group is not None, "vLLM would make a placement group of its own"
        specs = group.bundle_specs
        named = os.environ.get("VLLM_RAY_BUNDLE_INDICES", "")
        bundles = [int(b) for b in named.split(",")] if named else [i for i, b in enumerate(specs) if b.get("GPU")]
        bundles = bundles[: self.tp]
        nodes = ray.util.placement_group_table(group)["bundles_to_node_id"]
        assert ray.get_runtime_context().get_node_id() in nodes.values(), "vLLM: driver node not in the group"
        per_shard = float(os.environ.get("VLLM_RAY_PER_WORKER_GPUS", "1.0"))
        self.shards = [
            ray.remote(Shard)
            .options(
                num_cpus=0,
                num_gpus=per_shard,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    group, b, placement_group_capture_child_tasks=True
                ),
            )
            .remote()
            for b in bundles
        ]
        return ray.get([s.where.remote() for s in self.shards], timeout=START_TIMEOUT_S)

    def close(self) -> None:
        """As vLLM's engine shutdown: its shard workers end, their GPUs are free again."""
        for shard in getattr(self, "shards", []):
            ray.kill(shard)

    def join_weight_group(self, host: str, port: int, rank: int, world_size: int, backend: str) -> None:
        self.joined = (rank, world_size)

    def joined_at(self) -> tuple[int, int]:
        return self.joined


class LearnerStandIn:
    """Takes ``Learner``'s constructor arguments."""

    def __init__(self, *args) -> None:
        pass

    def where(self) -> dict:
        return _where()
