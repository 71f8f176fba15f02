"""ray_jobs/runtime/placement.py as pure code: the layouts it plans, the check that an actor fits its
bundle, and its first-fit layout on nodes of a given shape (no Ray running)."""

from __future__ import annotations

import pytest

from actors.learner.config import LearnerConfig
from actors.rollout.worker import RolloutConfig
from actors.weights.broadcast import group_ranks
from ray_jobs.config.experiment import ExperimentConfig
from ray_jobs.runtime.placement import (
    ActorSpec,
    GroupSpec,
    Placement,
    PlacementError,
    assign_nodes,
    check_fits,
    engine_shards,
    learner_placement,
    rollout_placement,
    run_placement,
    total_resources,
)


def _tp_rollout(tp: int, cpus: float = 2.0, **extra) -> RolloutConfig:
    return RolloutConfig.model_validate(
        {
            "backend": "vllm",
            "num_cpus_per_worker": cpus,
            "num_gpus_per_worker": tp,
            "vllm": {"tensor_parallel_size": tp},
            **extra,
        }
    )


def _gpu_learner(world_size: int = 2, strategy: str = "PACK") -> LearnerConfig:
    return LearnerConfig.model_validate(
        {"backend": "deepspeed", "world_size": world_size, "num_cpus": 2, "num_gpus": 1, "placement_strategy": strategy}
    )


def test_a_tensor_parallel_engine_gets_a_strict_pack_group_with_a_bundle_per_actor() -> None:
    tp, cpus = 2, 2.0
    plan = rollout_placement(_tp_rollout(tp, cpus), worker_id=3)
    (group,) = plan.groups
    assert group.name == "rollout engine 3" and group.strategy == "STRICT_PACK"  # /dev/shm staging is node-local
    assert group.bundles == ({"CPU": cpus},) + ({"GPU": 1.0},) * tp
    worker = plan.actor("rollout worker 3")
    # the worker actor asks for exactly its own bundle and no GPU; vLLM's shards take the GPU bundles
    assert (worker.group, worker.bundle, worker.demand()) == (group.name, 0, group.bundles[0])
    assert worker.env["VLLM_RAY_BUNDLE_INDICES"] == "1,2" and worker.env["VLLM_RAY_PER_WORKER_GPUS"] == "1"
    shards = [a for a in plan.actors if a.started_by == "vllm"]
    assert [(s.bundle, s.demand()) for s in shards] == [(b, group.bundles[b]) for b in range(1, tp + 1)]
    assert total_resources(plan) == (cpus, float(tp))


def test_the_old_tensor_parallel_layout_cannot_be_scheduled() -> None:
    """What stages.py did before: PACK bundles of {GPU 1, CPU 1}, the worker asking its
    num_cpus_per_worker (2) and no GPU in bundle 0: Ray would never schedule it."""
    old = Placement(
        (GroupSpec("rollout engine 0", ({"GPU": 1.0, "CPU": 1.0},) * 2, "PACK"),),
        (ActorSpec("rollout worker 0", 2.0, 0.0, group="rollout engine 0", bundle=0),),
    )
    with pytest.raises(PlacementError, match=r"bundle 0 holds .*'CPU': 1.0.* ask for \{'CPU': 2.0\}"):
        check_fits(old)


def test_worker_resources_go_into_its_bundle_and_an_empty_one_is_left_out() -> None:
    plan = rollout_placement(_tp_rollout(2, 1.0, resources={"rollout_node": 1}), 0)
    assert plan.groups[0].bundles[0] == {"CPU": 1.0, "rollout_node": 1.0}
    assert plan.actor("rollout worker 0").demand() == {"CPU": 1.0, "rollout_node": 1.0}
    bare = rollout_placement(_tp_rollout(2, 0.0), 0)  # Ray refuses an empty bundle: the worker shares bundle 0
    assert bare.groups[0].bundles == ({"GPU": 1.0},) * 2
    assert bare.actor("rollout worker 0").demand() == {} and bare.actor("rollout worker 0").bundle == 0
    assert bare.actor("rollout worker 0").env["VLLM_RAY_BUNDLE_INDICES"] == "0,1"


