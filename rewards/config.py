"""Configs of the reward layer: the LLM judge (endpoints, limits, retries,
circuit breaker, rubric, cache), its local stand-in server, the named LLM
engines reward terms may call (``reward.engines``), and the weighted
composition of reward terms. ``CriterionConfig`` is the rubric's
(``rewards/rubric.py``), re-exported here."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, PrivateAttr, model_validator

from rewards.rubric import CriterionConfig, Rubric, resolve_rubric

AUTO_CONCURRENCY_UNRESOLVED = 64
"""``judge.max_concurrency: auto`` where no driver resolved it (``JudgeConfig.with_inflight``)."""

__all__ = [
    "AUTO_CONCURRENCY_UNRESOLVED",
    "CircuitBreakerConfig",
    "CriterionConfig",
    "EndpointConfig",
    "EngineConfig",
    "JudgeConfig",
    "LocalJudgeServerConfig",
    "RetryConfig",
    "RewardConfig",
    "RewardTermConfig",
]


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


def _default_status_rates() -> dict[int, float]:
    return {}


class LocalJudgeServerConfig(BaseModel):
    """The development stand-in judge (scripts/judge_server.py) the driver can start.

    Two kinds of injected faults: *persistent* ones (``fail_rate``,
    ``malformed_rate``) hit the same candidates on every request, so those
    samples stay unscored; *transient* ones (``status_rates``, ``hang_rate``,
    ``empty_rate``, ``flaky_malformed_rate``) are drawn per (request, attempt
    number) from ``seed``, so a retry can succeed. All are reproducible.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool | None = Field(
        default=None,
        description="Start the heuristic judge server on 127.0.0.1 for this run and stop it at the end (judge.base_url then points at it). Default (null): only when judge.base_url and judge.endpoints are unset.",
    )
    latency_s: float = Field(
        default=0.0,
        ge=0,
        description="Mean added latency of each judge reply, in seconds (to simulate a remote judge).",
    )
    latency_jitter_s: float = Field(
        default=0.0,
        ge=0,
        description="Latency is uniform in latency_s +/- this (clipped at 0); exclusive with latency_sigma.",
    )
    latency_sigma: float = Field(
        default=0.0,
        ge=0,
        description="Log-normal latency with mean latency_s and this sigma of the underlying normal (0: off); exclusive with latency_jitter_s.",
    )
    fail_rate: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Persistent fault: share of candidates always answered with HTTP fail_status (deterministic per candidate text).",
    )
    fail_status: int = Field(default=500, ge=400, le=599, description="HTTP status of persistent failures.")
    malformed_rate: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Persistent fault: share of candidates always answered with non-JSON content.",
    )
    status_rates: dict[int, float] = Field(
        default_factory=_default_status_rates,
        description="Transient faults: HTTP status -> share of requests answered with it, e.g. {429: 0.05, 503: 0.05}.",
    )
    retry_after_s: float | None = Field(
        default=None,
        ge=0,
        description="Retry-After (seconds) sent with injected 429 and 503 answers (null: no header).",
    )
    hang_rate: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Transient fault: share of requests never answered (the server holds them for hang_s, past any sane timeout).",
    )
    hang_s: float = Field(
        default=30.0, gt=0, description="How long a hung request is held before the server drops the connection."
    )
    empty_rate: float = Field(
        default=0.0, ge=0, le=1, description="Transient fault: share of requests answered with empty content."
    )
    flaky_malformed_rate: float = Field(
        default=0.0, ge=0, le=1, description="Transient fault: share of requests answered with non-JSON content."
    )
    seed: int = Field(default=0, description="Seed of the transient faults and latency draws.")

    @model_validator(mode="after")
    def _check(self) -> LocalJudgeServerConfig:
        for status, rate in self.status_rates.items():
            if not 400 <= status <= 599 or not 0 <= rate <= 1:
                raise ValueError(
                    f"judge.local_server.status_rates: {status}={rate} needs a 4xx/5xx status and a rate in [0, 1]"
                )
        transient = sum(self.status_rates.values()) + self.hang_rate + self.empty_rate + self.flaky_malformed_rate
        if transient > 1:
            raise ValueError("judge.local_server: the transient fault rates add up to more than 1")
        if self.latency_jitter_s > 0 and self.latency_sigma > 0:
            raise ValueError("judge.local_server: set latency_jitter_s or latency_sigma, not both")
        return self


