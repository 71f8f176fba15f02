"""Several nodes (ray.cluster_utils.Cluster on this machine): the rollout worker on one node,
the learner on another; the rollout worker's node is removed mid-run and the run completes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import ray
from run_procs import check_complete

from ray_jobs.config.experiment import load_config
from ray_jobs.rl.actor_start import ROLLOUT_WORKER_NAME
from ray_jobs.train import run

pytestmark = pytest.mark.slow


def _node_of(name: str) -> str:
    return ray.get(ray.get_actor(name).__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id()))


def test_removing_the_rollout_workers_node_mid_run(tmp_path: Path, tiny_model_config, monkeypatch) -> None:
    from ray.cluster_utils import Cluster

    # head: the driver's side and the learner (its only CPU); two nodes that advertise rollout_node
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    rollout_nodes = [cluster.add_node(num_cpus=0, resources={"rollout_node": 1}) for _ in range(2)]
    cluster.wait_for_nodes()
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    monkeypatch.setenv("RELAY_JUDGE_API_KEY", "sk-test")
    out = tmp_path / "run"
    seen: dict[str, str] = {}

    def remove_rollout_node() -> None:
        metrics = out / "metrics.jsonl"
        while not metrics.exists() or len(metrics.read_text().splitlines()) < 4:
            time.sleep(0.05)
        names = [
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(ROLLOUT_WORKER_NAME)
        ]
        seen["before"] = _node_of(names[0])
        seen["learner"] = ray.get_runtime_context().get_node_id()  # the driver shares the head with the learner
        node = next(n for n in rollout_nodes if n.node_id == seen["before"])
        cluster.remove_node(node)
        seen["name"] = names[0]

    try:
        remover = threading.Thread(target=remove_rollout_node, daemon=True)
        remover.start()
        run(
            load_config(
                None,
                [
                    f"run.output_dir={out}",
                    f"model.cache_dir={tiny_model_config.cache_dir}",
                    "wandb.mode=disabled",
                    "run.steps=10",
                    "run.checkpoint_every=0",
                    "rollout.num_cpus_per_worker=0",
                    "rollout.resources={rollout_node: 1}",
                ],
            )
        )
        remover.join(timeout=5)
    finally:
        cluster.shutdown()
    metrics, _ = check_complete(out, 10, 8 * 4)
    assert seen["before"] in {n.node_id for n in rollout_nodes} and seen["before"] != seen["learner"]
    assert metrics[-1]["faults/rollout_restarts"] == 1 and metrics[-1]["faults/calls_resent"] >= 1
