"""Kill the driver at a random step at k = 0, re-run the same command, and get the uninterrupted run
(k = 2 with SIGKILL and SIGTERM: ``test_resume_k2_e2e.py``); the same with the weights broadcast to
the engine, killed before the first periodic checkpoint (resumed from step 0's); and the same
colocated (generation in the learner's process), which at k = 0 repeats the separate run exactly.

The runs are separate processes killed with SIGKILL (the whole process group),
so nothing but what was on disk survives. The kill steps are drawn at random
(printed on failure: pytest shows the captured output).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from run_procs import (
    TrainProcess,
    check_complete,
    kill_and_resume,
    read_jsonl,
    run_to_end,
    train_command,
    train_overrides,
)

from ray_jobs.runtime.lifecycle import checkpoints

pytestmark = pytest.mark.slow

STEPS, EVERY = 12, 4
BASE = (f"run.steps={STEPS}", f"run.checkpoint_every={EVERY}", "rollout.backend=hf", "learner.backend=torch")
SAMPLES_PER_STEP = 8 * 4  # prompts_per_step x group_size


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, tiny_model_config, shared_ray) -> Path:
    """The same 12-step run at k = 0, never interrupted: in this process, on the module's Ray
    (the same command's config; only the killed runs need processes of their own)."""
    from ray_jobs.config.experiment import load_config
    from ray_jobs.train import run

    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    run(load_config(None, train_overrides(out, tiny_model_config.cache_dir, *BASE, "pipeline.max_staleness=0")))
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


def test_colocated_sigkill_at_random_steps_k0_repeats_the_uninterrupted_separate_run(
    tmp_path: Path, tiny_model_config, uninterrupted: Path
) -> None:
    """Colocated, the learner's process generates with its own weights from a sampling stream
    seeded as a separate worker 0's: on the same weights (k = 0, float32) it samples the same
    completions, so a killed and resumed colocated run repeats the uninterrupted separate one."""
    kill_at = random.randint(EVERY + 1, STEPS - 3)
    print(f"killing at step {kill_at}")
    out = tmp_path / "run"
    overrides = (*BASE, "pipeline.max_staleness=0", "pipeline.placement=colocated")
    kill_and_resume(out, tiny_model_config.cache_dir, [kill_at], *overrides)
    got, _ = check_complete(out, STEPS, SAMPLES_PER_STEP)
    want = read_jsonl(uninterrupted / "metrics.jsonl")
    for g, w in zip(got, want):
        assert g["reward/mean"] == pytest.approx(w["reward/mean"], abs=1e-6), g["step"]
        assert g["loss"] == pytest.approx(w["loss"], abs=1e-6), g["step"]


def test_broadcast_sigkill_before_the_first_checkpoint_resumes_from_step_0(
    tmp_path: Path, tiny_model_config, uninterrupted: Path
) -> None:
    """weight_sync.transport=broadcast (gloo), killed before the first periodic checkpoint: the
    re-run resumes from the step-0 checkpoint, whose v0 the new engine already holds (it is sent
    as a restore), and repeats the uninterrupted run (object store: the same weights reach the
    engine either way), every step once with its full batch."""
    kill_at = random.randint(1, EVERY - 1)
    print(f"killing at step {kill_at}")
    out = tmp_path / "run"
    cmd = train_command(
        out, tiny_model_config.cache_dir, *BASE, "pipeline.max_staleness=0", "weight_sync.transport=broadcast"
    )
    log = out.with_suffix(".log")
    proc = TrainProcess(cmd, log)
    proc.wait_for_step(out / "metrics.jsonl", kill_at)
    proc.kill()
    assert [c.step for c in checkpoints(out)] == [0]
    run_to_end(cmd, log)
    assert log.read_text().count("resumed from") == 1
    got, _ = check_complete(out, STEPS, SAMPLES_PER_STEP)
    want = read_jsonl(uninterrupted / "metrics.jsonl")
    for g, w in zip(got, want):
        assert g["reward/mean"] == pytest.approx(w["reward/mean"], abs=1e-6), g["step"]
        assert g["loss"] == pytest.approx(w["loss"], abs=1e-6), g["step"]
