"""The ``reward`` config section: the weighted reward terms and the named LLM
engines (``reward.engines``) that user terms may call."""

from __future__ import annotations

import logging
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rewards.client.config import CircuitBreakerConfig, EndpointConfig, RetryConfig

__all__ = ["EngineConfig", "RewardConfig", "RewardTermConfig"]

log = logging.getLogger(__name__)

MOVED_MODULES = {
    "rewards.geo": "rewards.recipes.geo",
    "rewards.refiner": "rewards.recipes.refiner",
    "scripts.geo_engine_server": "rewards.stand_in.geo_engine",
    "scripts.refiner_verifier_server": "rewards.stand_in.refiner_verifier",
}
"""Modules a config may name by the path they had before the packages were regrouped
(docs/changelog.md): a term ``rewards.geo:visibility_gain`` or an engine's ``local_server:
scripts.geo_engine_server`` still loads, under its new name, with a warning."""


def current_module_path(path: str, key: str) -> str:
    """``path`` (``module`` or ``module:attribute``) with a moved module's old name replaced by
    its new one (``MOVED_MODULES``), logged once per load under ``key``; other paths unchanged."""
    module, sep, rest = path.partition(":")
    if module not in MOVED_MODULES:
        return path
    new = MOVED_MODULES[module] + sep + rest
    log.warning("%s: %s has moved; loading it as %s (write the new name to silence this)", key, path, new)
    return new


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
    price_per_million_input_tokens: float = Field(
        default=0.0,
        ge=0,
        description="US dollars per million prompt tokens (per endpoint: endpoints[*].price_per_million_input_tokens); counted in judge/cost_usd.",
    )
    price_per_million_output_tokens: float = Field(
        default=0.0,
        ge=0,
        description="US dollars per million completion tokens (per endpoint: endpoints[*].price_per_million_output_tokens); counted in judge/cost_usd.",
    )
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
        description="Module of a stand-in server (e.g. rewards.stand_in.geo_engine) the driver starts on 127.0.0.1 for the run, with a per-run key, and stops at the end (instead of base_url / endpoints).",
    )
    local_server_args: list[str] = Field(
        default_factory=list,
        description="Extra command-line arguments of the local server, e.g. [--latency-s, '0.1', --status-rate, '429=0.1,503=0.1'].",
    )

    @field_validator("local_server", mode="before")
    @classmethod
    def _moved_server(cls, value: Any) -> Any:
        return current_module_path(value, "local_server") if isinstance(value, str) else value

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
                f"local_server {self.local_server!r} is not a module path such as rewards.stand_in.geo_engine"
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
        description="Registered reward name ('judge', 'domain_format', ...) or a dotted path 'package.module:function' (a relay per-sample function or a TRL reward function; see style)."
    )
    weight: float = Field(default=1.0, description="Weight of this term in the total reward.")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments passed to a user function term on every call (e.g. {engine: geo}); registered terms take none.",
    )
    style: Literal["auto", "sample", "trl"] = Field(
        default="auto",
        description="How a user function is called. sample: relay's per-sample fn(prompt, completion[, ctx]); trl: TRL's GRPOTrainer convention, batched fn(prompts=..., completions=..., completion_ids=..., <dataset columns>=...) -> list[float | None]; auto: trl when the function has a parameter named completions, else sample.",
    )

    @field_validator("name", mode="before")
    @classmethod
    def _moved_function(cls, value: Any) -> Any:
        return current_module_path(value, "reward.terms[*].name") if isinstance(value, str) else value


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