class JudgeConfig(BaseModel):
    """An LLM judge behind one or more OpenAI-compatible chat-completions endpoints."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str | None = Field(
        default=None,
        description="Base URL of the OpenAI-compatible API, e.g. https://api.cerebras.ai/v1 (the one-endpoint form; see endpoints). Unset with no endpoints: the run starts the local stand-in judge server.",
    )
    endpoints: list[EndpointConfig] = Field(
        default_factory=list,
        description="Several endpoints serving the judge, balanced by fewest outstanding requests, each with its own limits and circuit breaker (instead of base_url).",
    )
    model: str = Field(default="relay-heuristic-judge", description="Judge model name sent with each request.")
    api_key_env: str = Field(
        default="RELAY_JUDGE_API_KEY",
        description="Name of the environment variable that holds the API key (the key itself never goes in a config).",
    )
    timeout_s: float = Field(default=30.0, gt=0, description="Timeout of one judge request, in seconds.")
    max_concurrency: PositiveInt | Literal["auto"] = Field(
        default="auto",
        description="Most judge requests in flight at once, per endpoint. 'auto': what the pipeline can have in flight "
        "(the train and evaluate drivers set it, e.g. pipeline.prompts_per_step x rollout.group_size x "
        f"(pipeline.max_staleness + 1)), {AUTO_CONCURRENCY_UNRESOLVED} where no driver does; the rate and token "
        "limits still hold. A number always wins.",
    )
    requests_per_minute: float | None = Field(
        default=None, gt=0, description="Request rate limit per endpoint (token bucket; null: none)."
    )
    tokens_per_minute: float | None = Field(
        default=None,
        gt=0,
        description="Token rate limit per endpoint (null: none). A request is charged len(prompt)/4 + max_tokens up front, corrected by the reply's usage.",
    )
    burst_s: float = Field(
        default=1.0,
        gt=0,
        description="The rate buckets hold this many seconds of their rate: the largest burst above the steady rate.",
    )
    retry: RetryConfig = Field(
        default_factory=RetryConfig,
        description="Retries of failed requests (timeouts, connection errors, HTTP 408/409/429/5xx).",
    )
    circuit_breaker: CircuitBreakerConfig = Field(
        default_factory=CircuitBreakerConfig, description="Circuit breaker per endpoint."
    )
    temperature: float = Field(default=0.0, ge=0, description="Judge sampling temperature (0 for repeatable verdicts).")
    max_tokens: int = Field(default=512, ge=1, description="Most tokens the judge may write per verdict.")
    response_format: Literal["json_schema", "json_object", "none"] = Field(
        default="json_schema",
        description="json_schema: ask for the verdict's exact JSON schema; json_object: JSON mode; none: no response_format (providers without either; replies are then parsed tolerantly).",
    )
    malformed_retries: int = Field(
        default=1,
        ge=0,
        description="Times a sample is asked again after an empty, malformed or invalid verdict before it is left unscored.",
    )
    rubric: str = Field(
        default="seed000",
        description="Rubric: a name under rewards/rubrics/ (seed000) or a path to a rubric YAML file.",
    )
    criteria: list[CriterionConfig] | None = Field(
        default=None,
        description="Override of the rubric's criteria (null: the rubric's own). The rubric's template and request check stay; the cache key changes.",
    )
    strip_think: bool = Field(default=True, description="Remove <think>...</think> from the completion before judging.")
    rule_gate: bool = Field(
        default=True,
        description="Score empty or degenerate answers by rule (the rubric's minimum) without calling the judge; see rewards/gate.py.",
    )
    max_candidate_chars: int = Field(
        default=4000,
        ge=16,
        description="Longer candidates are cut to this many characters (with a marker) inside the candidate block.",
    )
    cache_size: int = Field(
        default=10000, ge=0, description="Verdicts kept in memory (LRU); 0 disables the memory cache."
    )
    cache_path: str | None = Field(
        default=None,
        description="SQLite file that keeps verdicts across runs (null: none), e.g. for evaluation reruns.",
    )
    check_endpoint: bool = Field(
        default=True, description="Before training, check that every endpoint answers GET /models; fail early if not."
    )
    local_server: LocalJudgeServerConfig = Field(
        default_factory=LocalJudgeServerConfig, description="Development stand-in judge server."
    )

    _rubric: object = PrivateAttr(default=None)  # (rubric, criteria, Rubric) resolved at validation

    @model_validator(mode="after")
    def _check(self) -> JudgeConfig:
        if self.base_url is not None and self.endpoints:
            raise ValueError("set either judge.base_url or judge.endpoints, not both")
        if self.criteria is not None and not self.criteria:
            raise ValueError("judge.criteria must name at least one criterion (or be null for the rubric's)")
        if self.criteria is not None and sum(c.weight for c in self.criteria) <= 0:
            raise ValueError("judge.criteria weights must not all be 0")
        remote = self.base_url is not None or bool(self.endpoints)
        if not remote and self.local_server.enabled is False:
            raise ValueError("judge.base_url (or judge.endpoints) is required when judge.local_server.enabled=false")
        if remote and self.local_server.enabled:
            raise ValueError(
                "set either a remote judge (judge.base_url / judge.endpoints) or judge.local_server.enabled=true, not both"
            )
        self.rubric_spec()  # loads the rubric now: a bad rubric fails early
        return self

    @property
    def concurrency(self) -> int:
        """``max_concurrency`` as a number (``AUTO_CONCURRENCY_UNRESOLVED`` for an unresolved 'auto')."""
        return AUTO_CONCURRENCY_UNRESOLVED if self.max_concurrency == "auto" else self.max_concurrency

    def with_inflight(self, inflight: int) -> JudgeConfig:
        """This config with 'auto' resolved to ``inflight``, the most judge requests the
        driver can have in flight (a number set by the user is kept)."""
        if self.max_concurrency != "auto":
            return self
        return self.model_copy(update={"max_concurrency": max(1, inflight)})

    @property
    def uses_local_server(self) -> bool:
        """True when this run starts the stand-in judge server itself."""
        return self.base_url is None and not self.endpoints

    def rubric_spec(self) -> Rubric:
        """The effective rubric (the rubric file with the ``criteria`` override applied).

        Loaded at validation and kept with the config (it travels to Ray actors
        with it); reloaded if ``rubric`` or ``criteria`` changed since (model_copy).
        """
        cached = self._rubric
        if not (isinstance(cached, tuple) and cached[0] == self.rubric and cached[1] == self.criteria):
            cached = (self.rubric, self.criteria, resolve_rubric(self.rubric, self.criteria))
            self._rubric = cached
        return cached[2]


_ENGINE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class EngineConfig(BaseModel):
    """A named LLM a reward term may call (``reward.engines.<name>``, ``ctx.llm(name)``).

    Configured like the judge: one endpoint (``base_url``) or several
    (``endpoints``), or ``local_server``, a stand-in server module the driver
    starts on 127.0.0.1 for the run. Every request goes through the same
    per-endpoint limits, retries, circuit breaker and reply cache as the judge's.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str | None = Field(
        default=None,
        description="Base URL of the OpenAI-compatible API (the one-endpoint form; see endpoints and local_server).",
    )
    endpoints: list[EndpointConfig] = Field(
        default_factory=list,
        description="Several endpoints serving this engine, balanced by fewest outstanding requests, each with its own limits and circuit breaker (instead of base_url).",
    )
    model: str = Field(description="Model name sent with each request.")
    api_key_env: str = Field(
        description="Name of the environment variable that holds the API key (the key itself never goes in a config); with local_server, a key is generated into it for the run when it is unset."
    )
    timeout_s: float = Field(default=60.0, gt=0, description="Timeout of one request, in seconds.")
    max_concurrency: int = Field(
        default=8,
        ge=1,
        description="Most requests in flight at once, per endpoint, shared by every term and sample of the pool.",
    )
    requests_per_minute: float | None = Field(
        default=None, gt=0, description="Request rate limit per endpoint (token bucket; null: none)."
    )
    tokens_per_minute: float | None = Field(
        default=None,
        gt=0,
        description="Token rate limit per endpoint (null: none); a request is charged len(prompt)/4 + max_tokens up front, corrected by the reply's usage.",
    )
    burst_s: float = Field(default=1.0, gt=0, description="The rate buckets hold this many seconds of their rate.")
    retry: RetryConfig = Field(
        default_factory=RetryConfig,
        description="Retries of failed requests (timeouts, connection errors, HTTP 408/409/429/5xx), per call.",
    )
    circuit_breaker: CircuitBreakerConfig = Field(
        default_factory=CircuitBreakerConfig, description="Circuit breaker per endpoint."
    )
    temperature: float = Field(
        default=0.0, ge=0, description="Sampling temperature of a call that does not give its own."
    )
    max_tokens: int = Field(
        default=512, ge=1, description="Most tokens a reply may have, for a call that does not give its own."
    )
    response_format: Literal["json_schema", "json_object", "none"] = Field(
        default="json_schema",
        description="What chat_json asks for: the schema's JSON schema, JSON mode, or nothing (the first JSON object of the reply is read).",
    )
    malformed_retries: int = Field(
        default=1,
        ge=0,
        description="Times a call is asked again after an empty, malformed or invalid reply before it fails.",
    )
    cache_size: int = Field(
        default=10000,
        ge=0,
        description="Replies kept in memory (LRU), keyed by model, messages and parameters; 0 disables it (identical calls in flight still share one request).",
    )
    local_server: str | None = Field(
        default=None,
        description="Module of a stand-in server (e.g. scripts.geo_engine_server) the driver starts on 127.0.0.1 for the run, with a per-run key, and stops at the end (instead of base_url / endpoints).",
    )
    local_server_args: list[str] = Field(
        default_factory=list,
        description="Extra command-line arguments of the local server, e.g. [--latency-s, '0.1', --status-rate, '429=0.1,503=0.1'].",
    )

    @model_validator(mode="after")
    def _check(self) -> EngineConfig:
        given = [
            k
            for k, v in (
                ("base_url", self.base_url),
                ("endpoints", self.endpoints),
                ("local_server", self.local_server),
            )
            if v
        ]
        if len(given) != 1:
            raise ValueError(f"set exactly one of base_url, endpoints or local_server (got {given or 'none'})")
        if self.local_server is not None and not _MODULE_RE.match(self.local_server):
            raise ValueError(
                f"local_server {self.local_server!r} is not a module path such as scripts.geo_engine_server"
            )
        if self.local_server_args and self.local_server is None:
            raise ValueError("local_server_args needs local_server")
        return self

    @property
    def uses_local_server(self) -> bool:
        """True when the run starts this engine's stand-in server itself."""
        return self.local_server is not None and self.base_url is None


