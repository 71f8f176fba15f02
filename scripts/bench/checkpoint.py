"""Learner checkpoint benchmark: what a checkpoint costs to write, and to resume from (torch learner, CPU).

    python -m scripts.bench.checkpoint [--models tiny,qwen0.5b] [--modes full,lora] [--repeats 3]
                                       [--dtype bfloat16] [--threads 1] [--cache-dir .cache/relay]
                                       [--workdir DIR] [--out results.json]

Per model (``scripts/bench/models.py``: the tiny one in float32, the random
Qwen2.5-0.5B-shaped one in ``--dtype``) and mode (``full`` fine-tuning, or
``lora``: r16, alpha 32 on q,k,v,o,gate,up,down), one torch ``Learner`` takes
one training step (2 sequences of 8 + 8 tokens; Adam's moments exist after
it), then ``--repeats`` times:

- ``ckpt``: ``Learner.save_checkpoint`` (trainable weights, AdamW state, LR
  scheduler, RNG, version): its own ``bytes`` and ``seconds``;
- ``hf``: ``Learner.save``, the policy in Hugging Face format (the adapter
  alone with LoRA), as a run would write it beside the checkpoint: wall time
  and the directory's bytes; ``write_s`` is the two together;
- ``resume_s``: a fresh ``Learner`` built from the same config plus its
  ``load_checkpoint``; ``load_s`` is ``load_checkpoint`` alone;
- ``exact``: every trainable tensor of the resumed learner equals the saved
  one (``torch.equal``).

Writes go to ``--workdir`` (default: the system temp directory) without
fsync: ``write_s`` is the time to hand the bytes to the page cache; a
durable write adds what the disk needs to flush them. ``others_cpu`` is the
highest share of the machine's CPU used by processes outside this one during
a repetition (``ForeignLoad``; "-" under a second): numbers taken while it is
high are inflated. Prints a Markdown table of medians; ``--out`` writes every
repetition as JSON.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from actors.learner.learner import Learner, LearnerConfig, LoraConfig, collate
from actors.learner.state import directory_bytes
from actors.messages import TrainBatch
from actors.model.loading import CausalLM, ModelConfig
from algorithms.config import AlgorithmConfig
from algorithms.logprobs import token_logprobs
from scripts.bench.models import MODELS, ForeignLoad, median, model_config, percent, report

MODES = ("full", "lora")
LORA = LoraConfig(
    enabled=True,
    r=16,
    alpha=32,
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
)
ALGORITHM = AlgorithmConfig()


def learner_config(mode: str, threads: int) -> LearnerConfig:
    """The torch learner of ``mode`` (``full`` or ``lora``)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")
    return LearnerConfig(lr=1e-5, torch_threads=threads, lora=LORA if mode == "lora" else LoraConfig())


def train_batch(learner: Learner, n: int = 2, prompt: int = 8, completion: int = 8, seed: int = 0) -> TrainBatch:
    """Step 0's batch: ``n`` random sequences whose sampling log-probs are the learner's own."""
    gen = torch.Generator().manual_seed(seed)
    model: CausalLM = learner.backend.model  # the torch backend's model is the Hugging Face one
    vocab = model.get_input_embeddings().weight.shape[0]
    prompts = torch.randint(3, vocab, (n, prompt), generator=gen).tolist()
    completions = torch.randint(3, vocab, (n, completion), generator=gen).tolist()
    draft = TrainBatch(
        step=0,
        prompt_token_ids=prompts,
        completion_token_ids=completions,
        sampling_logprobs=[[0.0] * completion] * n,
        advantages=[1.0, -1.0] * (n // 2) + [1.0] * (n % 2),
        policy_versions=[0] * n,
    )
    t = collate(draft, slice(0, n))
    with torch.no_grad():
        logits = learner.backend.model(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).logits
    logps = token_logprobs(logits[:, :-1].float(), t["input_ids"][:, 1:])
    sampling = [logps[i][t["completion_mask"][i].bool()].tolist() for i in range(n)]
    return TrainBatch(
        step=0,
        prompt_token_ids=prompts,
        completion_token_ids=completions,
        sampling_logprobs=sampling,
        advantages=draft.advantages,
        policy_versions=draft.policy_versions,
    )


def _trainable(learner: Learner) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in learner.backend.model.named_parameters() if p.requires_grad}


