"""A two-rank DeepSpeed ZeRO-3 SFT step (through ``LearnerGroup`` on local Ray, gloo) equals one process.

7 rows in micro-batches of 2 are shared 3 + 4 between the ranks (2 micro-batches each, the
last of rank 0 a single row), so shares, unequal micro-batches and the global token
normaliser all run. The model is the tiny one with hidden size 128 (random weights), whose
embedding ZeRO-3 really partitions. Tolerances: the loss and token counts are sums of the same
float32 terms in another order (1e-6); the weights after one AdamW step differ by what that
order changes in near-zero gradients, which Adam's normalisation magnifies (5e-5 at lr 1e-3).
Evaluation and sequence scoring over the same rows must agree too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

pytest.importorskip("deepspeed")

import ray  # noqa: E402
import torch  # noqa: E402

from actors.learner.learner import Learner, LearnerConfig  # noqa: E402
from actors.learner.sequence_objectives import SequenceObjective  # noqa: E402
from actors.messages import SequenceBatch  # noqa: E402
from actors.model.loading import ModelConfig, TinyModelConfig, resolve_model_path  # noqa: E402
from algorithms.config import AlgorithmConfig  # noqa: E402
from ray_jobs.runtime.learner_group import LearnerGroup  # noqa: E402

pytestmark = pytest.mark.slow
SFT = SequenceObjective(name="sft")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    env = {"TORCH_EXTENSIONS_DIR": os.environ["TORCH_EXTENSIONS_DIR"], "PATH": os.environ["PATH"]}
    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env})
    yield
    ray.shutdown()


def _batch(step: int) -> SequenceBatch:
    g = torch.Generator().manual_seed(10 + step)
    ids = [torch.randint(3, 1000, (int(n),), generator=g).tolist() for n in (9, 6, 12, 7, 8, 10, 5)]
    return SequenceBatch(step, ids, [[0] * 3 + [1] * (len(s) - 3) for s in ids])


def test_two_rank_zero3_sft_step_equals_one_process(local_ray, tiny_model_config) -> None:
    model = ModelConfig(cache_dir=tiny_model_config.cache_dir, tiny=TinyModelConfig(hidden_size=128, warmup_steps=0))
    resolve_model_path(model)
    config = {"lr": 1e-3, "micro_batch_size": 2}
    one = Learner(LearnerConfig(**config), model, AlgorithmConfig(), 1.0, objective=SFT)
    group = LearnerGroup(
        LearnerConfig(backend="deepspeed", zero_stage=3, world_size=2, **config),
        model,
        AlgorithmConfig(),
        1.0,
        0,
        None,
        objective=SFT,
    )
    try:
        want, got = one.train_sequences(_batch(0)), group.train_sequences(_batch(0))
        want_eval, got_eval = one.evaluate_sequences(_batch(1)), group.evaluate_sequences(_batch(1))
        want_scores, got_scores = one.score_sequences(_batch(1)), group.score_sequences(_batch(1))
        weights = ray.get(group.export_weights()).tensors
    finally:
        group.kill()
    assert got.policy_version == want.policy_version == 1
    assert got.metrics["loss"] == pytest.approx(want.metrics["loss"], rel=1e-6)
    assert got.metrics["tokens/targets"] == want.metrics["tokens/targets"] == 36
    assert got.metrics["grad_norm"] == pytest.approx(want.metrics["grad_norm"], rel=1e-5)
    assert got_eval["eval/loss"] == pytest.approx(want_eval["eval/loss"], rel=1e-6)
    assert [s["logp_sum"] for s in got_scores] == pytest.approx([s["logp_sum"] for s in want_scores], rel=1e-5)
    expected = one.backend.full_state_dict()
    assert weights.keys() == expected.keys()
    assert max(float((torch.as_tensor(weights[k]) - expected[k]).abs().max()) for k in expected) < 5e-5
