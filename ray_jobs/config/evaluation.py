"""The evaluation job's config (``python -m ray_jobs.evaluate``): conditions, held-out data, statistics.

A *condition* is one way of answering the held-out items: a policy (adapter on
or off), a system prompt, sampling (k samples at a temperature; k = 1 at
T = 0 is greedy) and a selection rule that picks the one completion the judge
scores: ``single`` (k = 1), ``critic`` (best-of-k by a critic's beta x
length-normalised log-prob, seed 003's rule) or ``judge`` (best-of-k by the
evaluation judge's own score: an upper bound a deployment cannot reach unless
it can call the judge too). Conditions are a mapping from name to settings, so
``conditions.<name>.<key>=value`` overrides one setting of one condition.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from actors.learner.config import LearnerConfig
from actors.model.loading import BUILTIN_TINY, ModelConfig
from actors.rollout.worker import RolloutConfig
from ray_jobs.config.experiment import ACTOR_START_TIMEOUT_S, WandbConfig, context_too_long
from ray_jobs.config.own_task import check_own_task, own_task_defaults
from ray_jobs.config.run_paths import DEFAULT_OUTPUT_ROOT, run_directory
from ray_jobs.data.prompts import DataConfig
from rewards.config import RewardConfig
from rewards.judge.config import JudgeConfig

HELDOUT = "configs/data/business_descriptions_heldout.jsonl"
TRAINED = "runs/cpu-default/final"


class CriticConfig(BaseModel):
    """The model that ranks a condition's k candidates (``select: critic``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(
        description="The critic: a hub name or local directory, e.g. a SimPO run's final/ (a LoRA adapter directory loads its base, then the adapter)."
    )
    adapter: bool = Field(
        default=True, description="Score with the critic's LoRA adapter on (false: its base model, adapters disabled)."
    )
    beta: float = Field(
        default=2.0,
        gt=0,
        description="Each candidate's critic score is beta x its mean token log-prob (the SimPO critic recipe: its SimPO beta, 2.0).",
    )


class ConditionConfig(BaseModel):
    """One condition: policy, prompt, sampling, selection."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: str = Field(
        default=BUILTIN_TINY,
        description="The policy: a hub name, a local directory (a run's final/ or a checkpoint's policy/), or builtin:tiny-qwen.",
    )
    adapter: bool = Field(
        default=True,
        description="When policy is a LoRA adapter directory: generate with the adapter (true) or with its base model (false).",
    )
    system_prompt: str | None = Field(
        default=None, description="System message for this condition (null: data.system_prompt)."
    )
    k: int = Field(default=1, ge=1, description="Completions sampled per item.")
    temperature: float = Field(default=0.0, ge=0, description="Sampling temperature; 0 is greedy (then k must be 1).")
    select: Literal["single", "critic", "judge"] = Field(
        default="single",
        description="Which completion is scored: single (k = 1), critic (highest critic score), judge (highest judge score of all k).",
    )
    critic: CriticConfig | None = Field(default=None, description="The ranking model, for select: critic.")

    @model_validator(mode="after")
    def _consistent(self) -> ConditionConfig:
        if self.select == "single" and self.k != 1:
            raise ValueError(
                f"select 'single' scores one completion, but k is {self.k}: set k: 1 or select critic|judge"
            )
        if self.select != "single" and self.k < 2:
            raise ValueError(f"select '{self.select}' ranks several completions: set k >= 2")
        if self.temperature == 0 and self.k > 1:
            raise ValueError("greedy decoding (temperature 0) gives k identical completions: set a temperature > 0")
        if (self.select == "critic") != (self.critic is not None):
            raise ValueError("select 'critic' needs a critic (critic.path), and a critic needs select 'critic'")
        return self


def default_conditions() -> dict[str, ConditionConfig]:
    """The CPU default: the base tiny model, the CPU default run's policy, and its best-of-4 by itself as critic."""
    return {
        "base": ConditionConfig(policy=BUILTIN_TINY),
        "trained": ConditionConfig(policy=TRAINED),
        "trained_best_of_4": ConditionConfig(
            policy=TRAINED, k=4, temperature=1.0, select="critic", critic=CriticConfig(path=TRAINED, beta=2.0)
        ),
    }


