"""How a judge or an engine talks to its endpoints: the endpoints themselves,
retries of failed requests, and the circuit breaker per endpoint.

Shared by ``JudgeConfig`` (``rewards/judge/config.py``) and ``EngineConfig``
(``rewards/config.py``); imports neither.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CircuitBreakerConfig", "EndpointConfig", "RetryConfig"]


class EndpointConfig(BaseModel):
    """One OpenAI-compatible endpoint serving the judge (``judge.endpoints``).

    Unset fields inherit the judge's (or the engine's) value of the same name. Limits are
    per endpoint: every request of the pool to this endpoint shares them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(description="Base URL of the OpenAI-compatible API, e.g. https://api.cerebras.ai/v1.")
    model: str | None = Field(default=None, description="Model served here (default: the judge's or engine's model).")
    api_key_env: str | None = Field(
        default=None,
        description="Environment variable holding this endpoint's key (default: the judge's or engine's api_key_env).",
    )
    max_concurrency: int | None = Field(
        default=None,
        ge=1,
        description="Most requests in flight to this endpoint (default: the judge's or engine's max_concurrency).",
    )
    requests_per_minute: float | None = Field(
        default=None,
        gt=0,
        description="Request rate limit of this endpoint (default: the judge's or engine's requests_per_minute).",
    )
    tokens_per_minute: float | None = Field(
        default=None,
        gt=0,
        description="Token rate limit of this endpoint (default: the judge's or engine's tokens_per_minute).",
    )
    price_per_million_input_tokens: float | None = Field(
        default=None,
        ge=0,
        description="US dollars per million prompt tokens at this endpoint (default: the judge's or engine's).",
    )
    price_per_million_output_tokens: float | None = Field(
        default=None,
        ge=0,
        description="US dollars per million completion tokens at this endpoint (default: the judge's or engine's).",
    )


class RetryConfig(BaseModel):
    """Retries of judge requests that failed in transit.

    Only timeouts, connection errors and HTTP 408/409/429/5xx are retried,
    after an exponential backoff with jitter, or after the server's
    ``Retry-After`` when that is longer.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int = Field(
        default=4,
        ge=1,
        description="Most requests per sample for transport failures (1 = no retry); malformed-reply retries (judge.malformed_retries) come on top.",
    )
    initial_backoff_s: float = Field(default=0.5, ge=0, description="Backoff before the first retry, in seconds.")
    backoff_multiplier: float = Field(default=2.0, ge=1, description="Each further retry waits this many times longer.")
    max_backoff_s: float = Field(
        default=10.0,
        ge=0,
        description="Longest computed backoff, in seconds (a longer Retry-After is still honoured, within the deadline).",
    )
    jitter: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Random share taken off each backoff: the wait is uniform in [(1 - jitter) * b, b].",
    )
    deadline_s: float = Field(
        default=120.0,
        gt=0,
        description="Most seconds one sample may spend from its first request to its last reply, backoff included; a retry that cannot start before it is not made.",
    )


class CircuitBreakerConfig(BaseModel):
    """A circuit breaker per endpoint.

    Timeouts, connection errors and HTTP 502/503/504 count as failures; a
    successful reply resets the count. After ``failure_threshold`` consecutive
    failures the endpoint gets no requests for ``cooldown_s``; then one probe
    request is let through: success closes the circuit, failure re-opens it.
    HTTP 429 (throttling, handled by Retry-After), 500 (often specific to one
    input), other 4xx and malformed replies neither count nor reset.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    failure_threshold: int = Field(default=5, ge=1, description="Consecutive failures that open an endpoint's circuit.")
    cooldown_s: float = Field(
        default=10.0, ge=0, description="Seconds an open circuit waits before letting one probe request through."
    )
