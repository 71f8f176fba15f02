"""Colocated placement (ray_jobs/runtime/colocation.py, placement.py's run_placement and
shared_gpu_options): a vLLM engine's worker and the learner rank in one bundle of one GPU, HF
generation in the learner's process; pure layouts first, then Ray on a node that declares GPUs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from placement_standins import START_TIMEOUT_S, Shard

from ray_jobs.config.experiment import ExperimentConfig
from ray_jobs.runtime.colocation import COLOCATED_GPU_SHARE, SHARED_GPU, shared_gpu_placement
from ray_jobs.runtime.placement import assign_nodes, run_placement, shared_gpu_options, total_resources


def _config(backend: str = "vllm", **rollout) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "pipeline": {"placement": "colocated"},
            "rollout": {"backend": backend, "num_cpus_per_worker": 2, **rollout},
            "learner": {"num_cpus": 3, "num_gpus": 1},
        }
    )


def test_the_engine_and_the_learner_share_one_bundle_of_one_gpu() -> None:
    cfg = _config(resources={"rollout_node": 1})
    plan = shared_gpu_placement(cfg.learner, cfg.rollout)
    (group,) = plan.groups
    assert (group.name, group.strategy) == (SHARED_GPU, "STRICT_PACK")
    assert group.bundles == ({"CPU": 5.0, "GPU": 1.0, "rollout_node": 1.0},)  # 3 + 2 CPUs, the worker's resource
    worker, rank = plan.actors
    assert (worker.name, worker.num_cpus, worker.num_gpus, worker.resources) == (
        "rollout worker 0",
        2.0,
        0.5,
        {"rollout_node": 1.0},
    )
    assert (rank.name, rank.num_cpus, rank.num_gpus) == ("learner rank 0", 3.0, 0.5)
    assert {(a.group, a.bundle) for a in plan.actors} == {(SHARED_GPU, 0)}


def test_a_colocated_vllm_run_reserves_one_gpu_and_both_actors_land_on_it() -> None:
    plan = run_placement(_config())
    assert [a.name for a in plan.actors] == ["rollout worker 0", "judge pool", "learner rank 0"]
    assert total_resources(plan) == (5.0, 1.0)
    placed = {p.actor.name: (p.node, p.gpus) for p in assign_nodes(plan, gpus_per_node=1)}
    assert placed["rollout worker 0"] == placed["learner rank 0"] == (0, (0,))


def test_a_separate_run_of_the_same_sections_needs_a_gpu_more() -> None:
    """What colocation saves: the same sections, placed separately, ask for two devices."""
    cfg = _config().model_copy(update={"pipeline": _config().pipeline.model_copy(update={"placement": "separate"})})
    cfg = cfg.model_copy(update={"rollout": cfg.rollout.model_copy(update={"num_gpus_per_worker": 1.0})})
    assert total_resources(run_placement(cfg)) == (5.0, 2.0)


def test_colocated_hf_generation_has_no_rollout_worker_actor() -> None:
    plan = run_placement(_config("hf"))
    assert [a.name for a in plan.actors] == ["judge pool", "learner rank 0"] and not plan.groups
    assert total_resources(plan) == (3.0, 1.0)


@pytest.fixture(scope="module")
def one_node_of_two_gpus() -> Iterator[None]:
    """One Ray node declaring 2 GPUs: with two, landing on the same one is not a matter of course."""
    from ray.cluster_utils import Cluster

    here, root = Path(__file__).resolve().parent, Path(__file__).resolve().parents[2]
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(here), str(root), before or ""])  # the stand-ins, for the node
    try:
        cluster = Cluster(
            initialize_head=True, head_node_args={"num_cpus": 6, "num_gpus": 2, "include_dashboard": False}
        )
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = before
    ray.init(address=cluster.address)
    yield
    ray.shutdown()
    cluster.shutdown()


def test_ray_gives_the_worker_and_the_learner_the_same_gpu(one_node_of_two_gpus: None) -> None:
    cfg = _config()
    group, worker_options, learner_options = shared_gpu_options(cfg.learner, cfg.rollout)
    assert worker_options["num_gpus"] == learner_options["num_gpus"] == COLOCATED_GPU_SHARE
    actors = [ray.remote(Shard).options(**options).remote() for options in (worker_options, learner_options)]
    seen = ray.get([a.where.remote() for a in actors], timeout=START_TIMEOUT_S)
    assert seen[0]["gpus"] == seen[1]["gpus"] and len(seen[0]["gpus"]) == 1
    assert seen[0]["cuda_visible"] == seen[1]["cuda_visible"] == seen[0]["gpus"][0]
    assert ray.available_resources().get("GPU", 0.0) == 1.0  # the group holds one of the two
    for a in actors:
        ray.kill(a)
    ray.util.remove_placement_group(group)
