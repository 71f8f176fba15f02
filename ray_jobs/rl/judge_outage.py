"""The driver's side of a judge outage (the judge pool's side: ``actors/judge_pool.py`` and
``rewards/client/outage.py``: it keeps every sample an outage failed and scores it again once
the judge answers).

``OutageGuard`` asks the judge pool for its ``JudgeOutage`` (at most every ``poll_s``) and tells
the training loop:

* ``down()``: while the judge is down the driver launches no batch ahead of the step it waits
  for; what is in flight stays in flight.
* ``watch(stop, checkpoint)``: the stop test polled while a step's calls are awaited. Once an
  outage (its stall: ``JudgeOutage.stalled_s``) has lasted ``checkpoint_after_s`` (default: the shorter of 120 s and half of
  ``judge.max_outage_s``), ``checkpoint()`` is called once for that outage (the checkpoint of the
  last completed step, with the batches in flight, as the stop path writes it), so a kill
  during a long outage loses nothing. Once it has lasted ``judge.max_outage_s``,
  ``StopRequested`` with a one-line cause: the run stops as on SIGTERM (checkpoint, exit code
  143, the resume line).
* ``step_metrics()``: ``judge/outage_s`` (seconds of outage since the previous step's metrics),
  ``judge/outage_total_s`` and ``judge/outages`` (seconds and outages since the driver started;
  not carried across a resume).

It logs a warning when an outage starts and one when it ends, with its length. A judge pool
that cannot be asked (restarting) leaves the last answer in place.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import ray

from ray_jobs.runtime.faults import StopRequested
from rewards.client.outage import JudgeOutage, JudgeOutageError, outage_cause

__all__ = ["CHECKPOINT_AFTER_S", "OutageGuard", "judge_outage_cause"]

log = logging.getLogger(__name__)

CHECKPOINT_AFTER_S = 120.0
"""An outage this long (or half of ``judge.max_outage_s``, if shorter) gets a checkpoint while waiting."""


def judge_outage_cause(exc: BaseException) -> str | None:
    """The cause line of a ``JudgeOutageError`` raised in the judge pool (Ray wraps it), else None."""
    for err in (getattr(exc, "cause", None), exc):  # Ray's wrapper is a JudgeOutageError too: its cause first
        if isinstance(err, JudgeOutageError):
            return str(err).splitlines()[0] if str(err) else "judge unreachable (judge.max_outage_s)"
    return None


class OutageGuard:
    """Invariants: ``total_s`` and ``outages`` only grow (a restarted judge pool starts counting
    again from 0, which is added, not subtracted); at most one checkpoint per outage."""

    def __init__(
        self,
        query: Callable[[], JudgeOutage],
        max_outage_s: float,
        checkpoint_after_s: float | None = None,
        poll_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._query, self.max_outage_s, self._poll_s, self._clock = query, max_outage_s, poll_s, clock
        self.checkpoint_after_s = (
            min(CHECKPOINT_AFTER_S, max_outage_s / 2) if checkpoint_after_s is None else checkpoint_after_s
        )
        self._state, self._polled_at = JudgeOutage(), -math.inf
        self._pool_total, self._pool_count = 0.0, 0  # the pool's counters at the last look
        self.total_s, self.outages = 0.0, 0
        self._step_from = 0.0
        self._checkpointed = -1  # the outage (numbered by ``outages``) a checkpoint was written in

    @classmethod
    def of_pool(cls, judge_pool: ray.actor.ActorHandle, max_outage_s: float) -> OutageGuard:
        """A guard asking ``judge_pool`` (a ``JudgePool`` actor) for its outage state."""
        return cls(lambda: ray.get(judge_pool.outage.remote(), timeout=10), max_outage_s)

    def __repr__(self) -> str:
        return f"OutageGuard({self._state}, max_outage_s={self.max_outage_s:g})"

    def poll(self, force: bool = False) -> JudgeOutage:
        """The pool's outage state, asked again if the last answer is older than ``poll_s``."""
        now = self._clock()
        if force or now - self._polled_at >= self._poll_s:
            self._polled_at = now
            try:
                new = self._query()
            except Exception as exc:  # noqa: BLE001 - a pool being restarted: keep the last answer
                log.debug("judge pool's outage state unavailable (%s)", type(exc).__name__)
            else:
                self._account(new)
        return self._state

    def _account(self, new: JudgeOutage) -> None:
        old = self._state
        restarted = new.total_s < self._pool_total or new.count < self._pool_count
        base_total, base_count = (0.0, 0) if restarted else (self._pool_total, self._pool_count)
        self.total_s += max(0.0, new.total_s - base_total)
        started = max(0, new.count - base_count)
        self.outages += started
        self._pool_total, self._pool_count, self._state = new.total_s, new.count, new
        ended = int(old.down and not restarted) + started - int(new.down)
        if started and new.down:
            log.warning(
                "judge unreachable (no endpoint answers): no new batches are launched until it answers; "
                "the samples in flight wait for it (the run stops after judge.max_outage_s=%g s)",
                self.max_outage_s,
            )
        if ended > 0:
            log.warning("judge answers again after %.1f s of outage: launching again", new.last_s)

    def down(self) -> bool:
        """Whether the judge is down (as last seen)."""
        return self.poll().down

    def watch(self, stop: Callable[[], bool], checkpoint: Callable[[], object]) -> Callable[[], bool]:
        """``stop`` extended by the outage's checkpoint and stop (module docstring)."""

        def check() -> bool:
            if stop():
                return True
            state = self.poll()
            if not state.down:
                return False
            if state.stalled_s >= self.max_outage_s:
                raise StopRequested(outage_cause(state.stalled_s, self.max_outage_s))
            if state.stalled_s >= self.checkpoint_after_s and self._checkpointed != self.outages:
                self._checkpointed = self.outages
                log.warning(
                    "judge unreachable for %.0f s: writing a checkpoint of the last completed step while waiting",
                    state.stalled_s,
                )
                checkpoint()
            return False

        return check

    def step_metrics(self) -> dict[str, float]:
        """``judge/outage_s`` since the last call, ``judge/outage_total_s``, ``judge/outages``."""
        self.poll(force=True)
        step, self._step_from = self.total_s - self._step_from, self.total_s
        return {"judge/outage_s": step, "judge/outage_total_s": self.total_s, "judge/outages": float(self.outages)}
