"""Config checks of a vLLM engine on the learner's GPU and of its sleep mode
(ray_jobs/config/shared_engine.py): one line each, before anything starts."""

from __future__ import annotations

import pytest

from ray_jobs.config.experiment import ConfigError, load_config

COLOCATED_VLLM = ["pipeline.placement=colocated", "rollout.backend=vllm", "learner.num_gpus=1"]


@pytest.mark.parametrize("level", [1, 2])
def test_a_colocated_engine_may_sleep(level: int) -> None:
    cfg = load_config(None, [*COLOCATED_VLLM, f"rollout.vllm.sleep_level={level}"])
    assert cfg.colocated and cfg.rollout.vllm.sleep_level == level


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["rollout.vllm.sleep_level=1"], "needs rollout.backend: vllm"),
        (["rollout.backend=vllm", "rollout.vllm.sleep_level=1"], "needs pipeline.placement: colocated"),
        (
            [*COLOCATED_VLLM, "rollout.vllm.sleep_level=2", "learner.lora.enabled=true"],
            "sleep_level 2 drops the engine's weights",
        ),
        (
            [*COLOCATED_VLLM, "weight_sync.transport=broadcast"],
            "NCCL refuses two ranks on one device",
        ),
        (
            [*COLOCATED_VLLM, "rollout.vllm.tensor_parallel_size=2", "rollout.num_gpus_per_worker=2"],
            "tensor_parallel_size 1",
        ),
    ],
)
def test_settings_that_cannot_work_are_one_line_errors(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as raised:
        load_config(None, overrides)
    assert len(str(raised.value).strip().splitlines()) == 1


def test_level_1_keeps_lora_base_weights_so_adapter_sync_may_sleep() -> None:
    cfg = load_config(None, [*COLOCATED_VLLM, "rollout.vllm.sleep_level=1", "learner.lora.enabled=true"])
    assert cfg.adapter_sync and cfg.rollout.vllm.sleep_level == 1
