"""The GEO task's CPU recipe (stage 2 of sft_then_grpo_geo, here from the built-in tiny model) end
to end on local Ray: the tiny policy, the stand-in engine started by the driver (with injected
faults), the LLM-calling reward term and its metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ray_jobs.config.experiment import load_config
from ray_jobs.train import run

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parents[2]
TERM = "rewards.recipes.geo:visibility_gain"


def test_cpu_geo_recipe_runs_with_a_faulty_engine(tmp_path: Path, tiny_model_config) -> None:
    faults = "[--latency-s, '0.02', --status-rate, '429=0.1,503=0.1', --retry-after-s, '0', --empty-rate, '0.05']"
    cfg = load_config(
        REPO_ROOT / "configs/sft_then_grpo_geo/cpu_2_grpo.yaml",
        [
            "model.path=builtin:tiny-qwen",  # not stage 1's output: the recipe's stage 2 alone
            f"run.output_dir={tmp_path}",
            f"model.cache_dir={tiny_model_config.cache_dir}",
            "wandb.mode=disabled",
            "run.steps=3",
            f"data.path={REPO_ROOT / 'configs/data/toy_geo.jsonl'}",
            "reward.engines.geo.max_concurrency=4",
            f"reward.engines.geo.local_server_args={faults}",
            "reward.engines.geo.retry.initial_backoff_s=0.01",
        ],
    )
    run(cfg)
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1, 2] and (tmp_path / "final").is_dir()
    assert len(samples) == 3 * 4 * 8
    for m in metrics:
        assert -1.0 <= m[f"term/{TERM}/mean"] <= 1.0 and m[f"term/{TERM}/llm_calls"] == m["engine/geo/requests"] > 0
        assert 1 <= m["engine/geo/peak_inflight"] <= 4
    assert sum(m["engine/geo/retries"] for m in metrics) > 0  # the faults happened and were retried
    for s in samples:  # scored from the row, or unscored with the engine's cause: never 0 for a failure
        assert (s["reward"] is None) == (s["reward_error"] is not None)
        assert s["reward_error"] is None or s["reward_error"].startswith("engine geo: ")
    stats_line = next(
        line
        for line in (tmp_path / "engine_geo_server.log").read_text().splitlines()
        if line.startswith("geo_engine_server: stats ")
    )
    stats = json.loads(stats_line.removeprefix("geo_engine_server: stats "))
    assert 1 <= stats["peak_inflight"] <= 4  # the limit, measured at the server
    assert stats["requests"] == sum(m["engine/geo/requests"] for m in metrics) and stats["faults"]
