"""Overlap benchmark: steady-state samples/s with max_staleness 0 versus k.

    python -m scripts.bench.overlap [--steps 30] [--staleness 2] [a.b=value ...]

Same configuration for both runs: one rollout worker and the learner each get
one core (torch threads pinned to 1), one rollout call per step (so with k = 0
the three stages run strictly one after another), and the stand-in judge's
latency is calibrated first so that judging a batch takes about as long as
generating it and training on it. Throughput is measured after ``--warmup``
steps: samples generated / wall time of the remaining steps.
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
    "rollout.num_workers=1",
    "rollout.torch_threads=1",
    "learner.torch_threads=1",
    "pipeline.prompts_per_step=8",
    "pipeline.prompts_per_call=8",
    "rollout.group_size=4",
    "rollout.max_new_tokens=24",
    "model.tiny.hidden_size=128",
    "model.tiny.num_layers=4",
    "model.tiny.num_heads=4",
    "model.tiny.intermediate_size=384",
    "model.tiny.warmup_steps=0",
]


def _metrics(overrides: list[str], out: Path) -> list[dict]:
    run(load_config(None, BASE + overrides + [f"run.output_dir={out}"]))
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _steady(metrics: list[dict], warmup: int) -> tuple[float, dict[str, float]]:
    rest = metrics[warmup:]
    samples = sum(m["samples/generated"] for m in rest)
    seconds = sum(m["time/step_s"] for m in rest)
    shares = {
        k: statistics.fmean(m[k] for m in rest)
        for k in ("time/generate_s", "time/judge_s", "time/train_s", "time/weight_sync_s", "time/step_s")
    }
    return samples / seconds, shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--staleness", type=int, default=2)
    parser.add_argument("--latency-s", type=float, default=None, help="judge latency (default: calibrated)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_overlap_"))
    latency = args.latency_s
    if latency is None:  # calibrate: mean of generation and training time per step, judge instant
        cal = _metrics(args.overrides + ["run.steps=8", "pipeline.max_staleness=0"], root / "calibrate")
        _, t = _steady(cal, 3)
        latency = round((t["time/generate_s"] + t["time/train_s"]) / 2, 3)
    results = {}
    for k in (0, args.staleness):
        m = _metrics(
            args.overrides
            + [f"run.steps={args.steps}", f"pipeline.max_staleness={k}", f"judge.local_server.latency_s={latency}"],
            root / f"k{k}",
        )
        results[k] = _steady(m, args.warmup)
    print(f"\njudge latency {latency:.3f} s; steady state over steps {args.warmup}..{args.steps - 1}")
    for k, (rate, t) in results.items():
        print(
            f"max_staleness={k}: {rate:7.1f} samples/s | per step: generate {t['time/generate_s']:.3f} s, "
            f"judge {t['time/judge_s']:.3f} s, train {t['time/train_s']:.3f} s, "
            f"sync {t['time/weight_sync_s']:.3f} s, wall {t['time/step_s']:.3f} s"
        )
    print(f"speed-up k={args.staleness} over k=0: {results[args.staleness][0] / results[0][0]:.2f}x")


if __name__ == "__main__":
    main()