class RewardTermConfig(BaseModel):
    """One weighted term of the total reward."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        description="Registered reward name ('judge', 'domain_format', ...) or a dotted path 'package.module:function'."
    )
    weight: float = Field(default=1.0, description="Weight of this term in the total reward.")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments passed to a user function term on every call (e.g. {engine: geo}); registered terms take none.",
    )


class RewardConfig(BaseModel):
    """Total reward = sum of weight * term. A sample any of whose weighted terms
    fails is unscored (reward None), never 0."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    terms: list[RewardTermConfig] = Field(
        default_factory=lambda: [RewardTermConfig(name="judge", weight=1.0)],
        description="Reward terms and their weights.",
    )
    engines: dict[str, EngineConfig] = Field(
        default_factory=dict,
        description="Named LLMs that user terms taking a ctx argument call with ctx.llm(name); 'judge' is reserved for the judge's own endpoints.",
    )

    @model_validator(mode="after")
    def _check(self) -> RewardConfig:
        for name in self.engines:
            if name == "judge":
                raise ValueError(
                    "reward.engines: the name 'judge' is reserved (ctx.llm('judge') is the judge's endpoints)"
                )
            if not _ENGINE_NAME_RE.match(name):
                raise ValueError(f"reward.engines: {name!r} is not a valid engine name (letters, digits, '_' and '-')")
        return self
