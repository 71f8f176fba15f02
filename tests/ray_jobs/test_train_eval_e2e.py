"""Evaluation during training, end to end on local Ray with the tiny model and the local judge:
eval.jsonl lines at the due steps on the right policy versions, evaluation samples never
trained on, and each evaluation recorded exactly once across a resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ray_jobs.config.experiment import load_config
from ray_jobs.train import run

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_ray")]  # one Ray for the module's runs

REPO_ROOT = Path(__file__).resolve().parents[2]
HELDOUT = REPO_ROOT / "configs" / "data" / "business_descriptions_heldout.jsonl"
PER_STEP = 8 * 4  # pipeline.prompts_per_step x rollout.group_size (the defaults)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_evaluations_run_beside_training_and_survive_a_resume(tmp_path: Path, tiny_model_config, monkeypatch) -> None:
    monkeypatch.setenv("RELAY_JUDGE_API_KEY", "sk-test")
    overrides = [
        f"run.output_dir={tmp_path}",
        f"model.cache_dir={tiny_model_config.cache_dir}",
        "run.steps=4",
        "run.checkpoint_every=2",
        "eval.every_steps=2",
        f"eval.data={HELDOUT}",
        "eval.max_prompts=8",
        "pipeline.max_staleness=0",  # only on-policy does the resumed run retrain policy 4 exactly
    ]
    run(load_config(None, overrides + ["wandb.mode=offline"]))
    evals, metrics = _lines(tmp_path / "eval.jsonl"), _lines(tmp_path / "metrics.jsonl")
    assert sorted(e["step"] for e in evals) == [2, 4]
    for e in evals:
        assert e["eval/policy_version"] == e["step"] and e["eval/off_version_samples"] == 0
        assert e["eval/scored"] + e["eval/unscored"] == 8 and e["eval/lost_samples"] == 0  # 8 prompts x 1 sample
        assert "eval/block_rate" in e and "eval/false_block_rate" in e  # the held-out rows are labelled
    # metrics.jsonl keeps one line per learner step; no evaluation sample entered a batch
    assert [m["step"] for m in metrics] == [0, 1, 2, 3]
    assert all(m["samples/generated"] == PER_STEP for m in metrics)
    assert len(_lines(tmp_path / "samples.jsonl")) == 4 * PER_STEP
    assert not any(k.startswith("eval/") for m in metrics for k in m)

    # As if the run had died after its checkpoint of step 2, before the evaluation of step 2 was
    # written: the resumed run evaluates policy 2 again (restored) and policy 4, each once.
    shutil.rmtree(tmp_path / "checkpoints" / "step-4")
    shutil.rmtree(tmp_path / "final")
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals if e["step"] == 4))
    run(load_config(None, overrides + ["wandb.mode=disabled"]))
    resumed = _lines(tmp_path / "eval.jsonl")
    assert sorted(e["step"] for e in resumed) == [2, 4]
    before = {e["step"]: e for e in evals}
    for e in resumed:  # greedy decoding of the same policies: the same rewards
        assert e["eval/reward_mean"] == before[e["step"]]["eval/reward_mean"]
    assert [m["step"] for m in _lines(tmp_path / "metrics.jsonl")] == [0, 1, 2, 3]
