"""Judge outages: when none of the judge's endpoints can answer, and waiting until one does.

``OutageDetector`` (pure; the clock is injected) is fed by the ``JudgeClient``:

* the judge goes **down** after a request fails with an outage cause (``is_outage_cause``:
  a timeout, a connection error, HTTP 408/409/429/5xx) when every endpoint's circuit breaker
  is open, or when at least ``min_failures`` requests in a row failed so, over at least
  ``min_span_s`` seconds, with no reply in between;
* it is **back** at the first reply (``record_reply``): any answer of the server that is not
  such a failure (a completion, or an HTTP error that says the server is answering).

It keeps the current outage's start, how many outages began and their total seconds
(``state()``: a ``JudgeOutage``, plain data that crosses Ray), and how long the judge has
been *stalled*: down, with no completion of a real request since it first went down (a
probe's answer ends an outage but not a stall, so a server that answers probes while every
judge request fails is not taken for back forever: ``max_outage_s`` counts the stall).

``OutageWaiter.until_up`` lets any number of coroutines wait for the judge with ONE probe
at a time shared by all of them: after a backoff (``first_s``, doubling up to ``max_s``)
it calls ``probe()`` (one request, outside the retry rules; its outcome feeds the
detector), until the judge is back; once the stall has lasted ``max_outage_s`` every
waiter gets ``JudgeOutageError``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from rewards.client.clock import Clock
from rewards.client.retry import is_retryable

__all__ = ["JudgeOutage", "JudgeOutageError", "OutageDetector", "OutageWaiter", "is_outage_cause", "outage_cause"]

logger = logging.getLogger(__name__)

_GAVE_UP_CAUSES = frozenset({"judge_circuit_open", "judge_deadline"})


def is_outage_cause(cause: str) -> bool:
    """True for a failure an outage explains: a retryable transport cause (``is_retryable``),
    or a sample that gave up waiting for an open circuit or past its deadline."""
    return cause in _GAVE_UP_CAUSES or is_retryable(cause)


@dataclass(frozen=True)
class JudgeOutage:
    """The judge's outage state. ``current_s``: seconds the current outage has lasted (0 while
    up); ``total_s``: seconds of every outage so far, the current one's included; ``count``:
    outages begun; ``last_s``: length of the last outage that ended; ``stalled_s`` (while
    down): seconds since the judge first went down without completing a request since."""

    down: bool = False
    current_s: float = 0.0
    total_s: float = 0.0
    count: int = 0
    last_s: float = 0.0
    stalled_s: float = 0.0


class JudgeOutageError(Exception):
    """The judge stayed unreachable for ``judge.max_outage_s``: the run stops (as on SIGTERM)."""


def outage_cause(seconds: float, max_outage_s: float) -> str:
    """The one-line cause of a stop for an outage (the driver and the pool word it the same)."""
    return (
        f"judge unreachable for {seconds:.0f} s (judge.max_outage_s={max_outage_s:g}); the batches in "
        "flight are generated and scored again on resume"
    )


class OutageDetector:
    """Invariants: ``count`` and ``total_s`` only grow; ``down`` iff an outage began and no reply
    came since; the failure streak holds only outage-cause failures since the last reply."""

    def __init__(self, clock: Clock, min_failures: int, min_span_s: float, label: str = "judge") -> None:
        if min_failures < 1 or min_span_s < 0:
            raise ValueError("min_failures must be >= 1 and min_span_s >= 0")
        self._clock, self._min_failures, self._min_span_s, self.label = clock, min_failures, min_span_s, label
        self._streak = 0
        self._streak_since = 0.0
        self._down_since: float | None = None
        self._stalled_since: float | None = None  # first went down; cleared by a completion
        self._ended_s = 0.0  # seconds of the outages that ended
        self._count = 0
        self._last_s = 0.0

    def __repr__(self) -> str:
        return f"OutageDetector({self.label!r}, {self.state()})"

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def record_reply(self, probe: bool = False, sent_at: float | None = None) -> None:
        """The server answered: the streak ends, and so does an outage (logged with its length);
        a request's completion (not a ``probe``'s answer) ends the stall too. A reply to a
        request sent (``sent_at``) before the outage or stall began ends neither."""
        self._streak = 0
        if sent_at is not None and self._down_since is not None and sent_at < self._down_since:
            return
        if not probe and (sent_at is None or self._stalled_since is None or sent_at >= self._stalled_since):
            self._stalled_since = None
        if self._down_since is not None:
            self._last_s = self._clock.now() - self._down_since
            self._ended_s += self._last_s
            self._down_since = None
            logger.info("%s answers again after %.1f s of outage", self.label, self._last_s)

    def record_failure(self, cause: str, all_circuits_open: bool) -> None:
        """A request failed with ``cause``; ``all_circuits_open``: every endpoint's circuit is open now.
        Other causes than outage causes say nothing about the judge's reachability."""
        if not is_outage_cause(cause):
            return
        now = self._clock.now()
        if self._streak == 0:
            self._streak_since = now
        self._streak += 1
        long_streak = self._streak >= self._min_failures and now - self._streak_since >= self._min_span_s
        if self._down_since is None and (all_circuits_open or long_streak):
            self._down_since = now
            self._stalled_since = now if self._stalled_since is None else self._stalled_since
            self._count += 1
            logger.info(
                "%s is down (%s; last cause %s)",
                self.label,
                "every endpoint's circuit is open" if all_circuits_open else f"{self._streak} requests failed in a row",
                cause,
            )

    def mark(self) -> tuple[int, bool]:
        """What ``overlaps`` compares with: (outages begun, down now)."""
        return self._count, self.down

    def overlaps(self, mark: tuple[int, bool]) -> bool:
        """Whether the judge has been down at some time since ``mark`` was taken."""
        count, was_down = mark
        return was_down or self.down or self._count > count

    def state(self) -> JudgeOutage:
        now = self._clock.now()
        current = now - self._down_since if self._down_since is not None else 0.0
        stalled = now - self._stalled_since if self.down and self._stalled_since is not None else 0.0
        return JudgeOutage(self.down, current, self._ended_s + current, self._count, self._last_s, stalled)


