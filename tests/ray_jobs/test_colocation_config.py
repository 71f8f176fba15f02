"""``pipeline.placement: colocated``: what it resolves to, and a one-line error, when the config
loads, for each layout where generation cannot share the learner's device."""

from __future__ import annotations

import pytest

from ray_jobs.config.experiment import ConfigError, load_config


def test_auto_is_separate_and_colocated_is_chosen_by_name() -> None:
    assert not load_config(None).colocated
    assert load_config(None, ["pipeline.placement=colocated"]).colocated


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        (["learner.world_size=2", "learner.backend=deepspeed"], "needs learner.world_size 1 (got 2)"),
        (["rollout.num_workers=2"], "needs rollout.num_workers 1 (got 2)"),
        (["rollout.backend=vllm"], "with rollout.backend vllm needs a GPU (learner.num_gpus: 1)"),
        (["learner.backend=deepspeed"], "with rollout.backend hf needs learner.backend torch"),
    ],
)
def test_a_layout_that_cannot_share_the_device_is_a_one_line_error(overrides: list[str], why: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["pipeline.placement=colocated", *overrides])
    message = str(err.value)
    assert f"pipeline.placement: colocated {why}" in message and "\n" not in message
