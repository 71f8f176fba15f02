"""LearnerGroup: the learner as one Ray actor, or as a data-parallel DeepSpeed group of ranks.

The key check is numerical: two DeepSpeed ranks over gloo (ZeRO-2 and ZeRO-3,
fp32) started through ``LearnerGroup`` on local Ray must give, after two
``train`` calls, the weights and metrics one plain-torch process gives on the
same batches. The batches are chosen so every sharding path runs:

* 9 rows, ``num_minibatches=2`` -> minibatches of rows 0-3 and 4-8 (``split_rows``:
  9 * 1 // 2 = 4). With micro_batch_size 2, minibatch 4-8 (5 rows) is shared
  2 + 3 (rows 4-5 | 6-8): rank 0 has one micro-batch, rank 1 two, so rank 0
  adds a padding backward. One process cuts it into 4-5, 6-7, 8: the same
  micro-batches, so even the row-weighted per-micro-batch statistics (clip
  fractions, entropy) must agree.
* ``rollout_correction="truncate"`` with two optimiser steps needs proximal
  log-probs and ``beta=0.1`` reference log-probs: no-gradient forwards over
  all 9 rows, shared 4 + 5 (2 and 3 micro-batches: one padding forward on
  rank 0), then summed across ranks.
* Sampling log-probs are the initial model's plus noise, so ratios leave the
  clip range and the clip/IS statistics are not all zero.

The model is the built-in tiny one with hidden size 128 (random weights): its
embedding (1024 x 128 elements) is above ZeRO-3's persistence threshold, so
under ZeRO-3 each rank really holds only a partition of it and the exported
weights really need the collective gather.

Ray actors get ``TORCH_EXTENSIONS_DIR`` (and ``PATH``, for ninja) through the
job's runtime env, so they reuse DeepSpeed's compiled comm op; Ray merges those
job ``env_vars`` with each rank's own (checked: the driver's ``ray_session``
relies on it for ``PYTHONPATH``).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(_REPO / ".cache" / "torch_extensions"))
if shutil.which("ninja") is None:  # DeepSpeed compiles its comm op with the venv's ninja
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

import ray  # noqa: E402
import torch  # noqa: E402

from actors.learner.learner import Learner, LearnerConfig  # noqa: E402
from actors.messages import TrainBatch, TrainResult  # noqa: E402
from actors.model.loading import ModelConfig, TinyModelConfig, load_causal_lm, resolve_model_path  # noqa: E402
from algorithms.config import AlgorithmConfig  # noqa: E402
from ray_jobs.runtime.learner_group import LearnerGroup, LearnerPlacementError, local_ranks, rank_env  # noqa: E402

ALGORITHM = AlgorithmConfig(beta=0.1, num_minibatches=2, rollout_correction="truncate", epsilon=0.02, epsilon_high=0.02)
WEIGHT_ATOL = 1e-5
EXACT_METRICS = ("clip/frac", "clip/low_frac", "clip/high_frac", "is/clipped_frac", "optim/steps")
CLOSE_METRICS = ("loss", "kl", "entropy", "ratio/mean", "is/ratio_mean", "is/ratio_max", "logprob_gap/mean_abs")


def test_local_ranks_by_hand() -> None:
    # CPU: the index among earlier ranks on the same node.
    assert local_ranks(["a", "a", "b", "a", "b"], gpus=False) == [0, 1, 0, 2, 1]
    assert local_ranks(["a", "a"], gpus=False) == [0, 1]
    # GPU: Ray shows each rank only its own GPU, as cuda:0.
    assert local_ranks(["a", "a", "b"], gpus=True) == [0, 0, 0]


def test_rank_env_and_reserved_resources() -> None:
    assert rank_env(1, 4, 0, "10.0.0.7", 29511) == {
        "RANK": "1",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "4",
        "MASTER_ADDR": "10.0.0.7",
        "MASTER_PORT": "29511",
    }
    assert LearnerGroup.resources(LearnerConfig(num_cpus=2)) == (2.0, 0.0)
    assert LearnerGroup.resources(LearnerConfig(backend="deepspeed", world_size=4, num_cpus=1.5, num_gpus=1)) == (
        6.0,
        4.0,
    )


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    env = {
        "TORCH_EXTENSIONS_DIR": os.environ["TORCH_EXTENSIONS_DIR"],
        "PATH": os.environ["PATH"],
        "RELAY_TEST_JOB_ENV": "kept",
    }  # only in the job's runtime env: must survive the ranks' own env_vars
    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model_config(tiny_model_config: ModelConfig) -> ModelConfig:
    config = ModelConfig(cache_dir=tiny_model_config.cache_dir, tiny=TinyModelConfig(hidden_size=128, warmup_steps=0))
    resolve_model_path(config)
    return config


@pytest.fixture(scope="module")
def batches(model_config: ModelConfig, make_train_batch) -> list[TrainBatch]:
    model = load_causal_lm(resolve_model_path(model_config), "float32")
    return [make_train_batch(s, 9, model, seed=100 + s, noise=0.5) for s in (0, 1)]


def _config(**changes: object) -> LearnerConfig:
    return LearnerConfig(**{"lr": 1e-3, "micro_batch_size": 2, **changes})


@pytest.fixture(scope="module")
def one_process(model_config: ModelConfig, batches: list[TrainBatch]) -> tuple[list[TrainResult], dict]:
    """The plain-torch learner in this process: its results and final weights."""
    learner = Learner(_config(), model_config, ALGORITHM, temperature=1.0)
    results = [learner.train(b) for b in batches]
    return results, learner.backend.full_state_dict()


def _max_abs_diff(update_tensors: dict, weights: dict[str, torch.Tensor]) -> float:
    assert update_tensors.keys() == weights.keys()
    return max(float((torch.tensor(update_tensors[k]) - weights[k]).abs().max()) for k in weights)


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_unplaceable_group_fails_early_and_releases_its_reservation(model_config: ModelConfig) -> None:
    config = LearnerConfig(backend="deepspeed", world_size=3, num_cpus=1)  # 3 CPUs on a 2-CPU cluster
    with pytest.raises(LearnerPlacementError, match=r"could not place the learner's 3 ranks of \{'CPU': 1.0\}"):
        LearnerGroup(config, model_config, ALGORITHM, 1.0, 0, None, placement_timeout_s=1)
    states = {pg["state"] for pg in ray.util.placement_group_table().values()}
    assert states <= {"REMOVED"}


@pytest.fixture
def first_start_told_a_taken_port(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, list[str]]]:
    """The next group's first start is told a port a listening socket holds, as when another
    process takes the probed port before rank 0 listens on it (seen in CI: EADDRINUSE).
    (the held port, the MASTER_PORT each start was told)."""
    probe = LearnerGroup._rank_envs
    told: list[str] = []
    with socket.socket() as held:
        held.bind(("", 0))
        held.listen()
        taken = held.getsockname()[1]

        def rank_envs(self: LearnerGroup) -> list[dict[str, str]]:
            envs = probe(self)
            if not told:
                envs = [{**env, "MASTER_PORT": str(taken)} for env in envs]
            told.append(envs[0]["MASTER_PORT"])
            return envs

        monkeypatch.setattr(LearnerGroup, "_rank_envs", rank_envs)
        yield taken, told


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_two_ranks_match_one_process(
    model_config: ModelConfig,
    batches: list[TrainBatch],
    one_process: tuple[list[TrainResult], dict],
    tmp_path: Path,
    first_start_told_a_taken_port: tuple[int, list[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two ZeRO-3 ranks end with one torch process's results and weights. ZeRO-3 only: the group's
    code is the same for every stage, and ZeRO-3 is the one whose export must gather partitioned
    weights; two ZeRO-2 ranks train end to end in test_train_scaleout_e2e.py (their rollout's
    log-probs equal theirs on on-policy steps), and one is checked step for step against torch in
    tests/actors/test_learner_deepspeed.py.

    The group's first start is told a taken port: rank 0 fails to listen, and every rank starts
    again on a newly probed port; the group that trains is the second."""
    want, want_weights = one_process
    taken, told = first_start_told_a_taken_port
    with caplog.at_level(logging.WARNING, logger="ray_jobs.runtime.learner_group"):
        group = LearnerGroup(
            _config(backend="deepspeed", zero_stage=3, world_size=2), model_config, ALGORITHM, 1.0, 0, None
        )
    assert f"MASTER_PORT={taken} was taken before rank 0 listened on it" in caplog.text
    assert told[0] == str(taken) and len(told) == 2 and told[1] != str(taken)
    try:
        assert group.placement_group is not None and len(group.ranks) == 2
        got = [group.train(b) for b in batches]
        update = ray.get(group.export_weights())
        exports = ray.get([rank.export_weights.remote() for rank in group.ranks])  # collective: every rank
        facts = ray.get(
            [
                rank.__ray_call__.remote(
                    lambda learner: (
                        {
                            k: os.environ[k]
                            for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT", "RELAY_TEST_JOB_ENV")
                        },
                        learner.rank,
                        learner.world_size,
                        learner.backend.module.get_input_embeddings().weight.numel(),
                    )
                )
                for rank in group.ranks
            ]
        )
        group.save(str(tmp_path))
    finally:
        group.kill()

    assert [(env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"]) for env, *_ in facts] == [
        ("0", "0", "2"),
        ("1", "1", "2"),
    ]
    assert facts[0][0]["MASTER_PORT"] == facts[1][0]["MASTER_PORT"] == told[1]
    assert [env["RELAY_TEST_JOB_ENV"] for env, *_ in facts] == ["kept", "kept"]  # Ray merges env_vars
    assert [(rank, size) for _, rank, size, _ in facts] == [(0, 2), (1, 2)]
    # each rank holds only its partition of the embedding: the export had to gather
    assert [numel for *_, numel in facts] == [0, 0]
    assert update.version == 2 and exports[0].tensors.keys() == update.tensors.keys() and exports[1].tensors == {}

    assert any(r.metrics["clip/frac"] > 0 for r in want) and any(r.metrics["is/clipped_frac"] > 0 for r in want)
    for step, (g, w) in enumerate(zip(got, want)):
        assert g.policy_version == w.policy_version == step + 1
        for key in EXACT_METRICS:
            assert g.metrics[key] == pytest.approx(w.metrics[key], abs=1e-9), (step, key)
        for key in CLOSE_METRICS:
            assert g.metrics[key] == pytest.approx(w.metrics[key], rel=1e-5, abs=1e-7), (step, key)
        assert g.metrics["grad_norm"] == pytest.approx(w.metrics["grad_norm"], rel=1e-4)
    assert _max_abs_diff(update.tensors, want_weights) < WEIGHT_ATOL
    saved = load_causal_lm(str(tmp_path), "float32").state_dict()
    assert max(float((saved[k] - torch.tensor(update.tensors[k])).abs().max()) for k in update.tensors) == 0


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_one_rank_is_a_plain_actor(
    model_config: ModelConfig, batches: list[TrainBatch], one_process: tuple[list[TrainResult], dict]
) -> None:
    want, want_weights = one_process
    group = LearnerGroup(_config(), model_config, ALGORITHM, 1.0, 0, None)
    try:
        assert group.placement_group is None and len(group.ranks) == 1
        env = ray.get(group.ranks[0].__ray_call__.remote(lambda learner: os.environ.get("RANK")))
        got = [group.train(b) for b in batches]
        update = ray.get(group.export_weights())
    finally:
        group.kill()
    assert env is None  # no launcher variables for a single rank
    assert [r.metrics["loss"] for r in got] == [r.metrics["loss"] for r in want]  # the same code, bit for bit
    assert _max_abs_diff(update.tensors, want_weights) == 0
