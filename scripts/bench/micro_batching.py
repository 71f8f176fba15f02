"""Learner micro-batching benchmark: micro-batches of consecutive rows against a token budget, on long-tailed lengths.

    python -m scripts.bench.micro_batching [--models tiny,26M] [--steps 6] [--samples 32] [--micro-batch-size 8]
                                           [--threads 2] [--cache-dir .cache/relay] [--out results.json]

Each step's ``TrainBatch`` is synthetic, with the completion lengths of the
streaming benchmark's runs (mostly short, some at the 128-token limit):
``--samples`` rows, prompts of 116 to 142 tokens (the range of the CPU
default's prompts, system prompt and chat template included, with the tiny
model's tokenizer), completions of 1 to 16 tokens except a ``LONG_SHARE`` (20 %)
of exactly ``MAX_NEW_TOKENS`` (128); random token ids; sampling log-probs the initial model's own, advantages +-1. The
batches are the same for every case (seeded by the step).

Cases, each a torch ``Learner`` (GRPO, fp32, one rank) on the same batches:

- ``rows``: today's batching, ``--micro-batch-size`` consecutive rows per
  micro-batch, each padded to its longest row;
- ``budget``: ``learner.max_tokens_per_micro_batch`` = ``--micro-batch-size`` x
  the longest possible row (142 + 128 tokens): the same bound on a micro-batch's
  padded size as ``rows``, so the same peak memory, with the rows sorted by
  length and packed (``micro_batch_size`` 64 caps the rows);
- ``one``: today's batching with the whole batch in one micro-batch
  (``micro_batch_size`` = ``--samples``), which is what the CPU default does
  (``micro_batch_size`` 64, 8 prompts x 4 samples per step).

The cases take their steps in turn (case A step 1, case B step 1, ...), so a
change in the machine's load hits them alike. Per step: ``time/train_s`` and
``learner/padding_fraction`` from the ``TrainResult``, and the process's CPU
seconds over the ``train`` call (``time.process_time``: with ``--threads 1``
the compute alone, which other work on a shared machine barely moves, where
wall time can double). Reported: the median
over the steps after the first (warm-up) of the learner's seconds per step, the
padding fraction, the micro-batches per step, the token positions their
forwards process (rows x width: the work, padding included), how much faster
``budget`` is than the case (wall and CPU seconds) and the ratio of the case's
positions to ``budget``'s (what that speed-up would be if time were
proportional to positions; attention's cost per position grows with the width,
and small micro-batches use the cores less well, so it is not quite).
Models: ``tiny`` (the built-in tiny model) and ``26M`` (its shape from
``scripts/bench/vs_trl.py``, random weights, built once under ``--cache-dir``).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import torch

from actors.learner.data_parallel import micro_batch_plan, plan_tokens
from actors.learner.learner import Learner, LearnerConfig, collate
from actors.learner.objectives import sequence_lengths
from actors.messages import TrainBatch
from actors.model.loading import BUILTIN_TINY, CausalLM, ModelConfig, TinyModelConfig
from algorithms.config import AlgorithmConfig
from algorithms.logprobs import token_logprobs
from scripts.bench.models import ForeignLoad, median, percent, report

MODELS = ("tiny", "26M")
CASES = ("rows", "budget", "one")
PROMPT_TOKENS = (116, 142)  # uniform, inclusive: the CPU default's prompts with the tiny tokenizer
SHORT_TOKENS = (1, 16)
MAX_NEW_TOKENS = 128
LONG_SHARE = 0.2


def long_tailed_lengths(n: int, seed: int) -> list[tuple[int, int]]:
    """``n`` (prompt, completion) token counts: prompts in ``PROMPT_TOKENS``; completions at
    ``MAX_NEW_TOKENS`` with probability ``LONG_SHARE``, else in ``SHORT_TOKENS``."""
    rng = random.Random(seed)
    return [
        (
            rng.randint(*PROMPT_TOKENS),
            MAX_NEW_TOKENS if rng.random() < LONG_SHARE else rng.randint(*SHORT_TOKENS),
        )
        for _ in range(n)
    ]


def synthetic_batch(step: int, n: int, vocab: int, model: torch.nn.Module | None = None) -> TrainBatch:
    """Step ``step``'s batch of ``long_tailed_lengths(n, step)`` rows, random ids below ``vocab``;
    sampling log-probs ``model``'s own (no model: all 0, for tests of the shapes)."""
    gen = torch.Generator().manual_seed(step)
    lengths = long_tailed_lengths(n, step)
    prompts = [torch.randint(3, vocab, (p,), generator=gen).tolist() for p, _ in lengths]
    completions = [torch.randint(3, vocab, (c,), generator=gen).tolist() for _, c in lengths]
    batch = TrainBatch(
        step=step,
        prompt_token_ids=prompts,
        completion_token_ids=completions,
        sampling_logprobs=[[0.0] * len(c) for c in completions],
        advantages=[1.0 if i % 2 == 0 else -1.0 for i in range(n)],
        policy_versions=[step] * n,
    )
    if model is None:
        return batch
    t = collate(batch, slice(0, n))
    with torch.no_grad():
        logits = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).logits
    logps = token_logprobs(logits[:, :-1].float(), t["input_ids"][:, 1:])
    batch.sampling_logprobs[:] = [logps[i][t["completion_mask"][i].bool()].tolist() for i in range(n)]
    return batch


