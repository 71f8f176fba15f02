"""SIGKILL the driver at k = 2 at a random step, SIGTERM the resumed run, re-run the same command to
the end: every step once, each step's full batch once, every prompt trained as often as uninterrupted.

The runs are separate processes killed with SIGKILL (the whole process group), so nothing but what
was on disk survives. The kill step is drawn at random (printed on failure: pytest shows the
captured output).
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from run_procs import TrainProcess, check_complete, read_jsonl, run_to_end, session_processes, train_command

from ray_jobs.config.experiment import load_config
from ray_jobs.data.prompts import PromptSource
from ray_jobs.train import preflight

pytestmark = pytest.mark.slow

STEPS, EVERY = 20, 4
BASE = (f"run.steps={STEPS}", f"run.checkpoint_every={EVERY}", "rollout.backend=hf", "learner.backend=torch")
SAMPLES_PER_STEP = 8 * 4  # prompts_per_step x group_size


def prompts_by_step(cache_dir: str) -> dict[int, list[str]]:
    """The prompt ids each step trains on, from the run's own prompt source (batch b takes the
    b-th ``prompts_per_step`` prompts whatever k is), each repeated for its group."""
    cfg = load_config(None, [f"model.cache_dir={cache_dir}", *BASE])
    prompts, _ = preflight(cfg)
    source = PromptSource(prompts, cfg.data.shuffle, cfg.run.seed)
    return {
        step: sorted(
            p.prompt_id for p in source.take(cfg.pipeline.prompts_per_step) for _ in range(cfg.rollout.group_size)
        )
        for step in range(STEPS)
    }


def _sigterm(proc: TrainProcess, out: Path, at_step: int) -> None:
    """SIGTERM at ``at_step``: exit 143 within a minute, nothing of the session left, a
    checkpoint of the last completed step."""
    proc.wait_for_step(out / "metrics.jsonl", at_step)
    proc.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 60
    assert proc.proc.wait(timeout=60) == 143, proc.tail()
    while session_processes(proc.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert session_processes(proc.proc.pid) == [], "Ray, judge or engine processes left behind"
    done = len(read_jsonl(out / "metrics.jsonl"))
    assert (out / "checkpoints" / f"step-{done}").is_dir()  # the last completed step
    assert "stopped: checkpoint written; re-run the same command to resume" in proc.tail()


@pytest.mark.parametrize("placement", ["separate", "colocated"])
def test_sigkill_then_sigterm_k2_trains_every_prompt_as_often(
    tmp_path: Path, tiny_model_config, placement: str
) -> None:
    """SIGKILL at a random step, SIGTERM (the graceful stop) a few steps after the resume, and the
    same command once more to the end: a resumed run is itself resumed. Colocated, the learner's
    process generates the next batches between its steps and keeps the same guarantees."""
    kill_at = random.randint(EVERY + 1, STEPS - 8)
    print(f"killing at step {kill_at}, SIGTERM at {kill_at + 4}")
    out = tmp_path / "run"
    overrides = (*BASE, "pipeline.max_staleness=2", f"pipeline.placement={placement}")
    cmd = train_command(out, tiny_model_config.cache_dir, *overrides)
    log = out.with_suffix(".log")
    proc = TrainProcess(cmd, log)
    proc.wait_for_step(out / "metrics.jsonl", kill_at)
    proc.kill()
    _sigterm(TrainProcess(cmd, log), out, kill_at + 4)
    run_to_end(cmd, log)
    assert log.read_text().count("resumed from") == 2
    metrics, samples = check_complete(out, STEPS, SAMPLES_PER_STEP)
    assert max(m["staleness/max"] for m in metrics) == 2
    want = prompts_by_step(tiny_model_config.cache_dir)
    assert Counter(s["prompt_id"] for s in samples) == Counter(p for ids in want.values() for p in ids)
    assert {step: sorted(s["prompt_id"] for s in samples if s["step"] == step) for step in range(STEPS)} == want
