"""End-to-end offline jobs on one local Ray: SFT lowers eval/loss, SimPO and DPO learn the toy
preferences, and GRPO (``ray_jobs.train``) starts from the SFT run's ``final/`` (an SFT run stopped
and killed: ``test_sft_resume_e2e.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ray_jobs import preference, sft
from ray_jobs.config.experiment import load_config
from ray_jobs.config.offline import load_job_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_ray")]  # one Ray for the module's runs


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _base(tmp: Path, tiny_model_config) -> list[str]:
    return [f"run.output_dir={tmp}", f"model.cache_dir={tiny_model_config.cache_dir}", "wandb.mode=disabled"]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny_model_config) -> Path:
    """The SFT CPU default, run once for the module."""
    run_dir = tmp_path_factory.mktemp("sft")
    sft.run(load_job_config(sft.SftConfig, None, _base(run_dir, tiny_model_config)))
    return run_dir


def test_sft_cpu_default_lowers_eval_loss(sft_run: Path) -> None:
    metrics = _metrics(sft_run)
    assert [m["step"] for m in metrics] == list(range(len(metrics)))
    first, last = metrics[0]["eval_initial/loss"], metrics[-1]["eval/loss"]
    assert last < 0.6 * first, (first, last)
    assert {"loss", "lr", "grad_norm", "throughput/tokens_per_s", "data/truncated", "epoch"} <= metrics[0].keys()
    assert (sft_run / "final" / "config.json").exists() and (sft_run / "final" / "tokenizer.json").exists()
    assert (sft_run / "config.yaml").exists() and not (sft_run / "samples.jsonl").exists()  # no samples offline


@pytest.mark.parametrize("name, extra", [("simpo", []), ("dpo", ["schedule.epochs=2"])])
def test_preference_cpu_default_learns_the_pairs(
    tmp_path: Path, tiny_model_config, name: str, extra: list[str]
) -> None:
    overrides = _base(tmp_path, tiny_model_config) + [f"algorithm.name={name}"] + extra
    preference.run(load_job_config(preference.PreferenceConfig, None, overrides))
    metrics = _metrics(tmp_path)
    if name == "simpo":  # DPO starts at margin 0 exactly (policy = reference), so its accuracy starts at 0
        assert 0.3 <= metrics[0]["eval_initial/rewards/accuracy"] <= 0.7
    assert metrics[-1]["eval/rewards/accuracy"] >= 0.9
    assert metrics[-1]["eval/rewards/margin"] > 0
    assert {f"{p}rewards/{k}" for p in ("", "eval/") for k in ("accuracy", "margin", "chosen", "rejected")} | {
        "logps/chosen",
        "logps/rejected",
        "eval/logps/chosen",
        "eval/logps/rejected",
    } <= metrics[-1].keys()


def test_grpo_starts_from_the_sft_output(sft_run: Path, tmp_path: Path, tiny_model_config, monkeypatch) -> None:
    from ray_jobs.train import run

    monkeypatch.setenv("RELAY_JUDGE_API_KEY", "sk-test")
    cfg = load_config(
        None,
        _base(tmp_path, tiny_model_config)
        + [f"model.path={sft_run / 'final'}", "run.steps=2", "pipeline.max_staleness=0", "pipeline.prompts_per_step=4"],
    )
    run(cfg)
    metrics = _metrics(tmp_path)
    assert [m["policy_version"] for m in metrics] == [1, 2]
    assert (tmp_path / "final" / "config.json").exists()
