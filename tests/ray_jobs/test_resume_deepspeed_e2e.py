"""Kill a run whose learner is two DeepSpeed ZeRO-3 ranks with LoRA that broadcast merged weights to the
rollout worker over gloo (the driver's whole process group, SIGKILL, at a random step), re-run the same
command, and get every step and the final adapter; the rollout worker's weights equal the learner's on
every on-policy batch, before the kill and after the resume."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from run_procs import check_complete, kill_and_resume

pytestmark = pytest.mark.slow

SAMPLES_PER_STEP = 8 * 4  # prompts_per_step x group_size


def test_sigkill_deepspeed_two_ranks_zero3_lora(tmp_path: Path, tiny_model_config) -> None:
    steps = 10
    kill_at = random.randint(4, 8)
    print(f"killing at step {kill_at}")
    out = tmp_path / "run"
    kill_and_resume(
        out,
        tiny_model_config.cache_dir,
        [kill_at],
        f"run.steps={steps}",
        "run.checkpoint_every=3",
        "rollout.backend=hf",
        "learner.backend=deepspeed",
        "learner.world_size=2",
        "learner.zero_stage=3",
        "learner.lora.enabled=true",
        "pipeline.max_staleness=1",
        "weight_sync.transport=broadcast",
        "weight_sync.payload=full",
    )
    metrics, _ = check_complete(out, steps, SAMPLES_PER_STEP)
    on_policy = [m for m in metrics if m["staleness/max"] == 0]  # step 0 and the resumed checkpoint's step
    assert len(on_policy) >= 2 and all(m["logprob_gap/mean_abs"] < 1e-3 for m in on_policy), metrics
    assert (out / "final" / "adapter_config.json").exists()
