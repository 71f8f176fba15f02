"""The DeepSpeed backend's settings without an engine: the DeepSpeed config it
builds from the learner's, and the one-process launch environment it fills in."""

from __future__ import annotations

import os

import pytest

from actors.learner_config import LearnerConfig
from actors.learner_deepspeed import deepspeed_config, ensure_distributed_env

_DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def test_deepspeed_config_maps_learner_settings() -> None:
    learner = LearnerConfig(
        backend="deepspeed",
        zero_stage=3,
        lr=2e-5,
        betas=(0.8, 0.95),
        weight_decay=0.1,
        max_grad_norm=0.5,
        micro_batch_size=7,
    )
    cfg = deepspeed_config(learner, "bfloat16")
    assert cfg["zero_optimization"] == {"stage": 3}
    assert cfg["optimizer"] == {
        "type": "AdamW",
        "params": {"torch_adam": True, "lr": 2e-5, "betas": [0.8, 0.95], "weight_decay": 0.1},
    }
    assert cfg["gradient_clipping"] == 0.5
    assert cfg["bf16"] == {"enabled": True}
    # Accumulation is ours: DeepSpeed neither counts micro-batches nor rescales the loss.
    assert cfg["train_micro_batch_size_per_gpu"] == 1
    assert cfg["gradient_accumulation_steps"] == 1
    assert cfg["managed_gradient_accumulation"] is False
    assert cfg["steps_per_print"] >= 2**31 - 1 and cfg["wall_clock_breakdown"] is False
    assert deepspeed_config(LearnerConfig(), "float32")["bf16"] == {"enabled": False}
    assert deepspeed_config(LearnerConfig(), "float32")["zero_optimization"] == {"stage": 2}
    with pytest.raises(ValueError, match="float16"):
        deepspeed_config(learner, "float16")
    # buckets no bigger than the model: DeepSpeed allocates each whole (2 GB of fp32 by default)
    assert deepspeed_config(LearnerConfig(), "float32", num_params=1000)["zero_optimization"] == {
        "stage": 2,
        "reduce_bucket_size": 1000,
        "allgather_bucket_size": 1000,
    }
    assert deepspeed_config(learner, "float32", num_params=1000)["zero_optimization"] == {
        "stage": 3,
        "reduce_bucket_size": 1000,
        "stage3_prefetch_bucket_size": 1000,
    }
    assert deepspeed_config(learner, "float32", num_params=10**9)["zero_optimization"] == {"stage": 3}


def test_ensure_distributed_env_fills_a_one_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _DIST_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MASTER_PORT", "29999")  # set by someone else: kept
    ensure_distributed_env()
    assert {name: os.environ[name] for name in _DIST_VARS} == {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29999",
    }
    monkeypatch.delenv("MASTER_PORT")
    ensure_distributed_env()
    assert 0 < int(os.environ["MASTER_PORT"]) < 65536


def test_ensure_distributed_env_refuses_to_guess_for_several_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _DIST_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(RuntimeError, match="LOCAL_RANK, MASTER_ADDR, MASTER_PORT"):
        ensure_distributed_env()
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(RuntimeError, match="RANK=1"):
        ensure_distributed_env()


def test_deepspeed_config_offloads_the_optimizer_with_torch_adamw() -> None:
    cfg = deepspeed_config(LearnerConfig(backend="deepspeed", zero_stage=3, offload_optimizer=True), "float32")
    assert cfg["zero_optimization"] == {"stage": 3, "offload_optimizer": {"device": "cpu"}}
    assert cfg["optimizer"]["params"]["torch_adam"] is True
    assert cfg["zero_force_ds_cpu_optimizer"] is False  # else DeepSpeed demands its compiled CPUAdam
    assert "zero_force_ds_cpu_optimizer" not in deepspeed_config(LearnerConfig(backend="deepspeed"), "float32")
