"""A circuit breaker per endpoint (of the judge or of an engine).

States: **closed** (requests flow; consecutive failures are counted),
**open** (no requests until ``cooldown_s`` has passed since it opened),
**half-open** (the cool-down is over: exactly one probe request may go; its
success closes the circuit, its failure re-opens it for another cool-down).
Which failures count is decided by the caller (``rewards.client.retry.trips_breaker``);
an outcome that neither counts nor succeeds (``record_neutral``) only frees
the probe slot. Transitions are logged with the breaker's name (e.g. ``judge endpoint
<url> (<model>)``), which never holds a key.
"""

from __future__ import annotations

import logging

from rewards.client.clock import Clock

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "CircuitBreaker"]

logger = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    """Invariants: in the half-open state at most one probe is in flight; the
    circuit opens only after ``failure_threshold`` consecutive counted
    failures (or a failed probe); ``opened_count`` only grows."""

    def __init__(self, name: str, failure_threshold: int, cooldown_s: float, clock: Clock) -> None:
        if failure_threshold < 1 or cooldown_s < 0:
            raise ValueError("failure_threshold must be >= 1 and cooldown_s >= 0")
        self.name, self.failure_threshold, self.cooldown_s = name, failure_threshold, cooldown_s
        self._clock = clock
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False
        self.opened_count = 0

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self.state})"

    @property
    def state(self) -> str:
        """closed, open or half_open (open turns half_open once the cool-down is over)."""
        if self._state == OPEN and self._clock.now() - self._opened_at >= self.cooldown_s:
            self._state = HALF_OPEN
            self._probe_in_flight = False
        return self._state

    def available(self) -> bool:
        """Whether a request may be sent now."""
        state = self.state
        return state == CLOSED or (state == HALF_OPEN and not self._probe_in_flight)

    def seconds_until_available(self) -> float | None:
        """0 when available; the rest of the cool-down when open; None while a probe is out."""
        state = self.state
        if state == OPEN:
            return max(0.0, self.cooldown_s - (self._clock.now() - self._opened_at))
        if state == HALF_OPEN and self._probe_in_flight:
            return None
        return 0.0

    def on_send(self) -> None:
        """A request is being sent (in the half-open state, it is the probe)."""
        if not self.available():
            raise RuntimeError(f"circuit of {self.name} is {self.state}: no request may be sent")
        if self._state == HALF_OPEN:
            self._probe_in_flight = True

    def record_success(self) -> None:
        """A reply came back: reset the count; a successful probe closes the circuit."""
        if self._state != CLOSED:
            logger.info("%s: request succeeded, circuit closed", self.name)
        self._state, self._failures, self._probe_in_flight = CLOSED, 0, False

    def record_failure(self, cause: str) -> None:
        """A counted failure: maybe open the circuit (always, for a failed probe)."""
        state = self.state
        if state == OPEN:
            return  # a request sent before the circuit opened; the cool-down already runs
        self._failures += 1
        if state == HALF_OPEN or self._failures >= self.failure_threshold:
            self._open(cause)

    def record_neutral(self) -> None:
        """An outcome that says nothing about the endpoint's health: free the probe slot."""
        self._probe_in_flight = False

    def _open(self, cause: str) -> None:
        was_probe = self._state == HALF_OPEN
        self._state, self._opened_at, self._probe_in_flight = OPEN, self._clock.now(), False
        self.opened_count += 1
        logger.warning(
            "%s: circuit opened after %s (last cause %s); next probe in %gs",
            self.name,
            "a failed probe" if was_probe else f"{self._failures} consecutive failures",
            cause,
            self.cooldown_s,
        )
        self._failures = 0
