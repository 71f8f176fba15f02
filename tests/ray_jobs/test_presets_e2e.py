"""Every algorithm preset trains end to end on CPU: 2 steps each, all in one Ray session.

The module starts Ray and the local judge once; each preset gets its own actors
(``ActorSet``) and run directory and goes through the real driver loop
(``train_loop``). DAPO runs with a reward that is constant for about half of the
prompts, so that dynamic sampling has groups to drop and refills to make.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from algorithms.presets import PRESETS
from ray_jobs.config.experiment import ExperimentConfig, load_config, redacted
from ray_jobs.data.prompts import PromptSource
from ray_jobs.runtime.control import GracefulStop, RunControl
from ray_jobs.runtime.placement import run_placement, total_resources
from ray_jobs.runtime.ray_session import ray_session
from ray_jobs.runtime.tracking import RunRecorder
from ray_jobs.train import judge_endpoint, preflight, train_loop

pytestmark = pytest.mark.slow

STEPS = 2
COMMON_METRICS = {
    "loss",
    "grad_norm",
    "entropy",
    "clip/frac",
    "clip/low_frac",
    "clip/high_frac",
    "is/ratio_mean",
    "is/ratio_max",
    "is/clipped_frac",
    "logprob_gap/mean_abs",
    "optim/steps",
    "reward/mean",
    "reward/frac_zero_std",
    "completion/length_mean",
    "completion/length_max",
    "completion/truncated_frac",
    "staleness/max",
}
PRESET_METRICS = {
    "rloo": {"kl"},
    "reinforce_pp": {"kl"},
    "dapo": {
        "dynamic_sampling/refill_rounds",
        "dynamic_sampling/refill_prompts",
        "dynamic_sampling/exhausted",
        "dynamic_sampling/dropped_groups",
        "dynamic_sampling/kept_groups",
        "samples/overlong_filtered",
        "reward/overlong_penalty",
    },
}


def half_constant_reward(prompt: str, completion: str) -> float:
    """0.5 for about half of the prompts (no signal in their groups), else varies with the completion."""
    if int(hashlib.md5(prompt.encode()).hexdigest(), 16) % 2:
        return 0.5
    return int(hashlib.md5(completion.encode()).hexdigest(), 16) % 1000 / 1000


@pytest.fixture(scope="module")
def session(tiny_model_config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """One Ray instance and one local judge for every preset."""
    cfg = load_config(
        None,
        [
            f"model.cache_dir={tiny_model_config.cache_dir}",
            "wandb.mode=disabled",
            f"run.steps={STEPS}",
            "run.save_final=false",
            "pipeline.max_staleness=1",
        ],
    )
    prompts, tokenizer = preflight(cfg)
    with (
        judge_endpoint(cfg, tmp_path_factory.mktemp("judge")) as (cfg, key),
        ray_session(*total_resources(run_placement(cfg))),
    ):
        yield cfg, key, prompts, tokenizer


def _train(session: tuple, preset: str, out: Path) -> list[dict]:
    from ray_jobs.rl.actor_set import ActorSet

    base, key, prompts, tokenizer = session
    raw = base.model_dump()
    raw["algorithm"] = {"name": preset}
    raw["run"]["output_dir"] = str(out)
    if preset == "dapo":
        raw["reward"] = {"terms": [{"name": "tests.ray_jobs.test_presets_e2e:half_constant_reward", "weight": 1.0}]}
    cfg = ExperimentConfig.model_validate(raw)
    stages = ActorSet(cfg, key)
    try:
        with contextlib.closing(RunRecorder(out, redacted(cfg), cfg.wandb, cfg.run.name, cfg.run.steps)) as rec:
            control = RunControl(cfg.run, out, redacted(cfg), GracefulStop(), rec.wandb_id, tokenizer)
            try:
                train_loop(stages, cfg, PromptSource(prompts, cfg.data.shuffle, cfg.run.seed), rec, control, 0, {})
            finally:
                control.stop.restore()
    finally:
        stages.close()
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_trains_end_to_end(session: tuple, tmp_path: Path, preset: str) -> None:
    metrics = _train(session, preset, tmp_path)
    assert [m["step"] for m in metrics] == list(range(STEPS))
    for m in metrics:
        missing = (COMMON_METRICS | PRESET_METRICS.get(preset, set())) - m.keys()
        assert not missing, f"{preset} step {m['step']} lacks {sorted(missing)}"
        assert math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"]) and math.isfinite(m["entropy"])
        assert m["staleness/max"] <= 1
    if preset == "gspo":
        assert all(m["optim/steps"] == 4 for m in metrics)  # 4 minibatches per rollout batch
    if preset in ("rloo", "reinforce_pp"):
        assert all(math.isfinite(m["kl"]) for m in metrics)
    if preset == "dapo":
        assert sum(m["dynamic_sampling/dropped_groups"] for m in metrics) > 0
        assert sum(m["dynamic_sampling/refill_rounds"] for m in metrics) > 0
        for m in metrics:  # refilled to the target (8 prompts) unless the rounds ran out
            assert m["dynamic_sampling/kept_groups"] == 8 or m["dynamic_sampling/exhausted"] == 1
            # every sample is scored: the kept groups train, minus truncated samples (overlong filtering)
            assert m["samples/trained"] == m["dynamic_sampling/kept_groups"] * 4 - m["samples/overlong_filtered"]
