"""Config of the policy-optimisation algorithm: a preset plus individual knobs.

``algorithm.name`` picks a preset (``algorithms/presets.py``) with the papers'
defaults. Every preset-dependent field defaults to ``null``, which means "the
preset's value"; a value set in the config overrides the preset. Keeping the
``null`` (instead of writing the preset's value into the field) means a config
that only changes ``name`` gets that preset's defaults everywhere, even when it
was copied from ``configs/cpu_default.yaml``. Code reads the effective values
from ``AlgorithmConfig.settings``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from algorithms.presets import (
    DAPO_OVERLONG_BUFFER_FRACTION,
    PRESETS,
    Baseline,
    ImportanceLevel,
    KlEstimator,
    KlPenalty,
    LossAggregation,
    PresetName,
    ScaleRewards,
)

RolloutCorrection = Literal["none", "truncate", "mask"]
RolloutCorrectionLevel = Literal["token", "sequence"]


def _preset(values: str) -> str:
    """The tail of a preset-dependent field's description."""
    return f" Null: the preset's value ({values})."


@dataclass(frozen=True)
class AlgorithmSettings:
    """Effective algorithm values (preset filled in), as the learner and pipeline use them.

    Invariants: ``0 <= epsilon < 1``; ``epsilon_high > 0``; ``beta >= 0``;
    ``rollout_correction_cap > 1``; ``overlong_buffer`` is None only when it is
    the DAPO preset's fraction of ``rollout.max_new_tokens``.
    """

    name: str
    epsilon: float
    epsilon_high: float
    beta: float
    kl_estimator: KlEstimator
    kl_penalty: KlPenalty
    importance_sampling_level: ImportanceLevel
    baseline: Baseline
    scale_rewards: ScaleRewards
    whiten_advantages: bool
    loss_aggregation: LossAggregation
    num_iterations: int
    num_minibatches: int
    rollout_correction: RolloutCorrection
    rollout_correction_level: RolloutCorrectionLevel
    rollout_correction_cap: float
    dynamic_sampling: bool
    max_refill_rounds: int
    overlong_filtering: bool
    overlong_buffer: int | None
    overlong_penalty_factor: float

    @property
    def needs_reference(self) -> bool:
        """A frozen reference policy is loaded iff the KL term is on."""
        return self.beta > 0

    @property
    def uses_proximal(self) -> bool:
        """The clip's "old" policy is the learner's own pre-update policy (recomputed),
        not the rollout's behaviour policy: with several epochs, or when the
        rollout/learner mismatch is corrected by importance sampling."""
        return self.num_iterations > 1 or self.rollout_correction != "none"

    def overlong_buffer_tokens(self, max_new_tokens: int) -> int:
        """Tokens of the soft overlong penalty's ramp for this completion limit (0 = off)."""
        if self.overlong_buffer is None:
            return max(1, math.floor(DAPO_OVERLONG_BUFFER_FRACTION * max_new_tokens))
        return self.overlong_buffer


