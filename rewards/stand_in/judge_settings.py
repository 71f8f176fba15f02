"""The stand-in judge's settings and the faults they inject (``rewards/stand_in/judge_server.py``'s
module docstring describes them): persistent faults per candidate, transient faults and
latency per (request, attempt), drawn reproducibly from ``seed``."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import SecretStr

from rewards.stand_in.http import check_fault_settings, fault_bucket, pick_fault

__all__ = [
    "DEFAULT_MODEL",
    "MALFORMED_CONTENT",
    "ServerSettings",
    "injects_failure",
    "injects_malformed",
    "reply_latency",
    "transient_fault",
]

DEFAULT_MODEL = "relay-heuristic-judge"
_FAIL_SALT = "fail"
_MALFORMED_SALT = "malformed"
MALFORMED_CONTENT = "I am sorry, I cannot produce a verdict in JSON today."


def injects_failure(candidate: str, fail_rate: float) -> bool:
    """Whether a server with ``--fail-rate fail_rate`` fails this candidate."""
    return fault_bucket(candidate, _FAIL_SALT) < fail_rate


def injects_malformed(candidate: str, malformed_rate: float) -> bool:
    """Whether a server with ``--malformed-rate`` answers this candidate with non-JSON
    content (only checked for candidates that do not fail)."""
    return fault_bucket(candidate, _MALFORMED_SALT) < malformed_rate


def transient_fault(settings: ServerSettings, description: str, candidate: str, attempt: int) -> str | None:
    """The transient fault of this (request, attempt): "hang", "status:<code>",
    "empty", "malformed" or None (see the module docstring)."""
    draw = fault_bucket(f"{settings.seed}\0{attempt}\0{description}\0{candidate}", "transient")
    return pick_fault(draw, settings.transient_plan())


def reply_latency(settings: ServerSettings, description: str, candidate: str, attempt: int) -> float:
    """Seconds to wait before answering this (request, attempt) (see the module docstring)."""
    mean = settings.latency_s
    if mean <= 0:
        return 0.0
    if settings.latency_jitter_s <= 0 and settings.latency_sigma <= 0:
        return mean
    seed = fault_bucket(f"{settings.seed}\0{attempt}\0{description}\0{candidate}", "latency")
    rng = random.Random(seed)
    if settings.latency_sigma > 0:
        sigma = settings.latency_sigma
        return rng.lognormvariate(math.log(mean) - sigma * sigma / 2.0, sigma)
    return max(0.0, rng.uniform(mean - settings.latency_jitter_s, mean + settings.latency_jitter_s))


@dataclass(frozen=True)
class ServerSettings:
    """Behaviour of one server (module docstring); ``api_key`` None means no auth."""

    model: str = DEFAULT_MODEL
    latency_s: float = 0.0
    api_key: SecretStr | None = None
    fail_rate: float = 0.0
    fail_status: int = 500
    malformed_rate: float = 0.0
    latency_jitter_s: float = 0.0
    latency_sigma: float = 0.0
    status_rates: Mapping[int, float] = field(default_factory=dict)
    retry_after_s: float | None = None
    hang_rate: float = 0.0
    hang_s: float = 30.0
    empty_rate: float = 0.0
    flaky_malformed_rate: float = 0.0
    seed: int = 0
    position_bias: float = 0.0
    length_bias: float = 0.0
    outage_after_requests: int | None = None
    outage_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("latency_s", "latency_jitter_s", "latency_sigma"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.latency_jitter_s > 0 and self.latency_sigma > 0:
            raise ValueError("set latency_jitter_s or latency_sigma, not both")
        for name in ("fail_rate", "malformed_rate", "hang_rate", "empty_rate", "flaky_malformed_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if not 400 <= self.fail_status <= 599:
            raise ValueError("fail_status must be an HTTP error status (400-599)")
        check_fault_settings(self.status_rates, self.retry_after_s, self.api_key)
        if sum(rate for _, rate in self.transient_plan()) > 1.0 + 1e-9:
            raise ValueError("the transient fault rates add up to more than 1")
        if self.hang_s <= 0:
            raise ValueError("hang_s must be > 0")
        if (self.outage_after_requests is not None and self.outage_after_requests < 0) or self.outage_s < 0:
            raise ValueError("outage_after_requests and outage_s must be >= 0")

    def transient_plan(self) -> list[tuple[str, float]]:
        """The transient faults and their rates, in draw order."""
        plan = [("hang", self.hang_rate)]
        plan += [(f"status:{status}", rate) for status, rate in sorted(self.status_rates.items())]
        return plan + [("empty", self.empty_rate), ("malformed", self.flaky_malformed_rate)]