def test_one_process_engines_have_no_group() -> None:
    ro = RolloutConfig(num_cpus_per_worker=3, num_gpus_per_worker=1, resources={"r": 1})
    assert rollout_placement(ro, 0) == Placement(actors=(ActorSpec("rollout worker 0", 3, 1, {"r": 1}),))
    assert engine_shards(ro) == 1 and engine_shards(_tp_rollout(4)) == 4


def test_each_learner_rank_asks_exactly_its_bundle() -> None:
    lr = _gpu_learner(world_size=3, strategy="SPREAD")
    plan = learner_placement(lr)
    (group,) = plan.groups
    assert group.strategy == "SPREAD" and group.bundles == ({"CPU": 2.0, "GPU": 1.0},) * 3
    assert [(a.name, a.bundle, a.demand()) for a in plan.actors] == [
        (f"learner rank {r}", r, group.bundles[r]) for r in range(3)
    ]
    one = learner_placement(LearnerConfig(num_cpus=2, num_gpus=0.5))
    assert one.groups == () and one.actors[0].demand() == {"CPU": 2.0, "GPU": 0.5}


def _run_config(tp: int, workers: int = 1, learner_strategy: str = "PACK") -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "rollout": _tp_rollout(tp).model_dump() | {"num_workers": workers},
            "learner": _gpu_learner(strategy=learner_strategy).model_dump(),
            "weight_sync": {"transport": "broadcast"},
        }
    )


def test_nodes_of_two_gpus_hold_a_tp2_engine_and_a_two_rank_learner() -> None:
    placed = {p.actor.name: p for p in assign_nodes(run_placement(_run_config(tp=2)), gpus_per_node=2, cpus_per_node=4)}
    engine = [placed[n] for n in ("rollout worker 0", "rollout worker 0 shard 0", "rollout worker 0 shard 1")]
    assert {p.node for p in engine} == {0}  # one node per engine
    assert engine[0].gpus == () and {engine[1].gpus, engine[2].gpus} == {(0,), (1,)}
    ranks = [placed["learner rank 0"], placed["learner rank 1"]]
    assert {p.node for p in ranks} == {1} and {p.gpus for p in ranks} == {(0,), (1,)}  # a GPU each
    assert placed["judge pool"].gpus == ()


def test_a_layout_nodes_cannot_hold_is_one_line_error() -> None:
    with pytest.raises(
        PlacementError, match=r"rollout engine 0: .* must share one node \(STRICT_PACK\) on nodes of 2 GPUs"
    ):
        assign_nodes(run_placement(_run_config(tp=4)), gpus_per_node=2)
    with pytest.raises(PlacementError, match=r"learner: bundle 1 .* \(STRICT_SPREAD\) on 1 nodes of 8 GPUs"):
        assign_nodes(learner_placement(_gpu_learner(strategy="STRICT_SPREAD")), gpus_per_node=8, nodes=1)
    # PACK falls back to several nodes; 4 GPUs of learner on nodes of 1 GPU each
    spread = assign_nodes(learner_placement(_gpu_learner(world_size=4)), gpus_per_node=1)
    assert [p.node for p in spread] == [0, 1, 2, 3]


def test_broadcast_group_ranks_every_shard_once() -> None:
    cfg = _run_config(tp=2, workers=3)
    firsts, world = group_ranks([engine_shards(cfg.rollout)] * cfg.rollout.num_workers)
    ranks = [f + s for f in firsts for s in range(engine_shards(cfg.rollout))]
    assert world == 1 + 3 * 2 and sorted(ranks) == list(range(1, world))  # rank 0 is learner rank 0
    assert group_ranks([1, 1]) == ([1, 2], 3)  # one process per engine: engine i is rank i + 1, as before
    with pytest.raises(ValueError):
        group_ranks([2, 0])


def test_a_run_reserves_what_its_workers_and_learner_ask() -> None:
    """ray_session checks the cluster against this: an engine's GPU bundles hold no CPU."""
    cfg = _run_config(tp=2, workers=3)
    ro, lr = cfg.rollout, cfg.learner
    want_cpus = ro.num_workers * ro.num_cpus_per_worker + lr.world_size * lr.num_cpus
    want_gpus = ro.num_workers * ro.vllm.tensor_parallel_size + lr.world_size * lr.num_gpus
    assert total_resources(run_placement(cfg)) == (want_cpus, want_gpus) == (10.0, 8.0)
