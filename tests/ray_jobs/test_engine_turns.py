"""A colocated vLLM engine and the learner take turns on one GPU: the driver's calls around a step
reach the engines in ``SleepingBackend``'s order, each finished before the next; without sleep, none."""

from __future__ import annotations

import asyncio

import pytest
import ray

from actors.rollout.worker import RolloutConfig, RolloutWorker
from ray_jobs.rl.engine_turns import EngineTurns

pytestmark = pytest.mark.usefixtures("shared_ray")


class _RecordingBackend:
    """The two ``SleepingBackend`` calls a worker passes on, recorded."""

    version, updates_in_flight = 0, False

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def sleep(self) -> None:
        self.calls.append("sleep")

    async def wake_up(self, tags: list[str] | None = None) -> None:
        self.calls.append(f"wake_up {tags}")


@ray.remote
class _Engine:
    """A rollout worker's sleep calls, recorded in the order they ran (with the loads between)."""

    def __init__(self, log) -> None:
        self.log = log

    def sleep(self) -> None:
        ray.get(self.log.add.remote("sleep"))

    def wake_up(self, tags: list[str] | None = None) -> None:
        ray.get(self.log.add.remote(f"wake_up {tags}"))

    def release_cached_memory(self) -> None:
        ray.get(self.log.add.remote("learner releases its cache"))

    def load(self) -> float:
        ray.get(self.log.add.remote("load"))
        return 0.0


@ray.remote
class _Log:
    def __init__(self) -> None:
        self.entries: list[str] = []

    def add(self, entry: str) -> None:
        self.entries.append(entry)

    def get(self) -> list[str]:
        return self.entries


def test_a_rollout_worker_passes_sleep_and_wake_up_to_its_backend(tiny_model_config) -> None:
    backend = _RecordingBackend()
    worker = RolloutWorker(RolloutConfig(), tiny_model_config, backend=backend)  # type: ignore[arg-type]
    asyncio.run(worker.sleep())
    asyncio.run(worker.wake_up(["weights"]))
    asyncio.run(worker.wake_up(["kv_cache"]))
    assert backend.calls == ["sleep", "wake_up ['weights']", "wake_up ['kv_cache']"]


def test_the_engines_sleep_through_the_step_and_wake_their_cache_after_the_new_weights() -> None:
    log = _Log.remote()
    engines = [_Engine.remote(log), _Engine.remote(log)]
    turns = EngineTurns(engines, [_Engine.remote(log)], sleeps=True)
    turns.before_step()
    ray.get(log.add.remote("learner step"))
    turns.after_step()
    turns.after_load([e.load.remote() for e in engines])
    got = ray.get(log.get.remote())
    assert got == ["sleep", "sleep", "learner step", "learner releases its cache"] + [
        "wake_up ['weights']",
        "wake_up ['weights']",
        "load",
        "load",
        "wake_up ['kv_cache']",
        "wake_up ['kv_cache']",
    ]


def test_without_sleep_nothing_reaches_the_engines() -> None:
    log = _Log.remote()
    turns = EngineTurns([_Engine.remote(log)], [_Engine.remote(log)], sleeps=False)
    turns.before_step()
    turns.after_step()
    turns.after_load([])
    assert ray.get(log.get.remote()) == []
