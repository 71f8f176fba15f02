"""Does the colocated placement learn as the separate one does? The CPU default, both placements.

    python -m scripts.bench.placement [--steps 60] [--ks 0,2] [--placements separate,colocated]
                                      [--root /tmp/relay_placement] [--out results.json]

Runs ``python -m ray_jobs.train run.steps=STEPS pipeline.placement=P pipeline.max_staleness=K
run.output_dir=ROOT/P-kK`` (the CPU default otherwise) for each k and placement, one after the
other, and reads each run's ``metrics.jsonl``:

- learning: ``reward/mean`` over the first 10 steps against the last 10, with Welch's t
  (``scipy.stats.ttest_ind(last, first, equal_var=False)``: t > 0 when the reward rose);
- speed: ``throughput/samples_per_s`` (a 10-step window) averaged over steps 11..STEPS, where
  its window is full, and the run's wall time.

The load average (1 min) is sampled every 5 s during each run (``vs_trl.load_sampled``): a run
beside other work is not a speed measurement (the learning columns do not depend on it).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from scripts.bench.vs_trl import load_sampled

REPO = Path(__file__).resolve().parents[2]
WINDOW = 10
"""Steps in each of the first and last reward windows (and in the throughput metric's window)."""


@dataclass(frozen=True)
class RunSummary:
    """One run's learning and speed: reward means over the first and last ``WINDOW`` steps,
    Welch's t and two-sided p of last against first, and the mean of ``throughput/samples_per_s``
    over the steps whose window is full."""

    first: float
    last: float
    t: float
    p: float
    samples_per_s: float


def welch(first: Sequence[float], last: Sequence[float]) -> tuple[float, float]:
    """Welch's t and two-sided p of ``last`` against ``first`` (t > 0: ``last`` is higher)."""
    from scipy.stats import ttest_ind

    result = ttest_ind(list(last), list(first), equal_var=False)
    return float(result.statistic), float(result.pvalue)


def summarise_run(rows: Sequence[Mapping[str, float]], window: int = WINDOW) -> RunSummary:
    """``RunSummary`` of a run's ``metrics.jsonl`` rows (in step order; at least ``2 * window``)."""
    rewards = [float(r["reward/mean"]) for r in rows]
    if len(rewards) < 2 * window:
        raise ValueError(f"{len(rewards)} steps: need at least {2 * window} for two reward windows of {window}")
    first, last = rewards[:window], rewards[-window:]
    t, p = welch(first, last)
    rates = [float(r["throughput/samples_per_s"]) for r in rows[window:] if "throughput/samples_per_s" in r]
    rate = statistics.fmean(rates) if rates else math.nan
    return RunSummary(statistics.fmean(first), statistics.fmean(last), t, p, rate)


@dataclass(frozen=True)
class RunCost:
    """A run's wall time and the 1-minute load average sampled while it ran."""

    wall_s: float
    load_1m: list[float]

    def load_text(self) -> str:
        """Mean and max of the load samples ('n/a' when none were taken)."""
        if not self.load_1m:
            return "n/a"
        return f"{statistics.fmean(self.load_1m):.1f}, {max(self.load_1m):.1f}"


def format_table(runs: Mapping[tuple[str, int], RunSummary], costs: Mapping[tuple[str, int], RunCost]) -> str:
    """A markdown table, one row per (placement, k) run."""
    lines = [
        f"| placement | k | reward, first {WINDOW} steps | reward, last {WINDOW} | Welch's t (p) | samples/s "
        "| wall s | load 1 min (mean, max) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (placement, k), s in runs.items():
        cost = costs.get((placement, k), RunCost(math.nan, []))
        lines.append(
            f"| {placement} | {k} | {s.first:.3f} | {s.last:.3f} | {s.t:.2f} ({s.p:.2g}) | "
            f"{s.samples_per_s:.1f} | {cost.wall_s:.0f} | {cost.load_text()} |"
        )
    return "\n".join(lines)


def run_train(placement: str, k: int, steps: int, run_dir: Path) -> tuple[list[dict], RunCost]:
    """One CPU-default run: its metrics rows, its wall time and load."""
    overrides = [f"run.steps={steps}", f"pipeline.placement={placement}", f"pipeline.max_staleness={k}"]
    overrides.append(f"run.output_dir={run_dir}")
    started = time.monotonic()
    with load_sampled() as load, run_dir.with_suffix(".log").open("w") as log:
        cmd = [sys.executable, "-m", "ray_jobs.train", *overrides]
        subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)
    cost = RunCost(time.monotonic() - started, list(load))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return rows, cost


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--ks", default="0,2", help="pipeline.max_staleness values")
    parser.add_argument("--placements", default="separate,colocated", help="pipeline.placement values")
    parser.add_argument("--root", default="/tmp/relay_placement", help="the runs' output directories go here")
    parser.add_argument("--out", default=None, help="write the summaries as JSON here (default ROOT/results.json)")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    runs: dict[tuple[str, int], RunSummary] = {}
    costs: dict[tuple[str, int], RunCost] = {}
    for k in [int(k) for k in args.ks.split(",")]:
        for placement in args.placements.split(","):
            rows, costs[placement, k] = run_train(placement, k, args.steps, root / f"{placement}-k{k}")
            runs[placement, k] = summarise_run(rows)
            s, cost = runs[placement, k], costs[placement, k]
            print(
                f"{placement} k={k}: reward {s.first:.3f} -> {s.last:.3f}, t {s.t:.2f} (p {s.p:.2g}), "
                f"{s.samples_per_s:.1f} samples/s; {cost.wall_s:.0f} s, load {cost.load_text()}",
                flush=True,
            )
    print(f"\npython -m ray_jobs.train run.steps={args.steps} (CPU default), per placement and k:\n")
    print(format_table(runs, costs))
    out = Path(args.out) if args.out else root / "results.json"
    record = {f"{p} k={k}": {**asdict(s), **asdict(costs[p, k])} for (p, k), s in runs.items()}
    out.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
