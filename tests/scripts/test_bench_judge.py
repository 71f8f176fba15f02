"""The judge benchmark's accounting (not its timings: a benchmark measures, a test asserts)."""

from __future__ import annotations

import pytest

from scripts.bench.judge.throughput import main, rollouts


def test_rollouts_hold_each_sample_once() -> None:
    calls = rollouts(37, 16)
    texts = [s.completion_text for c in calls for s in c.samples]
    assert [len(c.samples) for c in calls] == [16, 16, 5] and len(set(texts)) == 37


def test_a_small_faulty_run_accounts_for_every_sample(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "--n",
            "48",
            "--concurrency",
            "8",
            "--latency-s",
            "0.01",
            "--fault-rate",
            "0.3",
            "--retry-after-s",
            "0.01",
            "--backoff-s",
            "0.01",
            "--goal",
            "0",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "48 samples -> 48 scored + 0 unscored" in out and "each exactly once" in out
    assert "(equal)" in out and "retries 0 {}" not in out
