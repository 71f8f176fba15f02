"""vLLM sleep mode in the rollout backend (actors/rollout/vllm_backend.py), against a fake engine.

Sleep mode needs CUDA's memory pool, so it cannot run on our CPU machines: ``RecordingEngine``
records every call the backend makes and behaves as vLLM 0.32's ``AsyncLLM`` documents it
(``sleep(level, mode)`` pauses the scheduler with ``mode``, whose default ``"abort"`` drops the
requests in flight; ``wake_up(tags)`` ignores the whole call when one tag is not asleep and
resumes the scheduler once every tag is awake; level 2 leaves the weights uninitialised). What
would crash a GPU, it turns into an error: touching weights or KV cache that sleep, scheduling
with a KV cache asleep, generating from weights that were dropped and never loaded.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from actors.messages import WeightsUpdate
from actors.rollout.vllm_backend import VLLMConfig, VLLMGenerationBackend, engine_arguments

TAGS = {"weights", "kv_cache"}


class EngineFault(RuntimeError):
    """What a real engine would do as a crash or silent garbage on a GPU."""


class RecordingEngine:
    """The ``AsyncLLM`` methods the backend calls, recorded in ``calls``, with 0.32's documented semantics."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.sleeping: set[str] = set()
        self.paused = False
        self.aborted = False
        self.weights_garbage = False
        self.level = 0
        self.running = asyncio.Event()  # set while the scheduler may step
        self.running.set()

    def _schedule(self, paused: bool) -> None:
        self.paused = paused
        if paused:
            self.running.clear()
            return
        if self.sleeping:
            raise EngineFault(f"scheduler resumed while {sorted(self.sleeping)} sleep")
        self.running.set()

    async def sleep(self, level: int = 1, mode: str = "abort") -> None:
        self.calls.append(("sleep", level, mode))
        self.aborted = self.aborted or mode == "abort"
        self._schedule(True)
        if level >= 1:
            self.level, self.sleeping = level, set(TAGS)

    async def wake_up(self, tags: list[str] | None = None) -> bool:
        self.calls.append(("wake_up", None if tags is None else list(tags)))
        waking = set(TAGS) if tags is None else set(tags)
        if not self.sleeping or not waking <= self.sleeping:
            return not self.sleeping  # vLLM logs a warning and wakes nothing
        self.sleeping -= waking
        if "weights" in waking and self.level == 2:
            self.weights_garbage = True
        if not self.sleeping:
            self._schedule(False)
        return not self.sleeping

    async def pause_generation(self, *, mode: str = "abort", clear_cache: bool = True) -> None:
        self.calls.append(("pause_generation", mode))
        self.aborted = self.aborted or mode == "abort"
        self._schedule(True)

    async def resume_generation(self) -> None:
        self.calls.append(("resume_generation",))
        self._schedule(False)

    async def collective_rpc(self, method: str, args: tuple = ()) -> list:
        self.calls.append(("collective_rpc", method))
        if "weights" in self.sleeping:
            raise EngineFault(f"{method} wrote to weights that sleep")
        self.weights_garbage = False
        return [1]

    async def reset_prefix_cache(self, reset_running_requests: bool = False, reset_connector: bool = False) -> bool:
        self.calls.append(("reset_prefix_cache",))
        return True

    async def add_lora(self, adapter: Any) -> bool:
        self.calls.append(("add_lora", adapter.lora_int_id))
        return True

    async def generate(self, prompt: Any, params: Any, request_id: str, lora_request: Any = None):
        self.calls.append(("generate", request_id))
        await self.running.wait()
        if self.aborted:
            raise EngineFault(f"request {request_id} was aborted")
        if self.weights_garbage:
            raise EngineFault(f"request {request_id} generated from uninitialised weights")
        token = SimpleNamespace(logprob=-0.5)
        done = SimpleNamespace(index=0, finish_reason="stop", token_ids=[7], logprobs=[{7: token}])
        yield SimpleNamespace(outputs=[done])

    def shutdown(self) -> None:
        self.calls.append(("shutdown",))


def backend(tmp_path: Path, level: int) -> tuple[VLLMGenerationBackend, RecordingEngine]:
    engine = RecordingEngine()
    tokenizer = SimpleNamespace(eos_token_id=2)
    config = VLLMConfig(sleep_level=level, staging_dir=str(tmp_path))
    return VLLMGenerationBackend.around(engine, tokenizer, 4, 1.0, config), engine


def full_weights(version: int) -> WeightsUpdate:
    return WeightsUpdate(version, {"model.embed_tokens.weight": np.zeros((2, 2), dtype=np.float32)}, 0.0)


def names(engine: RecordingEngine) -> list[tuple[Any, ...]]:
    return [c for c in engine.calls if c[0] != "generate"]


@pytest.mark.parametrize(("level", "enabled"), [(0, False), (1, True), (2, True)])
def test_the_engine_is_built_with_sleep_mode_only_above_level_0(level: int, enabled: bool) -> None:
    args = engine_arguments("m", "bfloat16", VLLMConfig(sleep_level=level), 0, on_cpu=False, lora_rank=None)
    assert args["enable_sleep_mode"] is enabled


