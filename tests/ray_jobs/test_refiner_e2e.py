"""The refiner task's CPU recipe end to end on local Ray: the tiny policy, the stand-in verifier
started by the driver (with injected malformed replies), the verification and citation terms and
their metrics; a failed verification is "no score" with the engine's cause, never 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ray_jobs.config.experiment import load_config
from ray_jobs.train import run

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parents[2]
VERIFY, CITE = "rewards.recipes.refiner:verification", "rewards.recipes.refiner:citations"


def test_cpu_refiner_recipe_runs_and_leaves_failed_verifications_unscored(tmp_path: Path, tiny_model_config) -> None:
    cfg = load_config(
        REPO_ROOT / "configs/refiner_grpo/cpu_1_grpo.yaml",
        [
            f"run.output_dir={tmp_path}",
            f"model.cache_dir={tiny_model_config.cache_dir}",
            "wandb.mode=disabled",
            "run.steps=3",
            f"data.path={REPO_ROOT / 'configs/data/toy_refiner.jsonl'}",
            "reward.engines.verifier.local_server_args=[--malformed-rate, '0.2']",
            "reward.engines.verifier.malformed_retries=0",
        ],
    )
    run(cfg)
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1, 2] and len(samples) == 3 * 8 * 4
    for m in metrics:
        assert 0.0 <= m[f"term/{VERIFY}/mean"] <= 1.0 and -1.0 <= m[f"term/{CITE}/mean"] <= 1.0
        assert m[f"term/{VERIFY}/llm_calls"] == m["engine/verifier/requests"] > 0
        assert m[f"term/{CITE}/llm_calls"] == 0 and m[f"term/{CITE}/failures"] == 0
    failed = [s for s in samples if s["terms"][VERIFY] is None]
    assert failed and sum(m[f"term/{VERIFY}/failures"] for m in metrics) == len(failed)
    for s in failed:  # the malformed replies: unscored with the engine's cause, never 0
        assert s["reward"] is None and s["reward_error"].startswith("engine verifier: ")
    for s in samples:
        if s["terms"][VERIFY] is not None:
            assert s["reward_error"] is None and s["terms"][VERIFY] in (0.0, 1.0)
            assert s["reward"] == pytest.approx(10.0 * s["terms"][VERIFY] + 0.5 * s["terms"][CITE])
    log = (tmp_path / "engine_verifier_server.log").read_text().splitlines()
    stats = json.loads(next(x for x in log if x.startswith("refiner_verifier_server: stats ")).split("stats ", 1)[1])
    assert stats["requests"] == sum(m["engine/verifier/requests"] for m in metrics) and stats["faults"]["malformed"] > 0
