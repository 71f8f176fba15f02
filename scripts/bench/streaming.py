"""Streaming benchmark: how long a finished group waits for its score, with and without streaming.

    python -m scripts.bench.streaming [--steps 10] [--judge-latency-s 0.5] [a.b=value ...]

Two runs of the vLLM backend that differ only in ``pipeline.prompts_per_call``:
4 (a call of four prompts returns, and goes to the judge, when its slowest
request ends) against ``auto`` (1 with vLLM: each request is its own call and
goes to the judge as it ends; the engine batches across calls either way).
Completion lengths are long-tailed: the warmed-up tiny model at temperature 2.0
with up to 128 new tokens mostly answers in a few tokens, and now and then runs
to the limit (the lengths are printed).

The figure is ``time/score_lag_*``: per group, the wall time from its last
generated token to its score (the judge's latency included), averaged over the
steps after ``--warmup``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from ray_jobs.config.experiment import load_config
from ray_jobs.train import run

BASE = [
    "wandb.mode=disabled",
    "run.save_final=false",
    "rollout.backend=vllm",
    "rollout.num_workers=1",
    "rollout.temperature=2.0",
    "rollout.max_new_tokens=128",
    "rollout.group_size=8",
    "pipeline.prompts_per_step=8",
    "pipeline.max_staleness=2",
]


def _run(overrides: list[str], out: Path) -> list[dict]:
    """The run's per-step metrics."""
    run(load_config(None, BASE + overrides + [f"run.output_dir={out}"]))
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def summary(metrics: list[dict], warmup: int) -> dict[str, float]:
    """Means over the steps after ``warmup`` of the score lag, step time and lengths."""
    rest = metrics[warmup:]
    return {
        "score_lag_mean_s": statistics.fmean(m["time/score_lag_mean_s"] for m in rest),
        "score_lag_max_s": statistics.fmean(m["time/score_lag_max_s"] for m in rest),
        "step_s": statistics.fmean(m["time/step_s"] for m in rest),
        "length_mean": statistics.fmean(m["completion/length_mean"] for m in rest),
        "length_max": max(m["completion/length_max"] for m in rest),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--judge-latency-s", type=float, default=0.5)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    common = [f"run.steps={args.steps}", f"judge.local_server.latency_s={args.judge_latency_s}", *args.overrides]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, setting in (("per call of 4 prompts", "4"), ("streamed (auto: per request)", "auto")):
            metrics = _run([*common, f"pipeline.prompts_per_call={setting}"], Path(tmp) / setting)
            rows[name] = summary(metrics, args.warmup)
    print(f"\njudge latency {args.judge_latency_s:g} s; means over steps {args.warmup + 1}..{args.steps}")
    print("| prompts per call | score lag mean (s) | score lag max (s) | step (s) | length mean | length max |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['score_lag_mean_s']:.2f} | {r['score_lag_max_s']:.2f} | {r['step_s']:.2f} "
            f"| {r['length_mean']:.1f} | {r['length_max']:.0f} |"
        )


if __name__ == "__main__":
    main()
