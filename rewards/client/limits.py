"""Per-endpoint limits shared by every request of the judge pool.

``EndpointLimiter`` combines, for one endpoint, a cap on requests in flight
and two async token buckets: requests per minute and tokens per minute. The
judge pool is one async actor, so one ``LimiterRegistry`` (one limiter per
endpoint key) is shared by all its coroutines.

Token bucket: it holds at most ``capacity`` tokens (``burst_s`` seconds of the
rate) and refills continuously at ``rate_per_s``; it starts full. A taker
waits, first come first served, until the bucket holds ``min(amount,
capacity)`` tokens, then takes ``amount`` (the bucket may go into debt for a
request larger than the bucket, and when a reply's usage corrects the
estimate upwards). Hence, for takers no larger than the bucket, the tokens
taken in any window of T seconds are at most ``capacity + rate_per_s * T``.

A request is charged ``estimate_tokens`` (prompt characters / 4 + the reply's
``max_tokens``) before it is sent, and ``Permit.correct`` charges or refunds
the difference once the reply's ``usage.total_tokens`` is known.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from rewards.client.clock import Clock

__all__ = [
    "CHARS_PER_TOKEN",
    "EndpointLimiter",
    "Limits",
    "LimiterRegistry",
    "Permit",
    "TokenBucket",
    "estimate_tokens",
]

_EPSILON = 1e-9
CHARS_PER_TOKEN = 4
"""Rough characters per token used to estimate a prompt's tokens."""


def estimate_tokens(messages: Sequence[dict[str, str]], max_tokens: int) -> int:
    """Tokens a request may use: prompt characters / ``CHARS_PER_TOKEN`` (rounded up) + ``max_tokens``."""
    chars = sum(len(str(m.get("content", ""))) for m in messages)
    return -(-chars // CHARS_PER_TOKEN) + max_tokens


@dataclass(frozen=True)
class Limits:
    """Limits of one endpoint; None means no rate limit of that kind."""

    max_concurrency: int
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    burst_s: float = 1.0

    def __post_init__(self) -> None:
        if self.max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if self.burst_s <= 0:
            raise ValueError("burst_s must be > 0")
        for rate in (self.requests_per_minute, self.tokens_per_minute):
            if rate is not None and rate <= 0:
                raise ValueError("rate limits must be > 0 (or None)")


class TokenBucket:
    """An async token bucket (see the module docstring). Bound to one event loop."""

    def __init__(self, rate_per_s: float, capacity: float, clock: Clock) -> None:
        if rate_per_s <= 0 or capacity <= 0:
            raise ValueError("a token bucket needs a positive rate and capacity")
        self.rate_per_s, self.capacity, self._clock = rate_per_s, capacity, clock
        self._tokens = capacity
        self._updated = clock.now()
        self._lock = asyncio.Lock()  # first come, first served

    def __repr__(self) -> str:
        return f"TokenBucket(rate_per_s={self.rate_per_s:g}, capacity={self.capacity:g})"

    @property
    def tokens(self) -> float:
        """Tokens now in the bucket (negative while in debt)."""
        self._refill()
        return self._tokens

    def _refill(self) -> None:
        now = self._clock.now()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate_per_s)
        self._updated = now

    async def take(self, amount: float) -> None:
        """Wait until ``min(amount, capacity)`` tokens are there, then take ``amount``."""
        if amount <= 0:
            return
        async with self._lock:
            needed = min(amount, self.capacity)
            self._refill()
            while self._tokens < needed - _EPSILON:  # float refills may fall a hair short
                await self._clock.sleep((needed - self._tokens) / self.rate_per_s)
                self._refill()
            self._tokens -= amount

    def adjust(self, delta: float) -> None:
        """Take ``delta`` more tokens (or give ``-delta`` back), without waiting."""
        self._refill()
        self._tokens = min(self.capacity, self._tokens - delta)


class Permit:
    """A granted request slot; ``correct`` fixes its token charge from the reply's usage."""

    def __init__(self, tokens_bucket: TokenBucket | None, charged: int) -> None:
        self._bucket, self.charged = tokens_bucket, charged

    def correct(self, actual_tokens: int | None) -> None:
        """Charge the difference between ``actual_tokens`` (when known) and the estimate."""
        if actual_tokens is None or actual_tokens < 0 or self._bucket is None:
            return
        self._bucket.adjust(actual_tokens - self.charged)
        self.charged = actual_tokens


class EndpointLimiter:
    """Concurrency cap + request and token buckets of one endpoint.

    Invariants: at most ``limits.max_concurrency`` slots are held at once;
    ``in_flight`` counts held slots and ``peak_in_flight`` its maximum.
    """

    def __init__(self, limits: Limits, clock: Clock) -> None:
        self.limits = limits
        self._slots = asyncio.Semaphore(limits.max_concurrency)
        self._requests = self._bucket(limits.requests_per_minute, limits.burst_s, clock, minimum=1.0)
        self._tokens = self._bucket(limits.tokens_per_minute, limits.burst_s, clock, minimum=1.0)
        self.in_flight = 0
        self.peak_in_flight = 0

    @staticmethod
    def _bucket(per_minute: float | None, burst_s: float, clock: Clock, minimum: float) -> TokenBucket | None:
        if per_minute is None:
            return None
        rate = per_minute / 60.0
        return TokenBucket(rate, max(minimum, rate * burst_s), clock)

    def __repr__(self) -> str:
        return f"EndpointLimiter({self.limits})"

    @contextlib.asynccontextmanager
    async def slot(self, tokens: int) -> AsyncIterator[Permit]:
        """Hold one request slot: a concurrency slot, then one request and ``tokens`` tokens."""
        async with self._slots:
            if self._requests is not None:
                await self._requests.take(1)
            if self._tokens is not None:
                await self._tokens.take(tokens)
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                yield Permit(self._tokens, tokens)
            finally:
                self.in_flight -= 1


class LimiterRegistry:
    """One ``EndpointLimiter`` per endpoint key, shared by every coroutine of
    the event loop that built it (the judge pool actor has exactly one)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._limiters: dict[str, EndpointLimiter] = {}

    def get(self, key: str, limits: Limits) -> EndpointLimiter:
        """The limiter of endpoint ``key`` (created with ``limits`` on first use)."""
        limiter = self._limiters.get(key)
        if limiter is None:
            limiter = self._limiters[key] = EndpointLimiter(limits, self._clock)
        return limiter
