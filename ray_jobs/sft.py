"""Supervised fine-tuning on the learner group.

    python -m ray_jobs.sft [--config FILE] [a.b=value ...]

The same learner, backends (torch, or DeepSpeed ZeRO-2/3 over
``learner.world_size`` ranks), LoRA, run directory, checkpoints and resume as
``ray_jobs.train``; data in TRL's SFT formats (``ray_jobs/data/sequences.py``).
The final policy (or adapter) in ``<run dir>/final`` serves as ``model.path``
of a later RL, SFT or preference run.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from actors.learner.sequence_objectives import SequenceObjective
from actors.model.loading import ModelConfig, load_tokenizer, resolve_model_path
from ray_jobs.config.experiment import WandbConfig, redacted
from ray_jobs.config.offline import OfflineLearnerConfig, OfflineRunConfig, ScheduleConfig
from ray_jobs.data.sequences import SftDataConfig, load_sequences
from ray_jobs.dry_run.plan import NodeShape, Plan, plan_offline
from ray_jobs.job_command import job_main
from ray_jobs.offline.driver import check_sources, run_offline


class SftScheduleConfig(ScheduleConfig):
    """The schedule with the SFT CPU default's values."""

    batch_size: int = Field(
        default=16,
        ge=1,
        description="Rows per optimiser step: the effective batch. Each rank's share is split into micro-batches of learner.micro_batch_size rows, whose gradients accumulate.",
    )
    epochs: float = Field(
        default=4.0,
        gt=0,
        description="Passes over the training rows when run.steps is None (steps = ceil(epochs x rows / batch_size)).",
    )
    eval_every: int = Field(
        default=5,
        ge=0,
        description="Validate every this many optimiser steps, and always after the last; 0: only after the last.",
    )


class SftLearnerConfig(OfflineLearnerConfig):
    """The learner with the SFT CPU default's optimiser settings (the built-in tiny model)."""

    lr: float = Field(
        default=1e-2,
        gt=0,
        description="AdamW learning rate (1e-2 suits the built-in tiny model; real 1-4B policies want about 1e-5 full, 1e-4 LoRA).",
    )


class SftConfig(BaseModel):
    """Everything one SFT run needs; the defaults are the CPU default (the built-in tiny model, toy data)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run: OfflineRunConfig = Field(default_factory=OfflineRunConfig, description="The run as a whole.")
    model: ModelConfig = Field(
        default_factory=ModelConfig,
        description="Policy model (a hub name, a local directory such as a previous run's final/, or builtin:tiny-qwen).",
    )
    data: SftDataConfig = Field(default_factory=SftDataConfig, description="SFT rows and the validation split.")
    schedule: SftScheduleConfig = Field(
        default_factory=SftScheduleConfig, description="Batch size, epochs, validation."
    )
    learner: SftLearnerConfig = Field(
        default_factory=SftLearnerConfig, description="Policy learner (backend, ranks, optimiser, LR schedule, LoRA)."
    )
    wandb: WandbConfig = Field(default_factory=WandbConfig, description="wandb monitoring.")

    @model_validator(mode="after")
    def _token_budget_fits(self) -> SftConfig:
        self.learner.check_token_budget(self.data.max_length, "data.max_length")
        return self


def run(cfg: SftConfig) -> Path:
    """One SFT run end to end; returns the run directory."""
    check_sources(cfg.model, cfg.data)
    tokenizer = load_tokenizer(resolve_model_path(cfg.model))
    data = load_sequences(cfg.data, tokenizer, cfg.run.seed)
    return run_offline(cfg, redacted(cfg), data, SequenceObjective(name="sft"), tokenizer)


def main(argv: list[str] | None = None) -> int:
    return job_main("relay sft", "Supervised fine-tuning on the learner group.", SftConfig, run, argv, plan=plan)


def plan(cfg: SftConfig, node: NodeShape) -> Plan:
    """The dry-run plan (``--dry-run``): the learner ranks on one sequence per row."""
    return plan_offline(cfg.model, cfg.learner, cfg.data, pairs=False, reference=False, node=node)


if __name__ == "__main__":
    sys.exit(main())
