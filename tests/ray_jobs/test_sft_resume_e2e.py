"""An SFT run stopped (SIGTERM) and killed (SIGKILL of its process group) resumes to the
uninterrupted run's losses and weights, byte for byte."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest
from run_procs import TrainProcess, reap_session, run_to_end

from ray_jobs import sft
from ray_jobs.config.offline import load_job_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_ray")]  # the uninterrupted run is in-process


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _base(tmp: Path, tiny_model_config) -> list[str]:
    return [f"run.output_dir={tmp}", f"model.cache_dir={tiny_model_config.cache_dir}", "wandb.mode=disabled"]


def test_sft_stopped_and_killed_resumes_to_the_uninterrupted_weights(tmp_path: Path, tiny_model_config) -> None:
    """SIGTERM (a checkpoint of the last completed step, exit 143), then SIGKILL of the whole process
    group, then the same command to the end: every step once, and the uninterrupted run's losses and weights."""
    steps = ["run.steps=12", "run.checkpoint_every=4", "schedule.batch_size=8"]
    sft.run(load_job_config(sft.SftConfig, None, _base(tmp_path / "whole", tiny_model_config) + steps))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "ray_jobs.sft", *_base(out, tiny_model_config), *steps]
    log, metrics = tmp_path / "run.log", out / "metrics.jsonl"
    proc = TrainProcess(cmd, log)
    proc.wait_for_step(metrics, 2)
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(timeout=120) == 143, proc.tail()
    reap_session(proc.proc.pid)
    stopped = len(_metrics(out))
    assert (out / "checkpoints" / f"step-{stopped}").is_dir() and "stopped: checkpoint written" in proc.tail()
    proc = TrainProcess(cmd, log)
    proc.wait_for_step(metrics, stopped + 5)
    proc.kill()
    run_to_end(cmd, log)
    assert log.read_text().count("resumed from") == 2
    resumed, whole = _metrics(out), _metrics(tmp_path / "whole")
    assert [m["step"] for m in resumed] == list(range(12))
    assert [m["loss"] for m in resumed] == [m["loss"] for m in whole]
    assert (out / "final" / "model.safetensors").read_bytes() == (
        tmp_path / "whole" / "final" / "model.safetensors"
    ).read_bytes()
