"""The DeepSpeed backend's settings without an engine: the DeepSpeed config it
builds from the learner's."""

from __future__ import annotations

import pytest

from actors.learner.config import LearnerConfig
from actors.learner.deepspeed_backend import deepspeed_config


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


def test_deepspeed_config_offloads_the_optimizer_with_torch_adamw() -> None:
    cfg = deepspeed_config(LearnerConfig(backend="deepspeed", zero_stage=3, offload_optimizer=True), "float32")
    assert cfg["zero_optimization"] == {"stage": 3, "offload_optimizer": {"device": "cpu"}}
    assert cfg["optimizer"]["params"]["torch_adam"] is True
    assert cfg["zero_force_ds_cpu_optimizer"] is False  # else DeepSpeed demands its compiled CPUAdam
    assert "zero_force_ds_cpu_optimizer" not in deepspeed_config(LearnerConfig(backend="deepspeed"), "float32")
