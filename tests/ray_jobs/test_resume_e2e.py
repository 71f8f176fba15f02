"""Kill the driver at random steps, re-run the same command, and get the uninterrupted run.

The runs are separate processes killed with SIGKILL (the whole process group),
so nothing but what was on disk survives. The kill steps are drawn at random
(printed on failure: pytest shows the captured output).
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from run_procs import (
    TrainProcess,
    check_complete,
    kill_and_resume,
    read_jsonl,
    run_to_end,
    session_processes,
    train_command,
)

pytestmark = pytest.mark.slow

STEPS, EVERY = 20, 4
BASE = (f"run.steps={STEPS}", f"run.checkpoint_every={EVERY}", "rollout.backend=hf", "learner.backend=torch")
SAMPLES_PER_STEP = 8 * 4  # prompts_per_step x group_size


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, tiny_model_config) -> Path:
    """The same 20-step run at k = 0, never interrupted."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    run_to_end(
        train_command(out, tiny_model_config.cache_dir, *BASE, "pipeline.max_staleness=0"), out.with_suffix(".log")
    )
    return out


def test_sigkill_at_random_steps_k0_repeats_the_uninterrupted_run(
    tmp_path: Path, tiny_model_config, uninterrupted: Path
) -> None:
    kill_at = random.randint(EVERY + 1, STEPS - 3)
    print(f"killing at step {kill_at}")
    out = tmp_path / "run"
    kill_and_resume(out, tiny_model_config.cache_dir, [kill_at], *BASE, "pipeline.max_staleness=0")
    got, _ = check_complete(out, STEPS, SAMPLES_PER_STEP)
    want = read_jsonl(uninterrupted / "metrics.jsonl")
    for g, w in zip(got, want):
        assert g["reward/mean"] == pytest.approx(w["reward/mean"], abs=1e-6), g["step"]
        assert g["loss"] == pytest.approx(w["loss"], abs=1e-6), g["step"]
    assert (out / "final" / "config.json").exists()


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


def test_sigkill_twice_then_sigterm_k2_trains_every_prompt_as_often(
    tmp_path: Path, tiny_model_config, uninterrupted: Path
) -> None:
    """SIGKILL at a random step, again after the first resume, then SIGTERM after the second
    (the graceful stop), and the same command once more to the end."""
    first = random.randint(EVERY + 1, STEPS - 11)
    second = random.randint(first + 2, STEPS - 7)
    print(f"killing at steps {first} and {second}, SIGTERM at {second + 3}")
    out = tmp_path / "run"
    cmd = train_command(out, tiny_model_config.cache_dir, *BASE, "pipeline.max_staleness=2")
    log = out.with_suffix(".log")
    for kill_at in (first, second):
        proc = TrainProcess(cmd, log)
        proc.wait_for_step(out / "metrics.jsonl", kill_at)
        proc.kill()
    _sigterm(TrainProcess(cmd, log), out, second + 3)
    run_to_end(cmd, log)
    assert log.read_text().count("resumed from") == 3
    metrics, samples = check_complete(out, STEPS, SAMPLES_PER_STEP)
    assert max(m["staleness/max"] for m in metrics) == 2
    reference = read_jsonl(uninterrupted / "samples.jsonl")
    # batch b gets the same prompts whatever k is, so the uninterrupted k = 0 run is the reference
    assert Counter(s["prompt_id"] for s in samples) == Counter(s["prompt_id"] for s in reference)
    by_step = {step: sorted(s["prompt_id"] for s in samples if s["step"] == step) for step in range(STEPS)}
    assert by_step == {step: sorted(s["prompt_id"] for s in reference if s["step"] == step) for step in range(STEPS)}
