"""Configs of the reward layer: the LLM judge, its local stand-in server, and the
weighted composition of reward terms."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class CriterionConfig(BaseModel):
    """One rubric criterion the judge scores from 0 to 10."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Key of the criterion in the judge's JSON verdict.")
    weight: float = Field(ge=0, description="Weight of the criterion; weights are normalised to sum to 1.")
    description: str = Field(description="What the judge is asked to assess, shown in the judge prompt.")


def _seed_rubric() -> list[CriterionConfig]:
    # Seed 000: relevance 40 %, memorability 40 %, length 20 %.
    return [
        CriterionConfig(name="relevance", weight=0.4,
                        description="How well the domain name reflects the business described."),
        CriterionConfig(name="memorability", weight=0.4,
                        description="How easy the name is to remember, say and type: short words, no digits or stray symbols."),
        CriterionConfig(name="length", weight=0.2,
                        description="Whether the name has a good length: about 6 to 15 characters before the TLD."),
    ]


class LocalJudgeServerConfig(BaseModel):
    """The development stand-in judge (scripts/judge_server.py) the driver can start."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool | None = Field(default=None, description="Start the heuristic judge server on 127.0.0.1 for this run and stop it at the end (judge.base_url then points at it). Default (null): only when judge.base_url is unset.")
    latency_s: float = Field(default=0.0, ge=0, description="Added latency of each judge reply, in seconds (to simulate a remote judge).")
    fail_rate: float = Field(default=0.0, ge=0, le=1, description="Fault injection for tests: share of candidates answered with HTTP fail_status (deterministic per candidate text).")
    fail_status: int = Field(default=500, ge=400, le=599, description="HTTP status of injected failures.")
    malformed_rate: float = Field(default=0.0, ge=0, le=1, description="Fault injection for tests: share of candidates answered with non-JSON content.")


class JudgeConfig(BaseModel):
    """An LLM judge behind an OpenAI-compatible chat-completions endpoint."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str | None = Field(default=None, description="Base URL of the OpenAI-compatible API, e.g. https://api.cerebras.ai/v1. Unset (null): the run starts the local stand-in judge server.")
    model: str = Field(default="relay-heuristic-judge", description="Judge model name sent with each request.")
    api_key_env: str = Field(default="RELAY_JUDGE_API_KEY", description="Name of the environment variable that holds the API key (the key itself never goes in a config).")
    timeout_s: float = Field(default=30.0, gt=0, description="Timeout of one judge request, in seconds.")
    max_concurrency: int = Field(default=32, ge=1, description="Most judge requests in flight at once.")
    temperature: float = Field(default=0.0, ge=0, description="Judge sampling temperature (0 for repeatable verdicts).")
    max_tokens: int = Field(default=512, ge=1, description="Most tokens the judge may write per verdict.")
    strip_think: bool = Field(default=True, description="Remove <think>...</think> from the completion before judging.")
    check_endpoint: bool = Field(default=True, description="Before training, check that the endpoint answers GET /models; fail early if not.")
    criteria: list[CriterionConfig] = Field(default_factory=_seed_rubric, description="The weighted rubric (default: seed 000's relevance/memorability/length).")
    local_server: LocalJudgeServerConfig = Field(default_factory=LocalJudgeServerConfig, description="Development stand-in judge server.")

    @model_validator(mode="after")
    def _check(self) -> "JudgeConfig":
        if not self.criteria:
            raise ValueError("judge.criteria must name at least one criterion")
        if sum(c.weight for c in self.criteria) <= 0:
            raise ValueError("judge.criteria weights must not all be 0")
        if self.base_url is None and self.local_server.enabled is False:
            raise ValueError("judge.base_url is required when judge.local_server.enabled=false")
        if self.base_url is not None and self.local_server.enabled:
            raise ValueError("set either judge.base_url (a remote judge) or judge.local_server.enabled=true, not both")
        return self

    @property
    def uses_local_server(self) -> bool:
        """True when this run starts the stand-in judge server itself."""
        return self.base_url is None


class RewardTermConfig(BaseModel):
    """One weighted term of the total reward."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Registered reward name ('judge', 'domain_format', ...) or a dotted path 'package.module:function'.")
    weight: float = Field(default=1.0, description="Weight of this term in the total reward.")


class RewardConfig(BaseModel):
    """Total reward = sum of weight * term. A sample any of whose weighted terms
    fails is unscored (reward None), never 0."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    terms: list[RewardTermConfig] = Field(
        default_factory=lambda: [RewardTermConfig(name="judge", weight=1.0)],
        description="Reward terms and their weights.",
    )