def learner_config(case: str, samples: int, micro_batch_size: int, threads: int) -> LearnerConfig:
    """The torch learner of ``case`` (module docstring)."""
    if case == "rows":
        return LearnerConfig(micro_batch_size=micro_batch_size, torch_threads=threads)
    if case == "budget":
        budget = micro_batch_size * (PROMPT_TOKENS[1] + MAX_NEW_TOKENS)
        return LearnerConfig(micro_batch_size=64, max_tokens_per_micro_batch=budget, torch_threads=threads)
    if case == "one":
        return LearnerConfig(micro_batch_size=samples, torch_threads=threads)
    raise ValueError(f"unknown case {case!r}; choose from {CASES}")


def micro_batches(config: LearnerConfig, batch: TrainBatch) -> tuple[int, int]:
    """How many micro-batches ``config`` cuts ``batch`` into (one rank), and the token positions
    their forwards process (rows x width, summed): the work, padding included."""
    lengths = sequence_lengths(batch)
    plan = micro_batch_plan(
        slice(0, len(batch)), 0, 1, config.micro_batch_size, config.max_tokens_per_micro_batch, lengths
    )
    return len(plan), plan_tokens(plan, lengths)[0]


def model_config(name: str, cache_dir: str) -> ModelConfig:
    """The built-in tiny model, or the 26M shape of ``scripts/bench/vs_trl.py`` with random weights."""
    if name == "tiny":
        return ModelConfig(cache_dir=cache_dir, dtype="float32")
    if name == "26M":
        from scripts.bench.vs_trl import SHAPES

        tiny = TinyModelConfig(**SHAPES["26M"], warmup_steps=0)
        return ModelConfig(path=BUILTIN_TINY, cache_dir=str(Path(cache_dir) / "bench-26M"), tiny=tiny, dtype="float32")
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


def bench(name: str, args: argparse.Namespace) -> list[dict]:
    """Every case's steps on model ``name``, taken in turn."""
    model = model_config(name, args.cache_dir)
    algorithm = AlgorithmConfig()
    configs = {case: learner_config(case, args.samples, args.micro_batch_size, args.threads) for case in CASES}
    learners = {case: Learner(c, model, algorithm, temperature=1.0) for case, c in configs.items()}
    initial = _initial(model)  # every step's sampling log-probs: the initial weights' (the policies move apart)
    vocab = initial.get_input_embeddings().weight.shape[0]
    steps: dict[str, list[dict]] = {case: [] for case in CASES}
    with ForeignLoad() as others:
        for step in range(args.steps):
            batch = synthetic_batch(step, args.samples, vocab, initial)
            for case, learner in learners.items():
                cpu = time.process_time()
                metrics = learner.train(batch).metrics
                cpu = time.process_time() - cpu
                count, positions = micro_batches(configs[case], batch)
                record = {
                    "train_s": metrics["time/train_s"],
                    "cpu_s": cpu,
                    "padding_fraction": metrics["learner/padding_fraction"],
                    "micro_batches": count,
                    "positions": positions,
                    "tokens": sum(sequence_lengths(batch)),
                }
                steps[case].append(record)
                print(f"  {name} {case} step {step}: {record}", file=sys.stderr, flush=True)
    return [{"model": name, "case": case, "others_cpu": others.share, "steps": s} for case, s in steps.items()]


