"""Completed runs of the train driver (in-process, sharing one Ray): what they record, and that a
second run into a finished directory changes nothing. Runs that must fail before Ray starts are in
test_train_errors.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from ray_jobs.train import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_ray")]


def test_a_run_records_the_users_config_and_a_second_run_into_it_changes_nothing(
    tmp_path: Path, tiny_model_config, monkeypatch, capsys
) -> None:
    """config.yaml is the config as given (no per-run judge URL, no resolved model path) and reloads;
    the same command again finds the run finished and rewrites nothing; run.resume=never refuses it."""
    from ray_jobs.config.experiment import load_config

    monkeypatch.setenv("RELAY_JUDGE_API_KEY", "sk-test-twice")
    out = tmp_path / "run"
    argv = [
        f"model.cache_dir={tiny_model_config.cache_dir}",
        f"run.output_dir={out}",
        "wandb.mode=disabled",
        "run.steps=1",
        "run.save_final=false",
    ]
    assert main(argv) == 0
    recorded = (out / "config.yaml").read_text()
    assert "base_url: null" in recorded and "path: builtin:tiny-qwen" in recorded
    assert load_config(out / "config.yaml").run.steps == 1
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    assert main(argv) == 0
    assert "run already finished" in capsys.readouterr().out
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before and not (out / "final").exists()  # nothing rewritten, no final/ made
    assert main(argv + ["run.resume=never"]) == 2
    assert "already holds a run and run.resume=never" in capsys.readouterr().err
