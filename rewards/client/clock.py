"""Injectable time for the judge client: rate limits, backoff and the circuit
breaker read ``now()`` and wait with ``sleep()``, so tests can run them in
virtual time (``VirtualClock``) instead of sleeping for real."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable
from typing import Protocol, TypeVar

__all__ = ["Clock", "SystemClock", "VirtualClock"]

T = TypeVar("T")


class Clock(Protocol):
    """Monotonic time, wall time and an async sleep."""

    def now(self) -> float:
        """Monotonic seconds (only differences are meaningful)."""

    def wall(self) -> float:
        """Seconds since the Unix epoch (to read HTTP dates)."""

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (at least one event-loop turn, also for 0)."""


class SystemClock:
    """The real clock: ``time.monotonic``, ``time.time``, ``asyncio.sleep``."""

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class VirtualClock:
    """Deterministic virtual time for tests and simulations.

    ``sleep`` parks the caller until virtual time reaches its wake-up time;
    ``run`` drives a coroutine and, whenever every task is parked (the loop
    has had ``settle_turns`` turns without anything to do but sleepers),
    jumps time to the earliest wake-up. Invariant: ``now()`` never goes back,
    and sleepers wake in (time, arrival) order. When nothing sleeps on the
    clock but the coroutine is not done (it waits on a worker thread, e.g. a
    disk cache), ``run`` waits in real time, up to ``patience_s`` in a row,
    before calling it a deadlock.
    """

    def __init__(
        self, start: float = 0.0, wall_start: float = 1_700_000_000.0, settle_turns: int = 50, patience_s: float = 5.0
    ) -> None:
        self._patience_s = patience_s
        self._now = start
        self._wall_offset = wall_start - start
        self._settle_turns = settle_turns
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), future))
        await future

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and wake every sleeper now due."""
        if seconds < 0:
            raise ValueError("virtual time cannot go back")
        self._wake_until(self._now + seconds)

    def _wake_until(self, until: float) -> None:
        self._now = max(self._now, until)
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)

    def _next_wake(self) -> float | None:
        while self._sleepers and self._sleepers[0][2].done():  # cancelled sleepers
            heapq.heappop(self._sleepers)
        return self._sleepers[0][0] if self._sleepers else None

    async def run(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` in virtual time (see the class docstring)."""
        task = asyncio.ensure_future(awaitable)
        idle_since: float | None = None
        while not task.done():
            for _ in range(self._settle_turns):
                await asyncio.sleep(0)
                if task.done():
                    break
            wake = self._next_wake()
            if task.done():
                break
            if wake is not None:
                idle_since = None
                self._wake_until(wake)
                continue
            idle_since = time.monotonic() if idle_since is None else idle_since
            if time.monotonic() - idle_since > self._patience_s:
                task.cancel()
                raise RuntimeError("VirtualClock.run: every task waits, but not on the clock (deadlock)")
            await asyncio.sleep(0.001)  # something else (a thread) is working in real time
        return task.result()
