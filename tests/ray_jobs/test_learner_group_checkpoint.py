"""A two-rank ZeRO-3 learner group saves its sharded state and a new group resumes it exactly.

Group A trains step 1, ``save_checkpoint``s (each rank writes its own ZeRO-3
shard: model states and optimiser partition) and trains steps 2 and 3. Group
B, new actors in a new process group, ``load_checkpoint``s and trains steps 2
and 3: the same metrics and exported weights after each. A linear decay over
4 steps makes the restored scheduler matter (lr 1e-3, 0.75e-3, 0.5e-3: a
scheduler restarted at step 0 would give step 3 the lr 0.75e-3).

The model is the tiny one with hidden size 128 and random weights (as in
``test_learner_group.py``): its embedding is above ZeRO-3's persistence
threshold, so each rank really holds (and saves) only a partition of it.
Tolerance 1e-6: the resumed step is the same engine code on the same
restored fp32 partitions; a lost moment or scheduler state moves weights by
about lr = 1e-3.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(_REPO / ".cache" / "torch_extensions"))
if shutil.which("ninja") is None:  # DeepSpeed compiles its comm op with the venv's ninja
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

import numpy as np  # noqa: E402
import ray  # noqa: E402

from actors.learner.learner import LearnerConfig  # noqa: E402
from actors.learner.state import MANIFEST  # noqa: E402
from actors.messages import TrainBatch, TrainResult  # noqa: E402
from actors.model.loading import ModelConfig, TinyModelConfig, load_causal_lm, resolve_model_path  # noqa: E402
from algorithms.config import AlgorithmConfig  # noqa: E402
from ray_jobs.runtime.learner_group import LearnerGroup  # noqa: E402

ATOL = 1e-6  # see the module docstring
CONFIG = LearnerConfig(
    backend="deepspeed", zero_stage=3, world_size=2, lr=1e-3, micro_batch_size=2, lr_scheduler="linear"
)
TOTAL_STEPS = 4


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    env = {"TORCH_EXTENSIONS_DIR": os.environ["TORCH_EXTENSIONS_DIR"], "PATH": os.environ["PATH"]}
    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model_config(tiny_model_config: ModelConfig) -> ModelConfig:
    config = ModelConfig(cache_dir=tiny_model_config.cache_dir, tiny=TinyModelConfig(hidden_size=128, warmup_steps=0))
    resolve_model_path(config)
    return config


def _group(model_config: ModelConfig) -> LearnerGroup:
    return LearnerGroup(CONFIG, model_config, AlgorithmConfig(), 1.0, 0, None, total_steps=TOTAL_STEPS)


def _step(group: LearnerGroup, batch: TrainBatch) -> tuple[TrainResult, dict[str, np.ndarray]]:
    result = group.train(batch)
    return result, ray.get(group.export_weights()).tensors


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_two_rank_zero3_group_resumes_exactly(model_config: ModelConfig, make_train_batch, tmp_path: Path) -> None:
    model = load_causal_lm(resolve_model_path(model_config), "float32")
    batches = [make_train_batch(step, 5, model, seed=200 + step, noise=0.3) for step in (0, 1, 2)]
    path = str(tmp_path / "ckpt")

    first = _group(model_config)
    try:
        first.train(batches[0])
        info = first.save_checkpoint(path)
        want = [_step(first, b) for b in batches[1:]]
    finally:
        first.kill()
    second = _group(model_config)
    try:
        assert second.load_checkpoint(path) == 1
        got = [_step(second, b) for b in batches[1:]]
    finally:
        second.kill()

    shards = os.listdir(Path(path, "deepspeed"))
    for rank in (0, 1):  # every rank wrote its own model-state and optimiser shards
        assert {
            f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt",
            f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt",
        } <= set(shards)
    assert MANIFEST in os.listdir(path) and info["bytes"] > 0 and info["seconds"] > 0
    assert [result.metrics["lr"] for result, _ in want] == pytest.approx([0.75e-3, 0.5e-3], rel=1e-12)
    for step, ((g, g_weights), (w, w_weights)) in enumerate(zip(got, want), start=2):
        assert g.policy_version == w.policy_version == step
        for key in ("loss", "grad_norm", "lr", "entropy", "clip/frac"):
            assert abs(g.metrics[key] - w.metrics[key]) <= ATOL, (step, key)
        assert g_weights.keys() == w_weights.keys()
        assert max(float(np.abs(g_weights[k] - w_weights[k]).max()) for k in w_weights) <= ATOL, step
