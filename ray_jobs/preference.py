"""Preference training (SimPO or DPO) on the learner group.

    python -m ray_jobs.preference [--config FILE] [a.b=value ...]

The same learner, backends, LoRA, run directory, checkpoints and resume as
``ray_jobs.train`` and ``ray_jobs.sft``; pairs in TRL's preference formats
(``ray_jobs/data/sequences.py``). ``algorithm.name`` picks the preset: SimPO
(beta 2.0, gamma 1.0: seed 003's, which are within the paper's ranges; no
reference model) or DPO (beta 0.1, the paper's; the reference is a frozen copy
of the initial policy, or the same model with its adapters disabled under
LoRA). Metrics per step and, on the validation pairs, under ``eval/``:
``rewards/accuracy``, ``rewards/margin``, ``rewards/chosen``,
``rewards/rejected``, ``logps/chosen``, ``logps/rejected`` (summed over the
completion) and ``loss``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from actors.learner.sequence_objectives import SequenceObjective
from actors.model.loading import ModelConfig, load_tokenizer, resolve_model_path
from ray_jobs.config.experiment import WandbConfig, redacted
from ray_jobs.config.offline import OfflineLearnerConfig, OfflineRunConfig, ScheduleConfig
from ray_jobs.data.sequences import PreferenceDataConfig, load_sequences
from ray_jobs.dry_run.plan import NodeShape, Plan, plan_offline
from ray_jobs.job_command import job_main
from ray_jobs.offline.driver import check_sources, run_offline

PRESETS: dict[str, dict[str, float]] = {"simpo": {"beta": 2.0, "gamma": 1.0}, "dpo": {"beta": 0.1, "gamma": 0.0}}


class PreferenceAlgorithmConfig(BaseModel):
    """The preference objective: a preset by name, every constant overridable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["simpo", "dpo"] = Field(
        default="simpo",
        description="simpo: length-normalised rewards and a target margin, no reference; dpo: sigmoid DPO against a frozen reference.",
    )
    beta: float | None = Field(
        default=None,
        gt=0,
        description="Reward scale beta. Preset: 2.0 for simpo (the SimPO critic recipe), 0.1 for dpo (the DPO paper).",
    )
    gamma: float | None = Field(
        default=None,
        ge=0,
        description="SimPO target reward margin gamma (simpo only). Preset: 1.0 (the SimPO critic recipe).",
    )

    @property
    def objective(self) -> SequenceObjective:
        """The learner's objective with the preset filled in."""
        preset = PRESETS[self.name]
        return SequenceObjective(
            name=self.name,
            beta=self.beta if self.beta is not None else preset["beta"],
            gamma=self.gamma if self.gamma is not None else preset["gamma"],
        )


class PreferenceRunConfig(OfflineRunConfig):
    """The run as a whole (named for the preference CPU default)."""

    name: str = Field(
        default="cpu-simpo", description="Run name; the run directory defaults to <run.output_root>/<name>."
    )


class PreferenceScheduleConfig(ScheduleConfig):
    """The schedule with the preference CPU default's values."""

    batch_size: int = Field(
        default=8,
        ge=1,
        description="Pairs per optimiser step: the effective batch (the SimPO critic recipe: 8). Each rank's share is split into micro-batches of learner.micro_batch_size pairs, whose gradients accumulate.",
    )
    epochs: float = Field(
        default=4.0,
        gt=0,
        description="Passes over the training pairs when run.steps is None (steps = ceil(epochs x pairs / batch_size)).",
    )


class PreferenceLearnerConfig(OfflineLearnerConfig):
    """The learner with the preference CPU default's optimiser settings (the built-in tiny model)."""

    lr: float = Field(
        default=2e-3,
        gt=0,
        description="AdamW learning rate (2e-3 suits the built-in tiny model; the SimPO critic recipe uses 5e-6 with LoRA on Qwen3-1.7B).",
    )


class PreferenceConfig(BaseModel):
    """Everything one preference run needs; the defaults are the CPU default (tiny model, toy pairs, SimPO)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run: PreferenceRunConfig = Field(default_factory=PreferenceRunConfig, description="The run as a whole.")
    model: ModelConfig = Field(
        default_factory=ModelConfig,
        description="Policy model (a hub name, a local directory such as a previous run's final/, or builtin:tiny-qwen).",
    )
    data: PreferenceDataConfig = Field(
        default_factory=PreferenceDataConfig, description="Preference pairs and the validation split."
    )
    algorithm: PreferenceAlgorithmConfig = Field(
        default_factory=PreferenceAlgorithmConfig, description="SimPO or DPO and its constants."
    )
    schedule: PreferenceScheduleConfig = Field(
        default_factory=PreferenceScheduleConfig,
        description="Pairs per optimiser step (the effective batch), epochs, validation.",
    )
    learner: PreferenceLearnerConfig = Field(
        default_factory=PreferenceLearnerConfig,
        description="Policy learner (backend, ranks, optimiser, LR schedule, LoRA); learner.micro_batch_size counts pairs.",
    )
    wandb: WandbConfig = Field(default_factory=WandbConfig, description="wandb monitoring.")

    @model_validator(mode="after")
    def _token_budget_fits(self) -> PreferenceConfig:
        self.learner.check_token_budget(2 * self.data.max_length, "a pair, 2 x data.max_length")
        return self


def run(cfg: PreferenceConfig) -> Path:
    """One preference run end to end; returns the run directory."""
    check_sources(cfg.model, cfg.data)
    tokenizer = load_tokenizer(resolve_model_path(cfg.model))
    data = load_sequences(cfg.data, tokenizer, cfg.run.seed)
    return run_offline(cfg, redacted(cfg), data, cfg.algorithm.objective, tokenizer)


def main(argv: list[str] | None = None) -> int:
    return job_main(
        "relay preference",
        "SimPO or DPO preference training on the learner group.",
        PreferenceConfig,
        run,
        argv,
        plan=plan,
    )


def plan(cfg: PreferenceConfig, node: NodeShape) -> Plan:
    """The dry-run plan (``--dry-run``): the learner ranks on a chosen and a rejected sequence per
    pair; DPO keeps a frozen reference (without LoRA, a copy)."""
    reference = cfg.algorithm.name == "dpo"
    return plan_offline(cfg.model, cfg.learner, cfg.data, pairs=True, reference=reference, node=node)


if __name__ == "__main__":
    sys.exit(main())
