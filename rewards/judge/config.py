"""Configs of the judge: the LLM judge (endpoints, limits, retries, circuit
breaker, rubric, cache) and its local stand-in server.

Its sections come from their own modules: the endpoint, retry and circuit-breaker
sections from ``rewards/client/config.py``, the rubric criteria from
``rewards/judge/rubric.py``; the reward terms and engines are ``rewards/config.py``'s.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, PrivateAttr, model_validator

from rewards.client.config import CircuitBreakerConfig, EndpointConfig, RetryConfig
from rewards.judge.alarms_config import AlarmConfig
from rewards.judge.rubric import CriterionConfig, Rubric, resolve_rubric

AUTO_CONCURRENCY_UNRESOLVED = 64
"""``judge.max_concurrency: auto`` where no driver resolved it (``JudgeConfig.with_inflight``)."""

__all__ = ["AUTO_CONCURRENCY_UNRESOLVED", "JudgeConfig", "JudgeMemberConfig", "LocalJudgeServerConfig"]


def _default_status_rates() -> dict[int, float]:
    return {}


class LocalJudgeServerConfig(BaseModel):
    """The development stand-in judge (rewards/stand_in/judge_server.py) the driver can start.

    Two kinds of injected faults: *persistent* ones (``fail_rate``,
    ``malformed_rate``) hit the same candidates on every request, so those
    samples stay unscored; *transient* ones (``status_rates``, ``hang_rate``,
    ``empty_rate``, ``flaky_malformed_rate``) are drawn per (request, attempt
    number) from ``seed``, so a retry can succeed. All are reproducible.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool | None = Field(
        default=None,
        description="Start the heuristic stand-in judge (rewards/stand_in/judge_server.py: it scores domain names by rule, it is not an LLM) on 127.0.0.1 for this run and stop it at the end (judge.base_url then points at it). null: only for the built-in domain-name demo's data.path when judge.base_url and judge.endpoints are unset (with your own data.path null means false); true: always; false: never (then a judge term needs judge.base_url or judge.endpoints).",
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
    position_bias: float = Field(
        default=0.0,
        ge=-10,
        le=10,
        description="Known bias, for measuring the controls: in a group request, the completion shown first gets this many points (0-10 scale) more on every criterion, the last none, linearly in between.",
    )
    length_bias: float = Field(
        default=0.0,
        ge=-10,
        le=10,
        description="Known bias, for measuring the controls: every criterion gets this many points (0-10 scale) times the candidate's length in characters over 100 (capped at 1) more.",
    )
    outage_after_requests: int | None = Field(
        default=None,
        ge=0,
        description="Simulated outage: after this many chat requests every chat request is answered HTTP 503 for outage_s seconds, then served again; GET /models keeps answering (null: none).",
    )
    outage_s: float = Field(default=0.0, ge=0, description="Length of the simulated outage, in seconds.")

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


class JudgeMemberConfig(BaseModel):
    """One judge of an ensemble (``judge.ensemble``): its own endpoints, model and limits;
    every field left unset is the enclosing judge's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        pattern=r"^[A-Za-z0-9_.-]+$", description="Short name of this judge in metrics (judge/member/<name>/...)."
    )
    weight: float = Field(default=1.0, gt=0, description="Weight of this judge in the ensemble's mean.")
    base_url: str | None = Field(default=None, description="Base URL of this judge's API (or endpoints).")
    endpoints: list[EndpointConfig] = Field(default_factory=list, description="This judge's endpoints (or base_url).")
    model: str | None = Field(default=None, description="Model name of this judge (default: judge.model).")
    api_key_env: str | None = Field(
        default=None, description="Variable holding this judge's API key (default: judge.api_key_env)."
    )
    max_concurrency: PositiveInt | None = Field(
        default=None, description="Most requests in flight per endpoint of this judge (default: judge.max_concurrency)."
    )
    requests_per_minute: float | None = Field(
        default=None, gt=0, description="Request rate limit per endpoint (default: judge.requests_per_minute)."
    )
    tokens_per_minute: float | None = Field(
        default=None, gt=0, description="Token rate limit per endpoint (default: judge.tokens_per_minute)."
    )
    price_per_million_input_tokens: float | None = Field(
        default=None, ge=0, description="US dollars per million prompt tokens (default: the judge's)."
    )
    price_per_million_output_tokens: float | None = Field(
        default=None, ge=0, description="US dollars per million completion tokens (default: the judge's)."
    )
    local_server: LocalJudgeServerConfig | None = Field(
        default=None,
        description="Start a stand-in judge server for this member (development and tests; enabled: true), instead of base_url.",
    )

    @model_validator(mode="after")
    def _check(self) -> JudgeMemberConfig:
        where = f"judge.ensemble[{self.name}]"
        stand_in = self.local_server is not None and self.local_server.enabled is True
        if self.base_url is not None and self.endpoints:
            raise ValueError(f"{where}: set either base_url or endpoints, not both")
        if stand_in and (self.base_url is not None or self.endpoints):
            raise ValueError(f"{where}: set either base_url/endpoints or local_server.enabled: true, not both")
        if not stand_in and self.base_url is None and not self.endpoints:
            raise ValueError(f"{where} needs base_url, endpoints or local_server.enabled: true")
        return self


class JudgeConfig(BaseModel):
    """An LLM judge behind one or more OpenAI-compatible chat-completions endpoints."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str | None = Field(
        default=None,
        description="Base URL of the OpenAI-compatible API, e.g. https://api.cerebras.ai/v1 (the one-endpoint form; see endpoints). Unset with no endpoints: the domain-name demo starts the local stand-in judge server (judge.local_server.enabled); a run on its own data.path with a judge term must set it (or endpoints).",
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
    max_tokens: int = Field(
        default=512,
        ge=1,
        description="Most tokens the judge may write per verdict (a group request: this times its completions).",
    )
    response_format: Literal["json_schema", "json_object", "none"] = Field(
        default="json_schema",
        description="json_schema: ask for the verdict's exact JSON schema; json_object: JSON mode; none: no response_format (providers without either; replies are then parsed tolerantly).",
    )
    malformed_retries: int = Field(
        default=1,
        ge=0,
        description="Times a sample is asked again after an empty, malformed or invalid verdict before it is left unscored.",
    )
    rubric: str | None = Field(
        default="seed000",
        description="Rubric: a name under rewards/judge/rubrics/ (seed000, the domain-name demo's) or a path to a rubric YAML file (its system_template needs the placeholders $criteria, $fences and $output_format). null: judge.criteria on a neutral template. A run on its own data.path gets null unless it sets one.",
    )
    criteria: list[CriterionConfig] | None = Field(
        default=None,
        description="Criteria to score (each {name, weight, description}): with judge.rubric, they replace the rubric's own (its template and request check stay; the cache key changes); with judge.rubric null, they go on a neutral template (no task text, no request check).",
    )
    strip_think: bool = Field(default=True, description="Remove <think>...</think> from the completion before judging.")
    rule_gate: bool = Field(
        default=True,
        description="Score empty or degenerate answers by rule (the rubric's minimum) without calling the judge; see rewards/judge/gate.py.",
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
    price_per_million_input_tokens: float = Field(
        default=0.0,
        ge=0,
        description="US dollars per million prompt tokens (per endpoint: endpoints[*].price_per_million_input_tokens); the cost is judge/cost_usd.",
    )
    price_per_million_output_tokens: float = Field(
        default=0.0,
        ge=0,
        description="US dollars per million completion tokens (per endpoint: endpoints[*].price_per_million_output_tokens); the cost is judge/cost_usd.",
    )
    budget_usd: float | None = Field(
        default=None,
        gt=0,
        description="Stop the run (as on SIGTERM: checkpoint, exit code 143, resume line) before the judge's and the engines' spending would pass this many US dollars; never mid-step. null: no budget.",
    )
    max_outage_s: float = Field(
        default=1800.0,
        gt=0,
        description="When no judge endpoint answers, the run launches no new batches and the judge pool keeps every sample the outage failed, scoring it again once the judge answers; an outage this long gets a checkpoint after min(120 s, half of it) and then stops the run as on SIGTERM (checkpoint, exit code 143, resume line).",
    )
    mode: Literal["pointwise", "group"] = Field(
        default="pointwise",
        description="pointwise: one request per completion; group: one request per prompt group, its completions labelled in a seeded random order and scored relative to each other under the same rubric.",
    )
    group_passes: int = Field(
        default=1,
        ge=1,
        le=2,
        description="Group mode: 2 judges each group again in the reversed order and averages the two scores (cancels a position bias; order agreement is logged).",
    )
    max_group_size: PositiveInt = Field(
        default=16, description="Group mode: larger groups are split into requests of at most this many completions."
    )
    ensemble: list[JudgeMemberConfig] = Field(
        default_factory=list,
        description="Several judges scoring every sample, asked concurrently and aggregated by ensemble_aggregate (at least 2 members, each with base_url, endpoints or local_server.enabled: true; judge.base_url, judge.endpoints and judge.local_server.enabled then stay unset); each member's unset fields are this judge's. Empty: this judge alone.",
    )
    ensemble_aggregate: Literal["mean", "median", "min"] = Field(
        default="mean",
        description="How the ensemble members' rewards combine (mean is weighted by the members' weights); a failed member is left out, and only when all fail is the sample unscored.",
    )
    alarms: AlarmConfig = Field(default_factory=AlarmConfig, description="Reward-hacking alarms (judge/alarm metrics).")
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
        if self.is_remote and self.local_server.enabled:
            raise ValueError(
                "set either a remote judge (judge.base_url / judge.endpoints) or judge.local_server.enabled=true, not both"
            )
        _check_ensemble(self)
        if self.rubric is not None or self.criteria is not None:
            self.rubric_spec()  # loads the rubric now: a bad rubric fails early
        return self

    @property
    def is_remote(self) -> bool:
        """True when an endpoint is configured (``base_url`` or ``endpoints``)."""
        return self.base_url is not None or bool(self.endpoints)

    @property
    def has_endpoint(self) -> bool:
        """True when the judge can be called: an endpoint is configured or the stand-in will be started.
        Without one (``local_server.enabled: false`` and no endpoint) a judge term cannot run."""
        return self.is_remote or self.uses_local_server or bool(self.ensemble)

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
        """True when this run starts the stand-in judge server itself (``local_server.enabled``
        true, or null without an endpoint; a run on its own data.path has null resolved to false).
        Never with an ensemble: its members' stand-ins (``ensemble[*].local_server``) are started instead."""
        return not self.is_remote and not self.ensemble and self.local_server.enabled is not False

    def rubric_spec(self) -> Rubric:
        """The effective rubric (the rubric file with the ``criteria`` override applied).

        Loaded at validation and kept with the config (it travels to Ray actors
        with it); reloaded if ``rubric`` or ``criteria`` changed since (model_copy).
        """
        cached = self._rubric  # resolve_rubric: RubricError when neither rubric nor criteria is set
        if not (isinstance(cached, tuple) and cached[0] == self.rubric and cached[1] == self.criteria):
            cached = (self.rubric, self.criteria, resolve_rubric(self.rubric, self.criteria))
            self._rubric = cached
        return cached[2]


def _check_ensemble(judge: JudgeConfig) -> None:
    """ValueError (one line) for an ensemble of fewer than 2 members, a name used twice, or the
    judge's own endpoint or stand-in set beside it (each member has its own)."""
    if not judge.ensemble:
        return
    names = [m.name for m in judge.ensemble]
    if len(names) < 2:
        raise ValueError("judge.ensemble needs at least 2 members (one judge: set judge.base_url instead)")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"judge.ensemble names {twice} more than once")
    if judge.is_remote:
        raise ValueError("judge.ensemble: set base_url/endpoints on each member, not judge.base_url/judge.endpoints")
    if judge.local_server.enabled:
        raise ValueError("judge.ensemble: set local_server on each member, not judge.local_server.enabled")
