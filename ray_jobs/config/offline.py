"""Config sections shared by the offline jobs (``ray_jobs.sft``, ``ray_jobs.preference``) and their loader.

The jobs reuse the training config's sections (``model``, ``learner``,
``wandb``, and ``run`` with the same keys), and ``ray_jobs.config.experiment``'s
override syntax and one-line errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from actors.learner.config import LearnerConfig
from ray_jobs.config.experiment import RunSettings, load_validated

Job = TypeVar("Job", bound=BaseModel)


class OfflineLearnerConfig(LearnerConfig):
    """The learner with the offline jobs' schedule: cosine decay after a 10 % warm-up (each job sets its ``lr``)."""

    lr_scheduler: Literal["constant", "linear", "cosine"] = Field(
        default="cosine", description="Learning-rate schedule over the run's optimiser steps, after the warm-up."
    )
    warmup_ratio: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description="Warm-up as a fraction of the run's optimiser steps (rounded up); instead of warmup_steps.",
    )


class OfflineRunConfig(RunSettings):
    """The run as a whole; ``steps`` may come from ``schedule.epochs`` instead."""

    name: str = Field(
        default="cpu-sft", description="Run name; the run directory defaults to <run.output_root>/<name>."
    )
    steps: int | None = Field(
        default=None,
        ge=1,
        description="Optimiser steps (one per batch of schedule.batch_size units). None: schedule.epochs passes over the training rows, rounded up.",
    )
    checkpoint_every: int = Field(
        default=0,
        ge=0,
        description="Write a checkpoint every this many optimiser steps under <output_dir>/checkpoints/step-<N>/ (0: only at the start and the end; one is always written at the end and on a graceful stop).",
    )
    max_learner_restarts: int = Field(
        default=0,
        ge=0,
        description="Unused by the offline jobs (a dead learner ends the run; re-run to resume from the newest checkpoint).",
    )


class ScheduleConfig(BaseModel):
    """How much data each optimiser step sees, how long the run is, and when it is validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = Field(
        default=8,
        ge=1,
        description="Units (SFT rows, or preference pairs) per optimiser step: the effective batch. Each rank's share is split into micro-batches of learner.micro_batch_size units, whose gradients accumulate.",
    )
    epochs: float = Field(
        default=3.0,
        gt=0,
        description="Passes over the training rows when run.steps is None (steps = ceil(epochs x rows / batch_size)).",
    )
    eval_every: int = Field(
        default=10,
        ge=0,
        description="Validate every this many optimiser steps (eval/ metrics in that step's metrics.jsonl line), and always after the last; 0: only after the last. The first line also holds eval_initial/ (before any update) on a fresh start.",
    )

    def total_steps(self, steps: int | None, rows: int) -> int:
        """``steps``, or enough steps for ``epochs`` passes over ``rows`` units."""
        return steps if steps is not None else max(1, -(-int(self.epochs * rows) // self.batch_size))


def load_job_config(
    model: type[Job], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Job:
    """Defaults <- YAML file <- ``a.b=value`` overrides, validated as ``model``; errors are one-line ``ConfigError``s."""
    return load_validated(model, path, overrides)
