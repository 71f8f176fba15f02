"""Reward-phase throughput of an LLM-calling reward term against a stand-in engine.

    python -m scripts.bench.engine [--samples 256] [--calls 3] [--concurrency 16] [--latency-s 0.1]
                                   [--per-call 32] [--fault-rate 0.0]

Starts ``rewards.stand_in.server`` (it echoes the last user message) in its own
process with latency L per reply, then scores one step's samples through one
``JudgePool``: ``--samples`` distinct samples in rollout calls of
``--per-call``, all calls at once (as the pool actor receives them), with the
term ``scripts.bench.engine:k_calls`` making ``--calls`` K sequential engine
calls per sample and ``reward.engines.bench.max_concurrency = C``.

Prints the measured wall time against the ideal ``samples x K x L / C`` (the
concurrency limit is the only bound), the peak in flight at the server (from
its ``/stats``) and the accounting (requests the pool counted equal those the
server served). No test asserts these times: this is a measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import resource
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from actors.judge_pool import JudgePool
from actors.messages import PromptItem, RolloutResult, Sample, ScoreResult
from ray_jobs.runtime.local_servers import local_server
from rewards.config import EngineConfig, RewardConfig, RewardTermConfig
from rewards.context import RewardContext
from rewards.judge.config import JudgeConfig
from rewards.judge.endpoints import resolve_api_keys
from rewards.metrics import aggregate_judge_metrics

KEY_ENV = "RELAY_BENCH_ENGINE_KEY"


async def k_calls(prompt: str, completion: str, ctx: RewardContext, *, calls: int = 3) -> float:
    """``calls`` sequential engine calls with distinct messages; 1.0 when every reply echoes its message."""
    llm = ctx.llm("bench")
    ok = 0
    for k in range(calls):
        content = f"{completion} #{k}"
        ok += (await llm.chat([{"role": "user", "content": content}])) == content
    return ok / calls


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=256, help="samples of the step")
    parser.add_argument("--calls", type=int, default=3, help="engine calls per sample (K)")
    parser.add_argument("--concurrency", type=int, default=16, help="reward.engines.bench.max_concurrency (C)")
    parser.add_argument("--latency-s", type=float, default=0.1, help="engine latency per reply (L)")
    parser.add_argument("--per-call", type=int, default=32, help="samples per rollout call")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="share of replies answered 429/503")
    return parser.parse_args(argv)


def _rollouts(samples: int, per_call: int) -> list[RolloutResult]:
    calls = []
    for start in range(0, samples, per_call):
        items = [
            Sample(PromptItem(f"p{i}", i, "bench", [1], {"i": i}), f"g{i}", 0, f"sample {i}", [1], [0.0], 0, False)
            for i in range(start, min(samples, start + per_call))
        ]
        calls.append(RolloutResult(batch_index=start // per_call, samples=items, generate_s=0.0, worker_id=0))
    return calls


def _server_stats(base_url: str) -> dict:
    parts = urlsplit(base_url)
    if parts.hostname is None:
        raise ValueError(f"no host in {base_url!r}")
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("GET", "/stats", headers={"Authorization": f"Bearer {os.environ[KEY_ENV]}"})
    stats = json.loads(conn.getresponse().read())
    conn.close()
    return stats


def measure(args: argparse.Namespace) -> dict[str, float]:
    """One run: the reward phase's wall time, CPU time, and the accounting."""
    half = args.fault_rate / 2
    server_args = ["--latency-s", str(args.latency_s)]
    if args.fault_rate:
        server_args += ["--status-rate", f"429={half},503={half}", "--retry-after-s", "0.05"]
    with (
        tempfile.TemporaryDirectory() as tmp,
        local_server(
            "rewards.stand_in.server", KEY_ENV, "bench-engine", server_args, Path(tmp) / "engine.log", "bench engine"
        ) as url,
    ):
        engine = EngineConfig(
            base_url=url,
            model="bench-engine",
            api_key_env=KEY_ENV,
            max_concurrency=args.concurrency,
            retry={"initial_backoff_s": 0.05, "max_attempts": 6},
        )
        reward = RewardConfig(
            terms=[RewardTermConfig(name=f"{__name__}:k_calls", options={"calls": args.calls})],
            engines={"bench": engine},
        )
        judge = JudgeConfig(base_url=url, api_key_env=KEY_ENV)
        pool = JudgePool(judge, reward, resolve_api_keys(judge, engines=reward.engines))
        calls = _rollouts(args.samples, args.per_call)

        async def score() -> list[ScoreResult]:
            try:
                return await asyncio.gather(*(pool.score(c) for c in calls))
            finally:
                await pool.close()

        cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        results = asyncio.run(score())
        wall, cpu1 = time.perf_counter() - wall0, resource.getrusage(resource.RUSAGE_SELF)
        stats = _server_stats(url)
    metrics = aggregate_judge_metrics(r.judge_metrics for r in results)
    scored = [s for r in results for s in r.scored]
    return {
        "wall_s": wall,
        "cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
        "samples": float(len(scored)),
        "unscored": float(sum(s.reward is None for s in scored)),
        "requests_pool": metrics["engine/bench/requests"],
        "requests_server": float(stats["requests"]),
        "peak_inflight_server": float(stats["peak_inflight"]),
        "peak_inflight_pool": metrics["engine/bench/peak_inflight"],
        "retries": metrics["engine/bench/retries"],
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    out = measure(args)
    ideal = args.samples * args.calls * args.latency_s / args.concurrency
    print(
        f"{args.samples} samples x {args.calls} calls x {args.latency_s:g} s / C={args.concurrency}: "
        f"ideal {ideal:.2f} s, measured {out['wall_s']:.2f} s ({ideal / out['wall_s']:.0%} of ideal); "
        f"peak in flight at the server {out['peak_inflight_server']:.0f} (pool {out['peak_inflight_pool']:.0f}); "
        f"requests pool {out['requests_pool']:.0f} / server {out['requests_server']:.0f}; "
        f"retries {out['retries']:.0f}; unscored {out['unscored']:.0f}; pool CPU {out['cpu_s']:.2f} s"
    )
    accounted = out["requests_pool"] == out["requests_server"] and out["peak_inflight_server"] <= args.concurrency
    return 0 if accounted else 1


if __name__ == "__main__":
    raise SystemExit(main())
