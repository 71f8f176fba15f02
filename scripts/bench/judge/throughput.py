"""Judge-pool throughput benchmark against the local stand-in judge.

    python -m scripts.bench.judge [--n 2000] [--concurrency 32] [--latency-s 0.2]
                                  [--rpm R] [--fault-rate 0.1] [--per-call 16]

Starts ``rewards.stand_in.judge_server`` in its own process (latency L per reply,
optionally a share of requests answered 429/503/500: half 429 with
Retry-After, a quarter 503 with Retry-After, a quarter 500, drawn per
request attempt so retries can succeed), then sends N distinct samples
through one ``JudgePool`` in rollout calls of ``--per-call`` samples, all
calls at once (as the pool actor receives them), with
``judge.max_concurrency = C`` and ``judge.requests_per_minute = R``.

Prints the achieved throughput (samples / wall time) against the ideal
``min(C / L, R / 60)``, and the accounting: every sample is scored exactly
once or reported unscored (none lost, none twice), and the requests the pool
counted equal the completions the server counted. Exits 1 if the accounting
fails or the throughput misses ``--goal`` (default 0.9 without faults, 0.8
with).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from actors.judge_pool import JudgePool
from actors.messages import PromptItem, RolloutResult, Sample, ScoreResult
from ray_jobs.runtime.local_servers import local_judge_server
from rewards.client.config import RetryConfig
from rewards.config import RewardConfig
from rewards.judge.config import JudgeConfig, LocalJudgeServerConfig
from rewards.judge.endpoints import resolve_api_keys
from rewards.metrics import aggregate_judge_metrics
from rewards.stand_in.judge_server import STATS_PREFIX

DESCRIPTIONS = [
    "A family-owned bakery in Portland, Oregon, baking sourdough bread and pastries.",
    "A modern coffee roastery in Austin, Texas, roasting single-origin coffee beans.",
    "A trusted dental clinic in downtown Denver, offering family dentistry.",
    "An eco-friendly solar installer in the Hudson Valley, installing solar panels on homes.",
]


@dataclass(frozen=True)
class Outcome:
    """What one benchmark run measured."""

    wall_s: float
    cpu_s: float
    results: list[ScoreResult]
    served: int
    server_faults: dict[str, int]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench.judge", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="samples to score")
    parser.add_argument("--concurrency", type=int, default=32, help="judge.max_concurrency (C)")
    parser.add_argument("--latency-s", type=float, default=0.2, help="mean judge latency (L)")
    parser.add_argument("--latency-sigma", type=float, default=0.0, help="log-normal latency spread (0: fixed)")
    parser.add_argument("--rpm", type=float, default=None, help="judge.requests_per_minute (R; default none)")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="share of requests answered 429/503/500")
    parser.add_argument("--retry-after-s", type=float, default=0.1, help="Retry-After of injected 429/503")
    parser.add_argument("--backoff-s", type=float, default=0.1, help="judge.retry.initial_backoff_s")
    parser.add_argument("--per-call", type=int, default=16, help="samples per rollout call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--goal", type=float, default=None, help="required share of ideal (default 0.9, 0.8 with faults)"
    )
    return parser.parse_args(argv)


def judge_config(args: argparse.Namespace) -> JudgeConfig:
    """The judge of the benchmark: the local server with the requested latency and faults."""
    f = args.fault_rate
    server = LocalJudgeServerConfig(
        latency_s=args.latency_s,
        latency_sigma=args.latency_sigma,
        seed=args.seed,
        status_rates={429: f / 2, 503: f / 4, 500: f / 4} if f > 0 else {},
        retry_after_s=args.retry_after_s,
    )
    return JudgeConfig(
        max_concurrency=args.concurrency,
        requests_per_minute=args.rpm,
        timeout_s=10,
        retry=RetryConfig(initial_backoff_s=args.backoff_s, max_attempts=8),
        local_server=server,
        check_endpoint=False,
    )


def rollouts(n: int, per_call: int) -> list[RolloutResult]:
    """``n`` distinct samples in calls of ``per_call`` (groups of 4 per prompt)."""
    calls = []
    for call, lo in enumerate(range(0, n, per_call)):
        samples = []
        for i in range(lo, min(n, lo + per_call)):
            prompt = PromptItem(f"p{i // 4}", i // 4, DESCRIPTIONS[(i // 4) % len(DESCRIPTIONS)], [1])
            samples.append(Sample(prompt, f"g{i // 4}", i % 4, f"benchname{i}.com", [1], [0.0], 0, False))
        calls.append(RolloutResult(batch_index=call, samples=samples, generate_s=0.0, worker_id=0))
    return calls


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # this process only: not the judge server
    return usage.ru_utime + usage.ru_stime


async def _score_all(pool: JudgePool, calls: list[RolloutResult]) -> tuple[float, float, list[ScoreResult]]:
    try:
        started, cpu = time.perf_counter(), _cpu_s()
        results = await asyncio.gather(*(pool.score(c) for c in calls))
        return time.perf_counter() - started, _cpu_s() - cpu, list(results)
    finally:
        await pool.close()


def measure(args: argparse.Namespace, workdir: Path) -> Outcome:
    """Run the server, score every sample once through one pool, read the server's counts."""
    judge = judge_config(args)
    log = workdir / "judge_server.log"
    with local_judge_server(judge, log) as url:
        judge = judge.model_copy(update={"base_url": url})
        keys = resolve_api_keys(judge)
        pool = JudgePool(judge, RewardConfig(), keys)
        wall, cpu, results = asyncio.run(_score_all(pool, rollouts(args.n, args.per_call)))
    stats = next(
        json.loads(line[len(STATS_PREFIX) :]) for line in log.read_text().splitlines() if line.startswith(STATS_PREFIX)
    )
    return Outcome(wall, cpu, results, stats["completions_served"], stats["faults"])