class AlgorithmConfig(BaseModel):
    """Which loss the learner optimises: a preset by name, each knob overridable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: PresetName = Field(
        default="grpo",
        description="Preset with the papers' defaults: grpo, gspo, dr_grpo, dapo, rloo, reinforce_pp (table in docs/concepts/algorithms.md). Fields left null take the preset's value.",
    )
    epsilon: float | None = Field(
        default=None, ge=0, lt=1, description="Lower clip range (ratio >= 1-epsilon)." + _preset("0.2; 3e-4 for gspo")
    )
    epsilon_high: float | None = Field(
        default=None,
        gt=0,
        description="Upper clip range (ratio <= 1+epsilon_high)."
        + _preset("0.2; 4e-4 for gspo, 0.28 for dapo (clip-higher)"),
    )
    beta: float | None = Field(
        default=None,
        ge=0,
        description="KL coefficient to a frozen reference policy; 0 loads no reference. With LoRA the reference is the base model (adapters disabled)."
        + _preset("0; 0.05 for rloo, 0.01 for reinforce_pp"),
    )
    kl_estimator: KlEstimator | None = Field(
        default=None,
        description="Per-token KL estimator (Schulman): k1 = log(pi/ref), k2 = (log(pi/ref))^2/2, k3 = ref/pi - log(ref/pi) - 1."
        + _preset("k3; k1 for rloo and reinforce_pp"),
    )
    kl_penalty: KlPenalty | None = Field(
        default=None,
        description="loss: beta*KL added to each token's loss (GRPO); reward: -beta*KL folded into the reward as a per-token return (RLOO, REINFORCE++)."
        + _preset("loss; reward for rloo and reinforce_pp"),
    )
    importance_sampling_level: ImportanceLevel | None = Field(
        default=None,
        description="token: per-token ratio (PPO/GRPO); sequence: one length-normalised ratio per sequence (GSPO); sequence_token: GSPO-token (sequence ratio value, per-token gradient)."
        + _preset("token; sequence for gspo"),
    )
    baseline: Baseline | None = Field(
        default=None,
        description="Advantage baseline: group_mean (GRPO), leave_one_out (RLOO: mean of the other samples of the group), none (REINFORCE++)."
        + _preset("group_mean; leave_one_out for rloo, none for reinforce_pp"),
    )
    scale_rewards: ScaleRewards | None = Field(
        default=None,
        description="Divide centred rewards by the std of their group, of the batch, or not at all (true/false are read as group/none)."
        + _preset("group; none for dr_grpo, rloo, reinforce_pp"),
    )
    whiten_advantages: bool | None = Field(
        default=None,
        description="Normalise the final per-token advantages over all completion tokens of the batch (REINFORCE++'s global batch normalisation)."
        + _preset("false; true for reinforce_pp"),
    )
    loss_aggregation: LossAggregation | None = Field(
        default=None,
        description="sequence_mean: mean over each sequence's tokens, then over sequences (GRPO); token_mean: mean over all tokens of the (mini)batch (DAPO); sequence_sum: sum over each sequence's tokens, mean over sequences (RLOO); constant: token sum / (sequences x rollout.max_new_tokens) (Dr. GRPO)."
        + _preset("sequence_mean; token_mean for dapo and reinforce_pp, sequence_sum for rloo, constant for dr_grpo"),
    )
    num_iterations: int = Field(
        default=1,
        ge=1,
        description="Passes (epochs) over each rollout batch. With more than one, the clip's old policy is the learner's pre-update policy, recomputed once per batch.",
    )
    num_minibatches: int | None = Field(
        default=None,
        ge=1,
        description="Optimiser steps per pass over a rollout batch (the batch split into this many contiguous minibatches)."
        + _preset("1; 4 for gspo"),
    )
    rollout_correction: RolloutCorrection = Field(
        default="none",
        description="Correct the mismatch between the rollout's log-probs and the learner's pre-update ones by truncated importance sampling (truncate: weight min(ratio, cap)) or masking (mask: weight 0 above cap). Any value other than none makes the clip's old policy the recomputed pre-update policy.",
    )
    rollout_correction_level: RolloutCorrectionLevel = Field(
        default="token",
        description="token: one weight per token; sequence: one weight per sequence (product of its token ratios).",
    )
    rollout_correction_cap: float = Field(
        default=2.0, gt=1, description="Cap C of the importance weight (truncated at C, or masked above C)."
    )
    dynamic_sampling: bool | None = Field(
        default=None,
        description="DAPO dynamic sampling: drop groups whose rewards are all equal and refill the step from new prompts, generated with the newest weights."
        + _preset("false; true for dapo"),
    )
    max_refill_rounds: int = Field(
        default=4,
        ge=1,
        description="Most extra rollout rounds per step for dynamic sampling; when exhausted the step trains on the groups it has (dynamic_sampling/exhausted = 1), and fails if it has none.",
    )
    overlong_filtering: bool | None = Field(
        default=None,
        description="Leave truncated samples (no EOS before rollout.max_new_tokens) out of the loss; they still count in their group's baseline."
        + _preset("false; true for dapo"),
    )
    overlong_buffer: int | None = Field(
        default=None,
        ge=0,
        description="DAPO soft overlong penalty: over the last this many tokens before rollout.max_new_tokens the reward gets a penalty falling linearly from 0 to -overlong_penalty_factor; 0 disables."
        + _preset("0; one fifth of rollout.max_new_tokens for dapo"),
    )
    overlong_penalty_factor: float = Field(
        default=1.0, ge=0, description="Size of the soft overlong penalty at the length limit."
    )

    @field_validator("scale_rewards", mode="before")
    @classmethod
    def _migrate_bool(cls, value: Any) -> Any:
        """Configs written before the group/batch/none choice used a bool."""
        if isinstance(value, bool):
            return "group" if value else "none"
        return value

    @property
    def settings(self) -> AlgorithmSettings:
        """The effective values: each null field replaced by the preset's."""
        preset = PRESETS[self.name]
        values = {}
        for name in AlgorithmSettings.__dataclass_fields__:
            own = getattr(self, name)
            values[name] = getattr(preset, name) if own is None and hasattr(preset, name) else own
        return AlgorithmSettings(**values)
