"""A colocated vLLM engine on the learner's GPU, end to end on CPU: a Ray node that declares one GPU
(vLLM's CPU build and the torch learner run on the CPU; Ray only schedules the GPU) takes the run's
engine worker and learner rank in one bundle of that GPU, half each, and the run trains every step.
Sleep mode needs CUDA and is not run here (``tests/actors/test_vllm_sleep.py`` records its calls)."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
from run_procs import check_complete

from ray_jobs.config.experiment import load_config
from ray_jobs.train import run

pytest.importorskip("vllm")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def one_gpu_node():
    """A local Ray of 8 CPUs and one declared GPU (no device behind it)."""
    ray.init(address="local", num_cpus=8, num_gpus=1, include_dashboard=False)
    yield
    ray.shutdown()


def test_the_engine_and_the_learner_share_the_one_gpu_and_every_step_trains(
    tmp_path: Path, tiny_model_config, one_gpu_node, monkeypatch
) -> None:
    monkeypatch.setenv("RELAY_JUDGE_API_KEY", "sk-test")
    out = tmp_path / "run"
    overrides = [f"run.output_dir={out}", f"model.cache_dir={tiny_model_config.cache_dir}", "wandb.mode=disabled"]
    overrides += ["run.steps=4", "rollout.backend=vllm", "pipeline.placement=colocated", "learner.num_gpus=1"]
    run(load_config(None, [*overrides, "pipeline.max_staleness=1"]))
    metrics, _ = check_complete(out, 4, 8 * 4)
    assert max(m["staleness/max"] for m in metrics) == 1
    groups = [g for g in ray.util.placement_group_table().values() if g["strategy"] == "STRICT_PACK"]
    assert [g["bundles"][0]["GPU"] for g in groups] == [1.0]  # one bundle of the one GPU