def repetition(learner: Learner, config: LearnerConfig, model: ModelConfig, workdir: Path) -> dict:
    """One save (checkpoint + HF policy) and one resume into a fresh learner; the directories are removed after."""
    ckpt, hf = workdir / "ckpt", workdir / "hf"
    try:
        with ForeignLoad() as others:
            saved = learner.save_checkpoint(str(ckpt))
            start = time.perf_counter()
            learner.save(str(hf))
            hf_s = time.perf_counter() - start
            start = time.perf_counter()
            fresh = Learner(config, model, ALGORITHM, temperature=1.0)
            built = time.perf_counter()
            version = fresh.load_checkpoint(str(ckpt))
            loaded = time.perf_counter()
        want, got = _trainable(learner), _trainable(fresh)
        exact = (
            version == learner.version and want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
        )
        del fresh, got
        return {
            "ckpt_bytes": int(saved["bytes"]),
            "ckpt_s": saved["seconds"],
            "hf_bytes": directory_bytes(str(hf)),
            "hf_s": hf_s,
            "write_s": saved["seconds"] + hf_s,
            "resume_s": loaded - start,
            "load_s": loaded - built,
            "exact": exact,
            "others_cpu": others.share,
        }
    finally:
        shutil.rmtree(ckpt, ignore_errors=True)
        shutil.rmtree(hf, ignore_errors=True)
        gc.collect()


def bench(name: str, mode: str, args: argparse.Namespace) -> dict:
    """Every repetition of one (model, mode): a learner trained one step, then ``args.repeats`` save/resumes."""
    model = model_config(name, args.cache_dir, args.dtype)
    config = learner_config(mode, args.threads)
    learner = Learner(config, model, ALGORITHM, temperature=1.0)
    learner.train(train_batch(learner))
    params = _trainable(learner)
    reps: list[dict] = []
    row = {
        "model": name,
        "dtype": model.dtype,
        "mode": mode,
        "trainable_params": sum(p.numel() for p in params.values()),
        "trainable_bytes": sum(p.numel() * p.element_size() for p in params.values()),
        "reps": reps,
    }
    del params
    workdir = Path(tempfile.mkdtemp(prefix="relay-bench-ckpt-", dir=args.workdir))
    try:
        for _ in range(args.repeats):
            reps.append(repetition(learner, config, model, workdir))
            print(f"  {name} {mode}: {reps[-1]}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        del learner
        gc.collect()
    return row


def summarise(rows: list[dict]) -> list[dict]:
    """Medians per (model, mode); sizes from the first repetition (every one writes the same bytes)."""
    out = []
    for r in rows:
        reps = r["reps"]
        s = {k: r[k] for k in ("model", "dtype", "mode", "trainable_params", "trainable_bytes")}
        s.update(
            ckpt_bytes=reps[0]["ckpt_bytes"],
            hf_bytes=reps[0]["hf_bytes"],
            repeats=len(reps),
            exact=all(x["exact"] for x in reps),
        )
        for key in ("ckpt_s", "hf_s", "write_s", "resume_s", "load_s"):
            s[key] = median([x[key] for x in reps])
        s["others_cpu_max"] = max((x["others_cpu"] for x in reps if x["others_cpu"] is not None), default=None)
        out.append(s)
    return out


COLUMNS = (
    "model",
    "dtype",
    "mode",
    "trainable M",
    "ckpt MB",
    "ckpt write s",
    "HF MB",
    "HF write s",
    "write s",
    "resume s (build + load)",
    "load s",
    "exact",
    "others' CPU",
)


def table(summary: list[dict]) -> str:
    """Markdown, one row per (model, mode), times are medians."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for s in summary:
        cells = [
            s["model"],
            s["dtype"],
            s["mode"],
            f"{s['trainable_params'] / 1e6:.3f}",
            f"{s['ckpt_bytes'] / 1e6:.2f}",
            f"{s['ckpt_s']:.3f}",
            f"{s['hf_bytes'] / 1e6:.2f}",
            f"{s['hf_s']:.3f}",
            f"{s['write_s']:.3f}",
            f"{s['resume_s']:.3f}",
            f"{s['load_s']:.3f}",
            "yes" if s["exact"] else "NO",
            percent(s["others_cpu_max"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,qwen0.5b", help=f"comma-separated, from {MODELS}")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {MODES}")
    parser.add_argument("--repeats", type=int, default=3, help="save/resume repetitions per (model, mode)")
    parser.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default="bfloat16", help="dtype of the 0.5B-shaped model"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the learner")
    parser.add_argument("--cache-dir", default=".cache/relay", help="where the models are built and cached")
    parser.add_argument("--workdir", default=None, help="where checkpoints are written (default: the temp dir)")
    parser.add_argument("--out", default=None, help="write all repetitions as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    models, modes = [m for m in args.models.split(",") if m], [m for m in args.modes.split(",") if m]
    unknown = sorted(set(models) - set(MODELS)) + sorted(set(modes) - set(MODES))
    if unknown or args.repeats < 1:
        print(f"unknown {unknown} or --repeats < 1; models from {MODELS}, modes from {MODES}", file=sys.stderr)
        return 2
    rows = [bench(m, mode, args) for m in models for mode in modes]
    summary = summarise(rows)
    report(table(summary), args.out, args, summary, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
