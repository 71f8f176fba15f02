"""Kill the driver at a random step at k = 0, re-run the same command, and get the uninterrupted run
(k = 2 with SIGKILL and SIGTERM: ``test_resume_k2_e2e.py``).

The runs are separate processes killed with SIGKILL (the whole process group),
so nothing but what was on disk survives. The kill steps are drawn at random
(printed on failure: pytest shows the captured output).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from run_procs import (
    check_complete,
    kill_and_resume,
    read_jsonl,
    train_overrides,
)

pytestmark = pytest.mark.slow

STEPS, EVERY = 12, 4
BASE = (f"run.steps={STEPS}", f"run.checkpoint_every={EVERY}", "rollout.backend=hf", "learner.backend=torch")
SAMPLES_PER_STEP = 8 * 4  # prompts_per_step x group_size


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, tiny_model_config, shared_ray) -> Path:
    """The same 12-step run at k = 0, never interrupted: in this process, on the module's Ray
    (the same command's config; only the killed runs need processes of their own)."""
    from ray_jobs.config import load_config
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
