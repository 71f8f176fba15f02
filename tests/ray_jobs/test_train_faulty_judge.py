"""A training run against a judge that throttles (429 with Retry-After), fails
(500/503, transient and persistent), answers empty or malformed content and
hangs past the timeout: the run completes, transient faults are retried,
unscored samples are counted by cause and never scored 0."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from ray_jobs.config.experiment import load_config
from ray_jobs.train import run

pytestmark = pytest.mark.slow

SECRET = "sk-faulty-judge-NEVER-LOGGED-31337"
JUDGE_CAUSES = {
    "judge_http_500",
    "judge_http_503",
    "judge_http_429",
    "judge_timeout",
    "judge_empty",
    "judge_malformed",
    "judge_invalid_verdict",
    "judge_circuit_open",
    "judge_deadline",
}
FAULTS = [
    "judge.timeout_s=0.5",
    "judge.retry.initial_backoff_s=0.02",
    "judge.retry.max_backoff_s=0.2",
    "judge.retry.deadline_s=5",
    "judge.circuit_breaker.cooldown_s=0.2",
    "judge.malformed_retries=1",
    # transient, drawn per (request, attempt): a retry can succeed
    "judge.local_server.status_rates={429: 0.1, 500: 0.05, 503: 0.05}",
    "judge.local_server.retry_after_s=0.05",
    "judge.local_server.hang_rate=0.05",
    "judge.local_server.hang_s=3",
    "judge.local_server.empty_rate=0.05",
    "judge.local_server.flaky_malformed_rate=0.05",
    # persistent, per candidate: those samples stay unscored
    "judge.local_server.fail_rate=0.1",
    "judge.local_server.malformed_rate=0.05",
    "judge.local_server.latency_s=0.02",
    "judge.local_server.latency_sigma=0.5",
    "judge.local_server.seed=1",
]


def test_training_survives_a_faulty_judge(tmp_path: Path, tiny_model_config, monkeypatch, capfd) -> None:
    monkeypatch.setenv("RELAY_JUDGE_API_KEY", SECRET)
    overrides = [
        f"run.output_dir={tmp_path}",
        f"model.cache_dir={tiny_model_config.cache_dir}",
        "wandb.mode=disabled",
        "run.save_final=false",
        "run.steps=4",
        "pipeline.max_staleness=1",
    ]
    run(load_config(None, overrides + FAULTS))
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]

    assert [m["step"] for m in metrics] == [0, 1, 2, 3]
    assert len(samples) == 4 * 8 * 4  # steps x prompts x group size: none lost
    unscored = [s for s in samples if s["reward"] is None]
    scored = [s for s in samples if s["reward"] is not None]
    assert unscored and scored

    # unscored: a judge cause, no advantage, no judge value: never a 0
    assert {s["reward_error"] for s in unscored} <= JUDGE_CAUSES
    assert all(s["advantage"] is None and s["terms"]["judge"] is None for s in unscored)
    assert all(s["reward_error"] is None and s["advantage"] is not None for s in scored)
    assert all(-0.5 <= s["reward"] <= 1.0 for s in scored)

    # counted, per step and by cause, and left out of training
    assert sum(m["judge/failures"] for m in metrics) == len(unscored)
    by_cause = Counter(s["reward_error"] for s in unscored)
    logged = Counter()
    for m in metrics:
        logged.update({k.split("/", 2)[2]: int(v) for k, v in m.items() if k.startswith("judge/failures/")})
    assert logged == by_cause
    assert all(m["samples/trained"] == m["samples/generated"] - m["reward/unscored"] for m in metrics)

    # transient faults were retried (throttling, hangs) and the step metrics are there
    retries = Counter()
    for m in metrics:
        retries.update({k.split("/", 2)[2]: v for k, v in m.items() if k.startswith("judge/retries/")})
    assert retries["judge_http_429"] > 0 and retries["judge_timeout"] > 0
    assert sum(m["judge/retries"] for m in metrics) == sum(retries.values())
    for m in metrics:
        assert 0 < m["judge/latency_p50_s"] <= m["judge/latency_p95_s"]
        assert m["judge/inflight"] >= 1 and "judge/cache_hits" in m and "judge/rule_gated" in m
        assert "reward/judge/relevance" in m and "reward/judge/inappropriate" in m

    out, err = capfd.readouterr()
    for text in [out, err] + [p.read_text(errors="ignore") for p in tmp_path.rglob("*") if p.is_file()]:
        assert SECRET not in text
