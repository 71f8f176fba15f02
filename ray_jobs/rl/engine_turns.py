"""A colocated vLLM engine and the learner taking turns on one GPU (``pipeline.placement:
colocated``, ``rollout.vllm.sleep_level`` > 0).

Around every learner step the driver makes, each call finished before the next is sent (the
order ``actors/rollout/generation.py``'s ``SleepingBackend`` documents): the engine sleeps
(generation paused, requests in flight kept; its weights and KV cache released), the learner
trains and returns the memory its step freed to the device (``Learner.release_cached_memory``:
the engine wakes into it), the engine's weights wake, the new weights are loaded, then its KV
cache wakes and generation resumes. Without sleep every method here does nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ray


class EngineTurns:
    """Makes the rollout workers' engines (``workers``: Ray actor handles) give the device to the
    learner's ``ranks`` for their steps. Invariant: between ``before_step`` and ``after_load`` the
    engines schedule nothing; after ``after_load`` they run with the newest weights."""

    def __init__(self, workers: Sequence[Any], ranks: Sequence[Any], sleeps: bool) -> None:
        self.workers, self.ranks, self.sleeps = list(workers), list(ranks), sleeps

    def before_step(self) -> None:
        """The engines sleep: the learner's step gets their memory."""
        if self.sleeps:
            ray.get([w.sleep.remote() for w in self.workers])

    def after_step(self) -> None:
        """The learner gives back the memory its step freed; the engines' weights wake (still the old
        ones) so that the new ones can be loaded."""
        if self.sleeps:
            ray.get([r.release_cached_memory.remote() for r in self.ranks])
            ray.get([w.wake_up.remote(["weights"]) for w in self.workers])

    def after_load(self, loads: Sequence[ray.ObjectRef]) -> None:
        """Once ``loads`` (the engines' loads of the new weights) finished, their KV caches wake
        and generation resumes."""
        if self.sleeps:
            ray.get(list(loads))
            ray.get([w.wake_up.remote(["kv_cache"]) for w in self.workers])
