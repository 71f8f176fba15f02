"""Algorithm presets: the papers' defaults, selected by ``algorithm.name``.

A preset only supplies defaults; every knob set explicitly in the config wins
(``AlgorithmConfig`` fills only the fields left unset). The presets table in
docs/concepts/algorithms.md is this module in prose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PresetName = Literal["grpo", "gspo", "dr_grpo", "dapo", "rloo", "reinforce_pp"]
Baseline = Literal["group_mean", "leave_one_out", "none"]
ScaleRewards = Literal["group", "batch", "none"]
ImportanceLevel = Literal["token", "sequence", "sequence_token"]
LossAggregation = Literal["sequence_mean", "token_mean", "sequence_sum", "constant"]
KlEstimator = Literal["k1", "k2", "k3"]
KlPenalty = Literal["loss", "reward"]

# overlong_buffer of the DAPO preset: this fraction of rollout.max_new_tokens
# (the paper's 4096-token buffer before its 20480-token limit).
DAPO_OVERLONG_BUFFER_FRACTION = 0.2


@dataclass(frozen=True)
class Preset:
    """The defaults one algorithm brings. ``overlong_buffer`` None means
    ``DAPO_OVERLONG_BUFFER_FRACTION`` of ``rollout.max_new_tokens``."""

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
    num_minibatches: int
    dynamic_sampling: bool
    overlong_filtering: bool
    overlong_buffer: int | None
    reference: str


PRESETS: dict[str, Preset] = {
    # DeepSeekMath (Shao et al. 2024): group-normalised advantages, per-token clip 0.2,
    # per-sequence mean. beta defaults to 0 as in TRL (the paper used 0.04 with k3).
    "grpo": Preset(
        0.2,
        0.2,
        0.0,
        "k3",
        "loss",
        "token",
        "group_mean",
        "group",
        False,
        "sequence_mean",
        1,
        False,
        False,
        0,
        "Shao et al. 2024 (DeepSeekMath)",
    ),
    # GSPO (Zheng et al. 2025): sequence-level length-normalised ratio with its own tiny
    # clip range, no KL, the rollout batch split into 4 minibatches.
    "gspo": Preset(
        3e-4,
        4e-4,
        0.0,
        "k3",
        "loss",
        "sequence",
        "group_mean",
        "group",
        False,
        "sequence_mean",
        4,
        False,
        False,
        0,
        "Zheng et al. 2025 (GSPO)",
    ),
    # Dr. GRPO (Liu et al. 2025): no std scaling, token sum over a constant (G x max length).
    "dr_grpo": Preset(
        0.2,
        0.2,
        0.0,
        "k3",
        "loss",
        "token",
        "group_mean",
        "none",
        False,
        "constant",
        1,
        False,
        False,
        0,
        "Liu et al. 2025 (Understanding R1-Zero-Like Training)",
    ),
    # DAPO (Yu et al. 2025): clip-higher 0.2/0.28, token-level loss over the batch, dynamic
    # sampling, overlong filtering and the soft overlong punishment, no KL.
    "dapo": Preset(
        0.2,
        0.28,
        0.0,
        "k3",
        "loss",
        "token",
        "group_mean",
        "group",
        False,
        "token_mean",
        1,
        True,
        True,
        None,
        "Yu et al. 2025 (DAPO)",
    ),
    # RLOO (Ahmadian et al. 2024): leave-one-out baseline, unscaled, REINFORCE's summed
    # sequence log-likelihood; KL (k1) folded into the reward with beta 0.05 as in TRL.
    "rloo": Preset(
        0.2,
        0.2,
        0.05,
        "k1",
        "reward",
        "token",
        "leave_one_out",
        "none",
        False,
        "sequence_sum",
        1,
        False,
        False,
        0,
        "Ahmadian et al. 2024 (Back to Basics)",
    ),
    # REINFORCE++ (Hu 2025): no baseline, token-level KL (k1, beta 0.01) in the reward,
    # global batch normalisation of the advantages, PPO clip 0.2, token-level loss.
    "reinforce_pp": Preset(
        0.2,
        0.2,
        0.01,
        "k1",
        "reward",
        "token",
        "none",
        "none",
        True,
        "token_mean",
        1,
        False,
        False,
        0,
        "Hu 2025 (REINFORCE++)",
    ),
}