class EvalRunConfig(BaseModel):
    """The evaluation run as a whole."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        default="cpu-default-eval", description="Run name; the run directory defaults to <run.output_root>/<name>."
    )
    output_dir: str | None = Field(
        default=None,
        description="Run directory for config.yaml, items.jsonl, results.json, report.md and the plots. Default: <run.output_root>/<run.name>.",
    )
    output_root: str = Field(
        default=DEFAULT_OUTPUT_ROOT,
        description="Directory that holds run directories: the default run directory's parent, and where a condition's policy or critic.path written run:<name>/<rest> is (<output_root>/<name>/<rest>, e.g. run:qwen3-1.7b-lora-sft/final). Absolute, on storage every node mounts, on a Ray cluster of several nodes.",
    )
    seed: int = Field(
        default=0,
        description="Seed of sampling (per item chunk, so a resumed run samples what the uninterrupted one would) and the default bootstrap seed.",
    )
    resume: Literal["auto", "never"] = Field(
        default="auto",
        description="auto: continue a run directory's unfinished evaluation (items already in items.jsonl are kept); never: only start in an empty run directory.",
    )
    items_per_call: int = Field(
        default=16, ge=1, description="Items per rollout call (a chunk); items.jsonl grows a chunk at a time."
    )
    max_actor_restarts: int = Field(
        default=3,
        ge=0,
        description="Times Ray restarts a rollout worker or the judge pool that died (a worker that finished nothing for rollout.call_timeout_s is restarted too); the chunk is sent again, sampled from its own seed.",
    )

    actor_start_timeout_s: float = Field(
        default=ACTOR_START_TIMEOUT_S,
        gt=0,
        description="Seconds an actor's constructor may take (model download and load, a vLLM engine's start) before the evaluation fails; also how long a restarted actor may take to answer.",
    )

    @property
    def directory(self) -> Path:
        return run_directory(self.output_dir, self.output_root, self.name)


class EvalDataConfig(DataConfig):
    """The held-out items: the training data's keys, plus labels, strata and a cap."""

    path: str = Field(
        default=HELDOUT,
        description="A local .jsonl/.json/.csv/.parquet file, or a Hugging Face dataset name (the held-out split).",
    )
    split: str = Field(default="test", description="Split to load for hub datasets.")
    shuffle: bool = Field(default=False, description="Unused by evaluation (items are taken in file order).")
    max_items: int | None = Field(
        default=None, ge=1, description="Evaluate only the first this many usable items (null: all)."
    )
    label_field: str | None = Field(
        default="inappropriate",
        description="Boolean row field saying the request should be refused: block and false-block rates are reported per condition (rows without it count as unlabelled).",
    )
    stratum_field: str | None = Field(
        default=None,
        description="Row field naming each item's stratum: per-stratum means and comparisons are reported.",
    )


class StatisticsConfig(BaseModel):
    """How conditions are compared."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    baseline: str | None = Field(
        default=None,
        description="Condition every other is compared with (paired bootstrap, Δ = other - baseline); null: every pair, in config order (cost ratios against the first condition).",
    )
    resamples: int = Field(default=10_000, ge=100, description="Bootstrap resamples B.")
    seed: int | None = Field(default=None, description="Bootstrap seed (null: run.seed).")
    confidence: float = Field(default=0.95, gt=0, lt=1, description="Confidence level of every interval.")


class EvaluateConfig(BaseModel):
    """Everything one evaluation needs; the defaults compare the base tiny model with the CPU default run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run: EvalRunConfig = Field(default_factory=EvalRunConfig, description="The evaluation run as a whole.")
    model: ModelConfig = Field(
        default_factory=ModelConfig,
        description="Model loading shared by every condition's policy and critic (cache_dir, dtype, the tiny model's shape); path is unused (each condition names its policy).",
    )
    data: EvalDataConfig = Field(default_factory=EvalDataConfig, description="Held-out items.")
    conditions: dict[str, ConditionConfig] = Field(
        default_factory=default_conditions, description="Named conditions, evaluated in this order."
    )
    rollout: RolloutConfig = Field(
        default_factory=RolloutConfig,
        description="Rollout workers (backend, workers, max_new_tokens, vLLM); group_size and temperature come from each condition.",
    )
    judge: JudgeConfig = Field(
        default_factory=JudgeConfig,
        description="The evaluation judge (may differ from training's: another endpoint, model or rubric).",
    )
    reward: RewardConfig = Field(
        default_factory=RewardConfig, description="The score: weighted reward terms, as in training."
    )
    learner: LearnerConfig = Field(
        default_factory=LearnerConfig,
        description="Where critics run (backend, CPUs/GPUs, micro_batch_size); nothing is trained.",
    )
    statistics: StatisticsConfig = Field(default_factory=StatisticsConfig, description="Comparisons and intervals.")
    wandb: WandbConfig = Field(default_factory=WandbConfig, description="wandb monitoring.")

    @model_validator(mode="before")
    @classmethod
    def _own_task(cls, raw: Any) -> Any:
        """On one's own data.path, no demo default applies (``ray_jobs/config/own_task.py``)."""
        return own_task_defaults(raw, EvalDataConfig.model_fields["path"].default, label_section="data")

    @model_validator(mode="after")
    def _judge_term_configured(self) -> EvaluateConfig:
        check_own_task(self.data.path, self.data.system_prompt, self.judge, self.reward.terms)
        return self

    @model_validator(mode="after")
    def _baseline_exists(self) -> EvaluateConfig:
        if not self.conditions:
            raise ValueError("conditions: name at least one condition")
        base = self.statistics.baseline
        if base is not None and base not in self.conditions:
            raise ValueError(
                f"statistics.baseline '{base}' is not a condition (conditions: {', '.join(self.conditions)})"
            )
        return self

    @model_validator(mode="after")
    def _context_fits(self) -> EvaluateConfig:
        if why := context_too_long(self.data.max_prompt_tokens, self.rollout):
            raise ValueError(why)
        return self