@pytest.mark.parametrize("level", [1, 2])
def test_a_learner_step_sleeps_wakes_weights_loads_then_wakes_the_kv_cache(tmp_path: Path, level: int) -> None:
    """vLLM's documented order for RL, and nothing resumes the scheduler while the KV cache sleeps."""
    b, engine = backend(tmp_path, level)

    async def step() -> None:
        await b.sleep()
        await b.wake_up(["weights"])
        await b.load_weights(full_weights(1))
        await b.wake_up(["kv_cache"])

    asyncio.run(step())
    assert names(engine) == [
        ("sleep", level, "keep"),
        ("wake_up", ["weights"]),
        ("pause_generation", "keep"),
        ("collective_rpc", "relay_load_weights"),
        ("reset_prefix_cache",),
        ("wake_up", ["kv_cache"]),
        ("resume_generation",),
    ]
    assert b.version == 1 and not engine.sleeping and engine.running.is_set()


def test_a_request_in_flight_is_kept_through_the_sleep_and_finishes_on_the_new_weights(tmp_path: Path) -> None:
    pytest.importorskip("vllm", reason="the request path builds vLLM's SamplingParams")
    b, engine = backend(tmp_path, 2)

    async def run() -> list:
        engine.running.clear()  # the request is queued, not yet finished, when the learner's step begins
        request = asyncio.create_task(b.generate([[1, 2, 3]], n=1))
        await asyncio.sleep(0)
        await b.sleep()
        await b.wake_up(["weights"])
        await b.load_weights(full_weights(1))
        assert not request.done()  # the KV cache still sleeps: nothing is scheduled
        await b.wake_up(["kv_cache"])
        return await request

    (sample,) = asyncio.run(run())
    assert (sample.token_ids, sample.first_version, sample.last_version) == ([7], 0, 1)
    assert not engine.aborted


def test_level_2_refuses_to_wake_the_kv_cache_before_new_weights_are_loaded(tmp_path: Path) -> None:
    b, engine = backend(tmp_path, 2)

    async def run() -> None:
        await b.sleep()
        await b.wake_up(["weights"])
        with pytest.raises(RuntimeError, match="load new weights"):
            await b.wake_up(["kv_cache"])
        with pytest.raises(RuntimeError, match="load new weights"):
            await b.wake_up()

    asyncio.run(run())
    assert names(engine) == [("sleep", 2, "keep"), ("wake_up", ["weights"])]
    assert engine.sleeping == {"kv_cache"}


def test_level_1_keeps_the_weights_so_one_call_wakes_everything(tmp_path: Path) -> None:
    b, engine = backend(tmp_path, 1)

    async def run() -> None:
        await b.sleep()
        await b.wake_up()

    asyncio.run(run())
    assert names(engine) == [("sleep", 1, "keep"), ("wake_up", ["weights", "kv_cache"]), ("resume_generation",)]


def test_nothing_is_loaded_into_weights_that_sleep(tmp_path: Path) -> None:
    b, engine = backend(tmp_path, 1)
    adapter = WeightsUpdate(1, {"base_model.model.x.lora_A.weight": np.zeros(2, np.float32)}, 0.0, {"r": 2})

    async def run() -> None:
        await b.sleep()
        for load in (b.load_weights(full_weights(1)), b.load_weights(adapter), b.receive_weights([], 1)):
            with pytest.raises(RuntimeError, match=r"wake_up\(\['weights'\]\) first"):
                await load

    asyncio.run(run())
    assert names(engine) == [("sleep", 1, "keep")] and b.version == 0


def test_level_0_never_sleeps(tmp_path: Path) -> None:
    b, engine = backend(tmp_path, 0)

    async def run() -> None:
        await b.sleep()
        await b.wake_up(["weights"])
        await b.load_weights(full_weights(1))
        await b.wake_up(["kv_cache"])

    asyncio.run(run())
    assert names(engine) == [
        ("pause_generation", "keep"),
        ("collective_rpc", "relay_load_weights"),
        ("reset_prefix_cache",),
        ("resume_generation",),
    ]


def test_sleeping_twice_or_waking_what_is_awake_calls_nothing(tmp_path: Path) -> None:
    b, engine = backend(tmp_path, 1)

    async def run() -> None:
        await b.wake_up()  # awake already
        await b.sleep()
        await b.sleep()
        await b.wake_up(["weights"])
        await b.wake_up(["weights", "kv_cache"])  # vLLM would ignore all of it for the awake 'weights'
        with pytest.raises(ValueError, match="scheduling"):
            await b.wake_up(["scheduling"])

    asyncio.run(run())
    assert names(engine) == [
        ("sleep", 1, "keep"),
        ("wake_up", ["weights"]),
        ("wake_up", ["kv_cache"]),
        ("resume_generation",),
    ]


def test_sleep_while_partly_awake_is_an_error(tmp_path: Path) -> None:
    b, _ = backend(tmp_path, 1)

    async def run() -> None:
        await b.sleep()
        await b.wake_up(["weights"])
        with pytest.raises(RuntimeError, match="partly awake"):
            await b.sleep()

    asyncio.run(run())
