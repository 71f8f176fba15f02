"""The stand-in judge's simulated outage (``--outage-after-requests N --outage-s T``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["Outage"]


class Outage:
    """The simulated outage: request ``after + 1`` and every one in the ``seconds`` after it are
    answered 503 (``None`` or 0 seconds: never). Thread-safe; ``clock`` is injectable."""

    def __init__(self, after: int | None, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._after, self._seconds, self._clock = after, seconds, clock
        self._seen = 0
        self._started: float | None = None
        self._lock = threading.Lock()

    def down(self) -> bool:
        """Count one chat request; True when it falls in the outage."""
        if self._after is None or self._seconds <= 0:
            return False
        with self._lock:
            if self._started is None:
                self._seen += 1
                if self._seen <= self._after:
                    return False
                self._started = self._clock()
            return self._clock() - self._started < self._seconds