def accounting(args: argparse.Namespace, outcome: Outcome) -> tuple[bool, list[str]]:
    """Whether every sample was scored exactly once or reported unscored, and the report lines."""
    texts = Counter(s.sample.completion_text for r in outcome.results for s in r.scored)
    expected = {f"benchname{i}.com" for i in range(args.n)}
    scored = sum(s.reward is not None for r in outcome.results for s in r.scored)
    unscored = sum(s.reward is None for r in outcome.results for s in r.scored)
    requests = sum(r.judge_requests for r in outcome.results)
    once = set(texts) == expected and all(c == 1 for c in texts.values())
    ok = once and scored + unscored == args.n and requests == outcome.served
    causes = Counter(s.reward_error for r in outcome.results for s in r.scored if s.reward is None)
    lines = [
        f"accounting: {args.n} samples -> {scored} scored + {unscored} unscored {dict(causes) or ''}; "
        f"{'each exactly once' if once else 'LOST OR DUPLICATED SAMPLES'}",
        f"            {requests} requests sent by the pool, {outcome.served} served by the judge "
        f"({'equal' if requests == outcome.served else 'MISMATCH'}); injected faults {outcome.server_faults}",
    ]
    return ok, lines


def report(args: argparse.Namespace, outcome: Outcome) -> bool:
    """Print the figures; True when the accounting holds and the goal is met."""
    ideal = args.concurrency / args.latency_s
    if args.rpm is not None:
        ideal = min(ideal, args.rpm / 60.0)
    achieved = args.n / outcome.wall_s
    goal = args.goal if args.goal is not None else (0.8 if args.fault_rate > 0 else 0.9)
    step = aggregate_judge_metrics(r.judge_metrics for r in outcome.results)
    retries = {k.split("/", 2)[2]: int(v) for k, v in step.items() if k.startswith("judge/retries/")}
    ok, lines = accounting(args, outcome)
    print(
        f"bench_judge: N={args.n} samples in calls of {args.per_call}, C={args.concurrency}, "
        f"L={args.latency_s:g} s (sigma {args.latency_sigma:g}), rpm={args.rpm or 'none'}, "
        f"faults {args.fault_rate:.0%} of requests (429/503/500 = 2:1:1, Retry-After {args.retry_after_s:g} s)"
    )
    print(f"ideal     min(C/L, rpm/60) = {ideal:.1f} samples/s (wall >= {args.n / ideal:.2f} s)")
    if args.rpm is not None:
        burst = max(1.0, args.rpm / 60.0 * judge_config(args).burst_s)
        print(
            f"          (the request bucket starts full: the first {burst:.0f} requests need not wait, "
            "so a short run can beat the steady-state ideal)"
        )
    print(
        f"achieved  {achieved:.1f} samples/s (wall {outcome.wall_s:.2f} s) = {achieved / ideal:.1%} of ideal "
        f"(goal {goal:.0%}: {'met' if achieved / ideal >= goal else 'MISSED'})"
    )
    print(
        f"judge     latency p50 {step.get('judge/latency_p50_s', 0):.3f} s, p95 {step.get('judge/latency_p95_s', 0):.3f} s; "
        f"peak in flight {step.get('judge/inflight', 0):.0f}; retries {int(step.get('judge/retries', 0))} {retries}"
    )
    requests = sum(r.judge_requests for r in outcome.results)
    print(
        f"client    {outcome.cpu_s:.2f} s CPU in the pool's process = {1000 * outcome.cpu_s / max(1, requests):.2f} ms "
        f"per request ({outcome.cpu_s / outcome.wall_s:.0%} of one core)"
    )
    for line in lines:
        print(line)
    return ok and achieved / ideal >= goal


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_judge_") as tmp:
        outcome = measure(args, Path(tmp))
    return 0 if report(args, outcome) else 1


if __name__ == "__main__":
    sys.exit(main())
