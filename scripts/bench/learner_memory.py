"""Peak memory and time of one learner step: a long sequence at a large vocabulary, and SmolLM2 LoRA.

    python -m scripts.bench.learner_memory [--cases long,smollm2-lora] [--steps 3] [--out FILE]

Each case runs in a fresh process (so its peak resident memory is its own) and takes
``--steps`` GRPO steps through ``Learner.train`` with the torch backend on the CPU:

- ``long``: a randomly initialised Qwen3-architecture model with Qwen3's vocabulary
  (151 936), hidden size 512, 2 layers, 8 heads; one sequence of 3 072 prompt and
  1 024 completion tokens (4 096 in all) per step, micro-batch 1;
- ``smollm2-lora``: SmolLM2-135M-Instruct (``bash scripts/setup.sh --smollm2``) with
  LoRA r16 on q/k/v/o, 8 sequences of 64 prompt and 64 completion tokens per step.

Reported: the process's resident memory after the model is loaded, its peak over the
run (``ru_maxrss``), the difference (what the steps added at their worst), and the
mean wall time of the steps after the first. CPU figures: the step's peak memory
scales as it would on a GPU (the same tensors are allocated), its time does not.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = ("long", "smollm2-lora")


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _long_model(cache: Path) -> str:
    """A random Qwen3-architecture model with Qwen3's vocabulary (built once under ``cache``)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from scripts.bench.models import QWEN3_VOCAB_2LAYER_SHAPE

    target = cache / "qwen3-vocab-2layer"
    if not (target / "config.json").exists():
        config = Qwen3Config(**QWEN3_VOCAB_2LAYER_SHAPE)
        torch.manual_seed(0)
        Qwen3ForCausalLM(config).save_pretrained(target)
    return str(target)


def _batch(vocab: int, rows: int, prompt: int, completion: int, step: int):
    import torch

    from actors.messages import TrainBatch

    g = torch.Generator().manual_seed(step)
    ids = torch.randint(10, vocab, (rows, prompt + completion), generator=g).tolist()
    return TrainBatch(
        step=step,
        prompt_token_ids=[r[:prompt] for r in ids],
        completion_token_ids=[r[prompt:] for r in ids],
        sampling_logprobs=[[-5.0] * completion for _ in ids],
        advantages=[1.0 if i % 2 else -1.0 for i in range(rows)],
        policy_versions=[step] * rows,
    )


def run_case(case: str, steps: int, cache: Path) -> dict:
    """One case in this process: the figures of the module docstring."""
    import torch

    from actors.learner.learner import Learner, LearnerConfig, LoraConfig
    from actors.model.loading import ModelConfig
    from algorithms.config import AlgorithmConfig

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if case == "long":
        model = ModelConfig(path=_long_model(cache), cache_dir=str(cache))
        learner_cfg = LearnerConfig(lr=1e-5, micro_batch_size=1, torch_threads=os.cpu_count() or 1)
        shape = (1, 3072, 1024)
    else:
        from scripts.bench.models import SMOLLM2

        model = ModelConfig(path=SMOLLM2, cache_dir=str(cache))
        learner_cfg = LearnerConfig(
            lr=1e-5, micro_batch_size=8, lora=LoraConfig(enabled=True), torch_threads=os.cpu_count() or 1
        )
        shape = (8, 64, 64)
    learner = Learner(learner_cfg, model, AlgorithmConfig(), temperature=1.0)
    vocab = int(learner.backend.model.config.vocab_size)  # type: ignore[union-attr,arg-type]
    loaded = _rss_mib()
    times = []
    for step in range(steps):
        batch = _batch(vocab, *shape, step=step)
        start = time.perf_counter()
        learner.train(batch)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    later = times[1:] or times
    return {
        "case": case,
        "rows x prompt x completion": "x".join(map(str, shape)),
        "vocab": vocab,
        "rss_loaded_mib": round(loaded),
        "rss_peak_mib": round(peak),
        "step_peak_over_loaded_mib": round(peak - loaded),
        "step_s": round(sum(later) / len(later), 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--cache", default=".cache/relay")
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one case in this process
    args = parser.parse_args(argv)
    cache = Path(args.cache).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    if args.one:
        print(json.dumps(run_case(args.one, args.steps, cache)))
        return
    rows = []
    for case in args.cases.split(","):
        if case not in CASES:
            raise SystemExit(f"unknown case {case!r}; choose from {', '.join(CASES)}")
        with tempfile.TemporaryFile("w+") as out:
            cmd = [sys.executable, "-m", "scripts.bench.learner_memory", "--one", case, "--steps", str(args.steps)]
            subprocess.run([*cmd, "--cache", str(cache)], check=True, stdout=out)
            out.seek(0)
            rows.append(json.loads(out.read().strip().splitlines()[-1]))
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
