"""The learner's resumable state: its LR schedule and its checkpoint directory's bookkeeping.

Used by ``actors/learner/learner.py`` and both backends; imports nothing of theirs (no
cycles). Two parts:

* LR schedule. The horizon is counted in *optimiser* steps:
  ``total_steps * num_iterations * num_minibatches`` for a run of
  ``total_steps`` learner batches (``run.steps``). The scheduler comes from
  ``transformers.get_scheduler`` (``constant_with_warmup``, ``linear``,
  ``cosine``): its factor at optimiser step ``s`` is ``s / warmup`` during the
  warm-up (so the very first step has lr 0, as in transformers), then 1
  (constant), a linear decay to 0, or a half cosine to 0 at the horizon. The
  default (constant, no warm-up) has factor exactly 1.0 at every step, so the
  learning rate is ``learner.lr`` bit for bit. A batch with fewer rows than
  ``num_minibatches`` takes fewer optimiser steps (``split_rows``), so such a run
  ends a little short of its horizon (the schedule never goes below 0).

* Checkpoint bookkeeping. A learner checkpoint is a directory that holds the
  backend's files plus ``relay_checkpoint.json`` (the *manifest*: format,
  layout, version), which rank 0 writes LAST, after every rank's files are
  complete, and which a new save deletes FIRST. So a directory with a manifest
  is a complete checkpoint, and a save interrupted half-way leaves none. The
  *layout* is what must match for a checkpoint to load into a learner:
  backend, ZeRO stage (deepspeed only), world size, parameter dtype and the
  LoRA shape; a mismatch is one ``ValueError`` naming every differing key.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

MANIFEST = "relay_checkpoint.json"
FORMAT = 1
_SCHEDULER_NAMES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}


def optimizer_step_horizon(
    lr_scheduler: str,
    warmup_steps: int,
    warmup_ratio: float,
    total_steps: int | None,
    num_iterations: int,
    num_minibatches: int,
) -> int | None:
    """Optimiser steps in the whole run, or None when it is unknown (``total_steps`` None).

    A schedule that needs the horizon (linear, cosine, any warm-up) without
    ``total_steps`` is a ``ValueError``; so is ``total_steps < 1``.
    """
    if total_steps is None:
        if lr_scheduler != "constant" or warmup_steps or warmup_ratio:
            raise ValueError(
                f"learner.lr_scheduler={lr_scheduler} with warmup_steps={warmup_steps}, "
                f"warmup_ratio={warmup_ratio:g} needs the run's length: pass total_steps (run.steps) "
                "to Learner / LearnerGroup"
            )
        return None
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1 learner batches, got {total_steps}")
    return total_steps * num_iterations * num_minibatches


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, lr_scheduler: str, warmup_steps: int, warmup_ratio: float, horizon: int | None
) -> torch.optim.lr_scheduler.LRScheduler:
    """The scheduler over ``optimizer``, stepped once after every optimiser step.

    Warm-up steps are ``warmup_steps`` or ``ceil(warmup_ratio * horizon)``
    (transformers' rounding); ``horizon`` is None only for the constant
    schedule without warm-up (``optimizer_step_horizon`` guarantees it).
    """
    from transformers import get_scheduler

    warmup = warmup_steps or (math.ceil(warmup_ratio * horizon) if horizon else 0)
    return get_scheduler(_SCHEDULER_NAMES[lr_scheduler], optimizer, num_warmup_steps=warmup, num_training_steps=horizon)


def checkpoint_layout(backend: str, zero_stage: int, world_size: int, dtype: str, lora: dict | None) -> dict[str, Any]:
    """What a checkpoint and the learner loading it must agree on (JSON-ready).

    ``lora`` is None without LoRA, else the adapter's shape (``r``, ``alpha``,
    ``target_modules``). ``zero_stage`` counts for the deepspeed backend only.
    """
    return {
        "backend": backend,
        "zero_stage": zero_stage if backend == "deepspeed" else None,
        "world_size": world_size,
        "dtype": dtype,
        "lora": lora,
    }


def begin_save(path: str, rank: int) -> None:
    """Make ``path`` and (rank 0) remove an old manifest, so that a partial save is never a checkpoint."""
    os.makedirs(path, exist_ok=True)
    if rank == 0:
        Path(path, MANIFEST).unlink(missing_ok=True)


def commit_save(path: str, layout: dict[str, Any], version: int) -> int:
    """Rank 0, once every rank's files are written: the manifest, then the directory's size in bytes."""
    text = json.dumps({"format": FORMAT, "layout": layout, "version": version}, indent=1, sort_keys=True)
    tmp = Path(path, MANIFEST + ".tmp")
    tmp.write_text(text)
    tmp.replace(Path(path, MANIFEST))
    return directory_bytes(path)


def read_manifest(path: str, layout: dict[str, Any]) -> dict[str, Any]:
    """The manifest of the checkpoint at ``path``, checked against this learner's ``layout``.

    One-line ``ValueError`` when the directory is missing, holds no (complete)
    checkpoint, has another format, or was made with another layout (every
    differing key named, with both values).
    """
    if not os.path.isdir(path):
        raise ValueError(f"no learner checkpoint at {path}: the directory does not exist")
    manifest_path = Path(path, MANIFEST)
    if not manifest_path.is_file():
        raise ValueError(f"{path} is not a complete learner checkpoint (no {MANIFEST}; an interrupted save?)")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"learner checkpoint {path} has format {manifest.get('format')}, this code reads {FORMAT}")
    saved = manifest["layout"]
    differ = [
        f"{key}: checkpoint {saved.get(key)!r}, learner {value!r}"
        for key, value in layout.items()
        if saved.get(key) != value
    ]
    if differ:
        raise ValueError(f"learner checkpoint {path} was made with another setup ({'; '.join(differ)})")
    return manifest


def directory_bytes(path: str) -> int:
    """Total size of the regular files under ``path`` (recursively)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def rng_state() -> dict[str, Any]:
    """This process's torch RNG state (CPU, and every CUDA device when present)."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` captured (CUDA only when saved and present)."""
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def every_rank_rng_state(world_size: int) -> list[dict[str, Any]]:
    """``rng_state()`` of every rank, in rank order, on every rank (collective when ``world_size > 1``)."""
    mine = rng_state()
    if world_size == 1:
        return [mine]
    states: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(states, mine)
    return states


def max_over_ranks(values: tuple[float, float], device: torch.device, world_size: int) -> tuple[float, float]:
    """The element-wise max over ranks of ``values`` (collective when ``world_size > 1``).

    Used for (bytes, seconds) after a save: ranks other than 0 pass bytes 0,
    so every rank gets rank 0's byte count and the slowest rank's time.
    float64 holds byte counts exactly up to 2**53.
    """
    if world_size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    first, second = tensor.cpu().tolist()
    return first, second
