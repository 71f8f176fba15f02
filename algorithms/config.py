"""Config of the policy-optimisation algorithm."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_DEFAULT_CLIP = {"grpo": (0.2, 0.2), "gspo": (3e-4, 4e-4)}


class AlgorithmConfig(BaseModel):
    """Which loss the learner optimises, with the papers' defaults per preset."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["grpo", "gspo"] = Field(default="grpo", description="grpo: per-token clipped ratio; gspo: sequence-level length-normalised ratio.")
    epsilon: float | None = Field(default=None, gt=0, description="Lower clip range (ratio >= 1-epsilon). Default: 0.2 for grpo, 3e-4 for gspo.")
    epsilon_high: float | None = Field(default=None, gt=0, description="Upper clip range (ratio <= 1+epsilon_high). Default: 0.2 for grpo, 4e-4 for gspo.")
    scale_rewards: bool = Field(default=True, description="Divide group-centred rewards by the group std (GRPO); false keeps them centred only.")

    @model_validator(mode="after")
    def _fill_defaults(self) -> "AlgorithmConfig":
        low, high = _DEFAULT_CLIP[self.name]
        if self.epsilon is None:
            object.__setattr__(self, "epsilon", low)
        if self.epsilon_high is None:
            object.__setattr__(self, "epsilon_high", high)
        return self
