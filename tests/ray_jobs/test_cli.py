"""The `relay` command: its help, its one-line error for an unknown command, and that it hands
every argument to the job unchanged (in-process, and once through the installed script)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from ray_jobs import cli
from ray_jobs.train import main as train_main

REPO_ROOT = Path(__file__).resolve().parents[2]
JOBS = {
    "train": "ray_jobs.train",
    "sft": "ray_jobs.sft",
    "preference": "ray_jobs.preference",
    "evaluate": "ray_jobs.evaluate",
    "init": "ray_jobs.init_task",
}


def test_help_lists_every_command_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    listed = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and line.split()}
    assert set(JOBS) <= set(listed)
    for name in JOBS:
        assert len(listed[name].split()) > 3, f"{name} has no description: {listed[name]!r}"


def test_an_unknown_command_is_a_one_line_error_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["trian", "--config", "x.yaml"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("error: unknown command 'trian'") and "did you mean 'train'?" in err


def test_no_command_shows_the_usage_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "usage: relay <command>" in capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(JOBS))
def test_a_command_hands_its_arguments_to_the_job_unchanged(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[list[str]] = []

    def job_main(argv: list[str]) -> int:
        received.append(argv)
        return 7

    monkeypatch.setattr(importlib.import_module(JOBS[command]), "main", job_main)
    argv = ["--config", "my config.yaml", "run.steps=3", "judge.model=a=b", "--dry-run", "--gpus-per-node", "4"]
    assert cli.main([command, *argv]) == 7  # the job's exit code
    assert received == [argv]


def test_relay_train_dry_run_is_the_job_s_own(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--config", str(REPO_ROOT / "configs" / "cpu_default.yaml"), "--dry-run", "run.steps=3"]
    assert cli.main(["train", *argv]) == 0
    through_relay = capsys.readouterr()
    assert train_main(argv) == 0
    assert capsys.readouterr() == through_relay and "plan: fits" in through_relay.out
    assert cli.main(["train", "--dry-run", "run.steps=many"]) == 2  # the job's own bad-input exit code
    assert "run.steps" in capsys.readouterr().err


def test_the_installed_relay_script_runs_relay_init(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "relay"
    assert script.is_file(), f"{script} is missing: install the package (pip install -e .) to get the relay command"
    done = subprocess.run(
        [str(script), "init", str(tmp_path / "task")], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "task").iterdir()) == ["config.yaml", "data.jsonl", "rubric.yaml"]
    again = subprocess.run([str(script), "nonsense"], capture_output=True, text=True, timeout=120, check=False)
    assert (again.returncode, again.stderr.count("\n")) == (2, 1)
