"""A training run with a judge ensemble of three stand-in judges, one failing 30 % of the candidates
persistently: no sample is unscored, the member's failures are per-step metrics, every member's
score is on each sample, every member's requests count, the members' agreement is logged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ray_jobs.config.experiment import load_config
from ray_jobs.train import run

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_ray")]

SECRET = "sk-ensemble-NEVER-LOGGED-2718"
ENSEMBLE = (
    "judge.ensemble=[{name: a, local_server: {enabled: true}}, "
    "{name: b, weight: 2, local_server: {enabled: true}}, "
    "{name: c, local_server: {enabled: true, fail_rate: 0.3}}]"
)


def test_a_failing_member_leaves_no_sample_unscored(tmp_path: Path, tiny_model_config, monkeypatch, capfd) -> None:
    monkeypatch.setenv("RELAY_JUDGE_API_KEY", SECRET)
    overrides = [
        f"run.output_dir={tmp_path}",
        f"model.cache_dir={tiny_model_config.cache_dir}",
        "wandb.mode=disabled",
        "run.save_final=false",
        "run.steps=2",
        "judge.retry.initial_backoff_s=0.01",
        ENSEMBLE,
    ]
    run(load_config(None, overrides))
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]

    assert [m["step"] for m in metrics] == [0, 1] and len(samples) == 2 * 8 * 4
    assert all(s["reward"] is not None and s["reward_error"] is None for s in samples)
    assert all(m["judge/failures"] == 0 and m["reward/unscored"] == 0 for m in metrics)
    c_failed = [s for s in samples if "judge/member/c" not in s["terms"]]
    assert all({"judge/member/a", "judge/member/b"} <= s["terms"].keys() for s in samples)
    # c's failures are counted per step by member and cause; the others never failed
    assert sum(m["judge/member/c/failures"] for m in metrics) == len(c_failed) > 0
    assert sum(m.get("judge/member/c/failures/judge_http_500", 0) for m in metrics) == len(c_failed)
    assert all(m["judge/member/a/failures"] == m["judge/member/b/failures"] == 0 for m in metrics)
    # judge/requests is every member's requests
    for m in metrics:
        assert m["judge/requests"] == sum(m[f"judge/member/{n}/requests"] for n in "abc")
        assert m["judge/member/a/requests"] > 0
    # agreement is logged: the three stand-ins share one heuristic, so they rank every group alike
    assert all(m["judge/member_agreement"] == pytest.approx(1.0) for m in metrics)
    for name in "abc":
        assert (tmp_path / f"judge_server_{name}.log").exists()
    out, err = capfd.readouterr()
    for text in [out, err] + [p.read_text(errors="ignore") for p in tmp_path.rglob("*.log")]:
        assert SECRET not in text
