"""Completed runs of the train driver (in-process, sharing one Ray): what they record, and that a
second run into a finished directory changes nothing. Runs that must fail before Ray starts are in
test_train_errors.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from ray_jobs.train import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_ray")]


def test_config_yaml_records_the_users_config(tmp_path: Path, tiny_model_config, monkeypatch) -> None:
    """config.yaml is the config as given (no per-run judge URL, no resolved model path), and reloads."""
    from ray_jobs.config import load_config
    from ray_jobs.train import run

    monkeypatch.setenv("RELAY_JUDGE_API_KEY", "sk-test-record")
    out = tmp_path / "run"
    run(
        load_config(
            None,
            [
                f"model.cache_dir={tiny_model_config.cache_dir}",
                f"run.output_dir={out}",
                "wandb.mode=disabled",
                "run.steps=1",
                "run.save_final=false",
            ],
        )
    )
    recorded = (out / "config.yaml").read_text()
    assert "base_url: null" in recorded and "path: builtin:tiny-qwen" in recorded
    assert load_config(out / "config.yaml").run.steps == 1


def test_a_second_run_into_a_finished_directory_changes_nothing(
    tmp_path: Path, tiny_model_config, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("RELAY_JUDGE_API_KEY", "sk-test-twice")
    argv = [
        f"model.cache_dir={tiny_model_config.cache_dir}",
        f"run.output_dir={tmp_path / 'run'}",
        "wandb.mode=disabled",
        "run.steps=2",
    ]
    assert main(argv) == 0
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*") if p.is_file() and p.name != ".lock"}
    assert main(argv) == 0
    assert "run already finished" in capsys.readouterr().out
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before  # nothing rewritten
    assert main(argv + ["run.resume=never"]) == 2
    assert "already holds a run and run.resume=never" in capsys.readouterr().err
