"""The CPU default run through a judge outage: every chat request answered 503 for longer than a
step, mid-run. The run pauses, goes on when the judge is back and trains every step once with
every sample scored; an outage past judge.max_outage_s stops it as SIGTERM does, and the same
command resumes it once the judge is back."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from run_procs import check_complete, run_with_faults, train_overrides

from rewards.stand_in.judge_server import JudgeServer, ServerSettings

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_ray")]

STEPS = 6
QUICK_JUDGE = (  # a sample gives up within a second; circuits open after 2 failures, probe after 0.3 s
    "judge.retry.deadline_s=2",
    "judge.retry.initial_backoff_s=0.05",
    "judge.retry.max_backoff_s=0.2",
    "judge.circuit_breaker.failure_threshold=2",
    "judge.circuit_breaker.cooldown_s=0.3",
    "rollout.backend=hf",
)


def test_the_run_pauses_through_an_outage_and_loses_no_sample(
    tmp_path: Path, tiny_model_config, monkeypatch, caplog
) -> None:
    monkeypatch.setenv("RELAY_JUDGE_API_KEY", "sk-test")
    caplog.set_level(logging.WARNING)
    metrics = run_with_faults(  # no fault but the judge's: every step once, its full batch once
        tmp_path / "run",
        tiny_model_config.cache_dir,
        STEPS,
        [],
        *QUICK_JUDGE,
        "judge.local_server.outage_after_requests=80",  # mid step 2 (32 samples a step)
        "judge.local_server.outage_s=8",
    )
    assert all(m["reward/unscored"] == 0 and m["judge/failures"] == 0 for m in metrics)
    assert sum(m["judge/outage_s"] for m in metrics) > 0
    assert metrics[-1]["judge/outages"] == 1 and metrics[-1]["judge/outage_total_s"] > 0
    assert sum(m.get("judge/outage_rescored", 0) for m in metrics) > 0  # samples the outage failed
    messages = [r.getMessage() for r in caplog.records]
    paused = [i for i, m in enumerate(messages) if m.startswith("judge unreachable (no endpoint answers)")]
    back = [i for i, m in enumerate(messages) if m.startswith("judge answers again after")]
    assert len(paused) == 1 and len(back) == 1 and paused[0] < back[0]


def test_an_outage_past_max_outage_s_stops_as_on_sigterm_and_the_same_command_resumes(
    tmp_path: Path, tiny_model_config, monkeypatch, capsys, caplog
) -> None:
    from ray_jobs.train import main

    monkeypatch.setenv("RELAY_JUDGE_API_KEY", "sk-test")
    caplog.set_level(logging.WARNING)
    out = tmp_path / "run"
    down = ServerSettings(outage_after_requests=80, outage_s=3600)
    with JudgeServer(settings=down) as srv:
        port = srv.port
        argv = train_overrides(
            out,
            tiny_model_config.cache_dir,
            f"run.steps={STEPS}",
            "run.checkpoint_every=0",
            "pipeline.max_staleness=2",
            f"judge.base_url={srv.base_url}",
            "judge.max_outage_s=4",
            *QUICK_JUDGE,
        )
        assert main(argv) == 143
    cause, stopped = capsys.readouterr().out.splitlines()[-2:]
    assert re.match(r"stopped: judge unreachable for \d+ s \(judge.max_outage_s=4\); ", cause)
    assert stopped == f"stopped: checkpoint written; re-run the same command to resume ({out})"
    done = len((out / "metrics.jsonl").read_text().splitlines())
    assert 0 < done < STEPS and (out / "checkpoints" / f"step-{done}").is_dir()
    messages = [r.getMessage() for r in caplog.records]
    assert any(re.match(r"judge unreachable for \d+ s: writing a checkpoint", m) for m in messages)

    with JudgeServer(port=port):  # the judge is back, at the same address
        assert main(argv) == 0
    metrics, _ = check_complete(out, STEPS, 8 * 4)
    assert all(m["reward/unscored"] == 0 for m in metrics)