class OutageWaiter:
    """One shared probe loop for every coroutine waiting for the judge (module docstring).

    Invariant: at most one probe loop (so at most one probe request) runs at a time.
    """

    def __init__(
        self,
        detector: OutageDetector,
        probe: Callable[[], Awaitable[object]],
        clock: Clock,
        first_s: float,
        max_s: float,
        max_outage_s: float,
        poll_s: float = 1.0,
    ) -> None:
        if not 0 < first_s <= max_s or max_outage_s <= 0 or poll_s <= 0:
            raise ValueError("need 0 < first_s <= max_s, max_outage_s > 0 and poll_s > 0")
        self.detector, self._probe, self._clock = detector, probe, clock
        self._first_s, self._max_s, self._max_outage_s, self._poll_s = first_s, max_s, max_outage_s, poll_s
        self._task: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"OutageWaiter({self.detector!r}, max_outage_s={self._max_outage_s:g})"

    async def until_up(self) -> None:
        """Return at once while the judge is up; else wait until it answers again (probing);
        ``JudgeOutageError`` once the stall has lasted ``max_outage_s``."""
        while self.detector.down:
            if self._task is None or self._task.done():
                self._task = asyncio.ensure_future(self._probe_until_up())
            await asyncio.shield(self._task)  # a cancelled waiter leaves the shared loop running

    async def _probe_until_up(self) -> None:
        delay = self._first_s
        while self.detector.down:
            lasted = self.detector.state().stalled_s
            if lasted >= self._max_outage_s:
                raise JudgeOutageError(outage_cause(lasted, self._max_outage_s))
            await self._sleep_while_down(min(delay, self._max_outage_s - lasted))
            if self.detector.down and self.detector.state().stalled_s < self._max_outage_s:
                await self._probe()  # its outcome reaches the detector (a reply ends the outage)
                delay = min(self._max_s, delay * 2)

    async def _sleep_while_down(self, seconds: float) -> None:
        """Sleep ``seconds``, in slices of ``poll_s``, waking early when another request ended the outage."""
        end = self._clock.now() + seconds
        while self.detector.down and (left := end - self._clock.now()) > 0:
            await self._clock.sleep(min(self._poll_s, left))
