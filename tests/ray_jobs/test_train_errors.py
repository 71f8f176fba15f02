"""Every bad input is a one-line error before any actor starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from ray_jobs.train import main

REPO_ROOT = Path(__file__).resolve().parents[2]


def _error_line(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert not ray.is_initialized()
    return err[-1]


@pytest.fixture
def base(tiny_model_config, tmp_path: Path) -> list[str]:
    return [f"model.cache_dir={tiny_model_config.cache_dir}", f"run.output_dir={tmp_path / 'run'}", "wandb.mode=disabled"]


def test_unknown_config_key_from_the_command_line() -> None:
    proc = subprocess.run([sys.executable, "-m", "ray_jobs.train", "pipeline.max_stalenes=1"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: unknown config key 'pipeline.max_stalenes'; did you mean 'pipeline.max_staleness'?")


def test_vllm_backend_without_vllm(capsys, base, monkeypatch) -> None:
    monkeypatch.setattr("ray_jobs.train.vllm_installed", lambda: False)
    line = _error_line(capsys, base + ["rollout.backend=vllm"])
    assert "rollout.backend 'vllm' needs vLLM" in line and "--vllm-cpu" in line


def test_missing_dataset_file(capsys, base) -> None:
    line = _error_line(capsys, base + ["data.path=/nonexistent/prompts.jsonl"])
    assert line == "error: data.path: file /nonexistent/prompts.jsonl does not exist"


def test_row_without_prompt_field(capsys, base, tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"description": "a bakery"}) + "\n" + json.dumps({"text": "oops"}) + "\n")
    line = _error_line(capsys, base + [f"data.path={data}"])
    assert line.startswith(f"error: data: row 1 of {data} has no usable 'description' field")


def test_api_key_variable_unset(capsys, base, monkeypatch) -> None:
    monkeypatch.delenv("RELAY_TEST_UNSET_KEY", raising=False)
    line = _error_line(capsys, base + ["judge.base_url=http://127.0.0.1:9/v1", "judge.api_key_env=RELAY_TEST_UNSET_KEY"])
    assert line.startswith("error: ") and "RELAY_TEST_UNSET_KEY" in line and "not set" in line


def test_judge_endpoint_unreachable(capsys, base, monkeypatch) -> None:
    monkeypatch.setenv("RELAY_TEST_KEY", "sk-secret-value-123")
    line = _error_line(capsys, base + ["judge.base_url=http://127.0.0.1:9/v1", "judge.api_key_env=RELAY_TEST_KEY",
                                       "judge.timeout_s=2"])
    assert line.startswith("error: judge endpoint http://127.0.0.1:9/v1 is unreachable")
    assert "sk-secret-value-123" not in line


def test_config_yaml_records_the_users_config(tmp_path: Path, tiny_model_config, monkeypatch) -> None:
    """config.yaml is the config as given (no per-run judge URL, no resolved model path), and reloads."""
    from ray_jobs.config import load_config
    from ray_jobs.train import run

    monkeypatch.setenv("RELAY_JUDGE_API_KEY", "sk-test-record")
    out = tmp_path / "run"
    run(load_config(None, [f"model.cache_dir={tiny_model_config.cache_dir}", f"run.output_dir={out}",
                           "wandb.mode=disabled", "run.steps=1", "run.save_final=false"]))
    recorded = (out / "config.yaml").read_text()
    assert "base_url: null" in recorded and "path: builtin:tiny-qwen" in recorded
    assert load_config(out / "config.yaml").run.steps == 1
