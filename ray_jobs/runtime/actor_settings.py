"""What a job's actors are given that depends on where they run: torch threads for ``auto``
(an even share of the node's cores among the stages that compute at once) and the model's
absolute paths."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

from actors.model.loading import ModelConfig, adapter_base, resolve_model_path


def stage_threads(cores: int, concurrent: int) -> int:
    """torch threads for each of ``concurrent`` processes that compute at the same time on
    ``cores`` cores (``torch_threads: auto``): an even share, at least 1."""
    return max(1, cores // max(1, concurrent))


T = TypeVar("T")  # a torch_threads setting: a number, "auto", or a CoreShare


def auto_threads(setting: T, concurrent: int) -> T | int:
    """A ``torch_threads`` setting with 'auto' resolved on local Ray: an even share of the
    cores this process may use among ``concurrent`` processes that compute at once, at most
    ``OMP_NUM_THREADS`` when the environment sets it (the usual per-process cap). On a cluster
    (``RAY_ADDRESS``) 'auto' stays: Ray sets each actor's OMP_NUM_THREADS from its CPUs."""
    if setting != "auto" or os.environ.get("RAY_ADDRESS"):
        return setting
    threads = stage_threads(len(os.sched_getaffinity(0)), concurrent)
    cap = os.environ.get("OMP_NUM_THREADS", "")
    return min(threads, int(cap)) if cap.isdigit() and int(cap) > 0 else threads


def absolute_model(model: ModelConfig) -> ModelConfig:
    """``model`` as actors receive it, with absolute local paths (they may run in another working
    directory, or on another node).

    A LoRA adapter to merge (``model.adapter: merge``) stays the adapter's own path, with an
    absolute ``cache_dir``: each actor merges it on its own node (``resolve_model_path``: once per
    node, under the cache's build lock), because a merged copy made here is on this node's disk
    only. It is merged here too, first, so that a bad adapter fails before any actor starts.
    """
    path = Path(resolve_model_path(model))
    if model.adapter == "merge" and adapter_base(model.path) is not None:
        local = {"path": str(Path(model.path).resolve()), "cache_dir": str(Path(model.cache_dir).resolve())}
        return model.model_copy(update=local)
    return model.model_copy(update={"path": str(path.resolve())}) if path.exists() else model
