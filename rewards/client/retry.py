"""Which judge failures are retried, and how long to wait before a retry.

Retried: ``judge_timeout``, ``judge_connection_error`` and HTTP 408, 409, 429
and 5xx (``is_retryable``). Everything else (other 4xx, e.g. a rejected key
or a bad request) fails the sample at once.

Wait before retry ``n`` (``n = 1`` for the first retry): the backoff
``b = min(max_backoff_s, initial_backoff_s * multiplier ** (n - 1))`` less a
random share, uniform in ``[(1 - jitter) * b, b]``; if the server sent
``Retry-After`` (429/503 answers), the wait is the longer of the two.
``Retry-After`` is read as delay-seconds (fractions accepted) or an HTTP
date; OpenAI's ``retry-after-ms`` is read too. Unparseable, negative or past
values are ignored.
"""

from __future__ import annotations

import email.utils
import math
import random
from collections.abc import Mapping

from rewards.client.config import RetryConfig

__all__ = [
    "BREAKER_CAUSES",
    "RETRYABLE_STATUSES",
    "RetryPolicy",
    "is_retryable",
    "parse_retry_after",
    "trips_breaker",
]

RETRYABLE_STATUSES = frozenset({408, 409, 429, *range(500, 600)})
BREAKER_CAUSES = frozenset(
    {"judge_timeout", "judge_connection_error", "judge_http_502", "judge_http_503", "judge_http_504"}
)
"""Failures that count towards opening an endpoint's circuit (see CircuitBreakerConfig)."""


def _status_of(cause: str) -> int | None:
    prefix = "judge_http_"
    if cause.startswith(prefix) and cause[len(prefix) :].isdigit():
        return int(cause[len(prefix) :])
    return None


def is_retryable(cause: str) -> bool:
    """True for timeouts, connection errors and HTTP 408/409/429/5xx causes."""
    if cause in ("judge_timeout", "judge_connection_error"):
        return True
    status = _status_of(cause)
    return status is not None and status in RETRYABLE_STATUSES


def trips_breaker(cause: str) -> bool:
    """True when ``cause`` counts as an endpoint failure for its circuit breaker."""
    return cause in BREAKER_CAUSES


def parse_retry_after(headers: Mapping[str, str], now_wall: float) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an
    HTTP date, relative to ``now_wall``), or None when absent or unusable."""
    lowered = {k.lower(): v for k, v in headers.items()}
    millis = _non_negative(lowered.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000.0
    value = lowered.get("retry-after")
    if value is None:
        return None
    seconds = _non_negative(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    delay = when.timestamp() - now_wall
    return delay if delay >= 0 else None


def _non_negative(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


class RetryPolicy:
    """Backoff delays of ``judge.retry`` (see the module docstring)."""

    def __init__(self, config: RetryConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self._rng = rng or random.Random()

    def __repr__(self) -> str:
        return f"RetryPolicy({self.config!r})"

    def backoff(self, retry_number: int) -> float:
        """The un-jittered backoff before retry ``retry_number`` (1-based)."""
        if retry_number < 1:
            raise ValueError("retry numbers start at 1")
        c = self.config
        return min(c.max_backoff_s, c.initial_backoff_s * c.backoff_multiplier ** (retry_number - 1))

    def delay(self, retry_number: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry ``retry_number``: jittered backoff, or Retry-After if longer."""
        b = self.backoff(retry_number)
        jittered = b * (1.0 - self.config.jitter * self._rng.random())
        return max(jittered, retry_after) if retry_after is not None else jittered