def _initial(model: ModelConfig) -> CausalLM:
    """The model's initial weights, in eval mode."""
    from actors.model.loading import load_causal_lm, resolve_model_path

    return load_causal_lm(resolve_model_path(model), "float32").eval()


def summarise(rows: list[dict], warmup: int = 1) -> list[dict]:
    """Per (model, case): medians over the steps after ``warmup``, and the speed-up over ``rows``."""
    out = []
    for r in rows:
        steps = r["steps"][warmup:] or r["steps"]
        out.append(
            {
                "model": r["model"],
                "case": r["case"],
                "steps": len(steps),
                "train_s": median([s["train_s"] for s in steps]),
                "cpu_s": median([s["cpu_s"] for s in steps]),
                "padding_fraction": median([s["padding_fraction"] for s in steps]),
                "micro_batches": median([float(s["micro_batches"]) for s in steps]),
                "positions": median([float(s["positions"]) for s in steps]),
                "others_cpu": r["others_cpu"],
            }
        )
    for s in out:  # the budget's gain over each case
        budget = next(b for b in out if b["model"] == s["model"] and b["case"] == "budget")
        s["speedup"] = s["train_s"] / budget["train_s"]
        s["cpu_speedup"] = s["cpu_s"] / budget["cpu_s"]
        s["fewer_positions"] = s["positions"] / budget["positions"]
    return out


CASE_NAMES = {
    "rows": "today: micro_batch_size {m}",
    "budget": "max_tokens_per_micro_batch {budget}",
    "one": "today: micro_batch_size {n} (the step in one; the CPU default's 64 does this)",
}


def format_table(summary: list[dict], micro_batch_size: int, samples: int) -> str:
    """The Markdown table of ``summarise``'s rows."""
    budget = micro_batch_size * (PROMPT_TOKENS[1] + MAX_NEW_TOKENS)
    lines = [
        "| model | micro-batches | learner s per step | learner CPU s per step | padding fraction "
        "| micro-batches per step | token positions per step | budget's speed-up (s, CPU s) | positions over the budget's "
        "| others' CPU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        name = CASE_NAMES[s["case"]].format(m=micro_batch_size, budget=budget, n=samples)
        lines.append(
            f"| {s['model']} | {name} | {s['train_s']:.3f} | {s['cpu_s']:.3f} | {100 * s['padding_fraction']:.1f} % "
            f"| {s['micro_batches']:g} | {s['positions']:.0f} | {s['speedup']:.2f}x, {s['cpu_speedup']:.2f}x "
            f"| {s['fewer_positions']:.2f}x "
            f"| {percent(s['others_cpu'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,26M", help=f"comma-separated, of {MODELS}")
    parser.add_argument("--steps", type=int, default=6, help="steps per case; the first is a warm-up")
    parser.add_argument("--samples", type=int, default=32, help="rows per step's batch")
    parser.add_argument("--micro-batch-size", type=int, default=8, help="today's rows per micro-batch")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of the learners")
    parser.add_argument("--cache-dir", default=".cache/relay", help="model cache")
    parser.add_argument("--out", default=None, help="write every step's numbers as JSON here")
    args = parser.parse_args(argv)
    rows = [row for name in args.models.split(",") for row in bench(name, args)]
    summary = summarise(rows)
    report(format_table(summary, args.micro_batch_size, args.samples), args.out, args, summary, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
