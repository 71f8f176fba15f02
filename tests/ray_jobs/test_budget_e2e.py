"""``judge.budget_usd`` end to end: the CPU default with the stand-in judge (it reports words as tokens)
and prices set stops at its budget with a checkpoint (exit code 143, the cause and the resume line),
having spent within one step's cost of the budget; the same command stops again at once; a higher
budget resumes, and the run's total continues from the checkpoint's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ray_jobs.rl.budget import STEP_COST, TOTAL
from ray_jobs.runtime.lifecycle import checkpoints
from ray_jobs.train import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_ray")]  # one Ray for the module's runs

# About 10,300 prompt and 1,780 completion words per step of 32 judge requests: about $13.9 a step.
PRICES = ["judge.price_per_million_input_tokens=1000", "judge.price_per_million_output_tokens=2000"]
BUDGET = 50.0  # about 3.6 steps' worth


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_the_run_stops_at_its_budget_and_resumes_with_a_higher_one(
    tmp_path: Path, tiny_model_config, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("RELAY_JUDGE_API_KEY", "sk-budget-test")
    out = tmp_path / "run"
    base = [
        f"run.output_dir={out}",
        f"model.cache_dir={tiny_model_config.cache_dir}",
        "wandb.mode=disabled",
        "run.save_final=false",
        "run.steps=6",
        *PRICES,
    ]

    assert main([*base, f"judge.budget_usd={BUDGET:g}"]) == 143
    printed = capsys.readouterr().out
    assert "stopped: judge budget reached: $" in printed and f"of judge.budget_usd={BUDGET:g}" in printed
    assert "stopped: checkpoint written; re-run the same command to resume" in printed
    newest = checkpoints(out)[-1]
    counters = newest.driver_state().counters
    spent, step_cost = counters[TOTAL], counters[STEP_COST]
    metrics = _metrics(out)
    assert 1 <= newest.step == len(metrics) < 6  # stopped early, after a completed step, never mid-step
    assert newest.driver_state().inflight_rows == {}  # every batch paid for was trained first
    assert step_cost == max(m["judge/cost_usd"] for m in metrics) > 0
    assert BUDGET - step_cost < spent <= BUDGET + 0.05 * step_cost  # within one step's cost of the budget
    assert metrics[-1][TOTAL] <= spent  # the checkpoint's total includes what was in flight at the stop
    with capsys.disabled():  # the numbers, for whoever runs it with -s
        print(f"\nbudget {BUDGET} spent {spent:.4f} step cost {step_cost:.4f} steps {newest.step}")

    # the same command: stops at once with the same cause; nothing trained, nothing written
    assert main([*base, f"judge.budget_usd={BUDGET:g}"]) == 143
    again = capsys.readouterr().out
    cause = next(line for line in printed.splitlines() if "budget reached" in line)
    assert again.splitlines() == [cause, f"stopped: checkpoint written; re-run the same command to resume ({out})"]
    assert checkpoints(out)[-1] == newest and len(_metrics(out)) == newest.step

    # a higher budget resumes and finishes; the run's total continues from the checkpoint's
    assert main([*base, "judge.budget_usd=1000"]) == 0
    resumed = _metrics(out)
    assert [m["step"] for m in resumed] == list(range(6))
    first = resumed[newest.step]
    assert first[TOTAL] >= spent + first["judge/cost_usd"] - 1e-9
    assert checkpoints(out)[-1].driver_state().counters[TOTAL] == pytest.approx(resumed[-1][TOTAL])
