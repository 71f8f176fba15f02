"""The experiment config: one typed section per component, loaded from YAML,
overridden on the command line as ``a.b=value``.

Each component receives only its own section. Unknown keys are rejected with
an error that names the key and the nearest valid one. The pydantic defaults
are the embedded CPU default run (``configs/cpu_default.yaml`` spells it out).
Loading, overrides and key checks are ``ray_jobs/config/loading.py`` (re-exported here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from actors.learner.learner import LearnerConfig
from actors.model.loading import ModelConfig
from actors.rollout.worker import RolloutConfig
from algorithms.config import AlgorithmConfig
from ray_jobs.config.loading import ConfigError as ConfigError  # re-exported: the jobs import these from here
from ray_jobs.config.loading import apply_override as apply_override
from ray_jobs.config.loading import check_keys as check_keys
from ray_jobs.config.loading import load_validated
from ray_jobs.config.loading import redacted as redacted
from ray_jobs.config.own_task import check_own_task, own_task_defaults
from ray_jobs.config.run_paths import DEFAULT_OUTPUT_ROOT, run_directory
from ray_jobs.config.shared_engine import colocation_blocker, shared_engine_blocker
from ray_jobs.data.prompts import DataConfig
from rewards.config import RewardConfig
from rewards.judge.config import JudgeConfig

ACTOR_START_TIMEOUT_S = 600.0
"""Default of ``run.actor_start_timeout_s``: how long an actor's constructor may take (model
loading, a vLLM engine start) before it counts as failed. Callers pass the configured value."""


class RunSettings(BaseModel):
    """The keys of every job's ``run`` section: ``RunConfig`` (the RL job's, which always
    has ``steps``) and ``ray_jobs.config.offline.OfflineRunConfig`` (which may leave it None)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        default="cpu-default", description="Run name; the run directory defaults to <run.output_root>/<name>."
    )
    output_dir: str | None = Field(
        default=None,
        description="Run directory for config.yaml, metrics.jsonl, samples.jsonl and the final policy. Default: <run.output_root>/<run.name>.",
    )
    output_root: str = Field(
        default=DEFAULT_OUTPUT_ROOT,
        description="Directory that holds run directories: the run directory defaults to <output_root>/<run.name>, and a model path written run:<name>/<rest> (model.path; the evaluation's policy and critic paths) means <output_root>/<name>/<rest>, e.g. run:qwen3-1.7b-lora-sft/final for a previous stage's final policy. On a Ray cluster of several nodes it (or run.output_dir) must be an absolute path on storage every node mounts.",
    )
    steps: int | None = Field(default=None, ge=1, description="Optimiser steps (each job's section says more).")
    seed: int = Field(default=0, description="Seed for prompt order, sampling and initialisation.")
    save_final: bool = Field(
        default=True, description="Save the final policy (Hugging Face format) under <output_dir>/final."
    )
    checkpoint_every: int = Field(
        default=20,
        ge=0,
        description="Write a checkpoint every this many learner steps under <output_dir>/checkpoints/step-<N>/ (0: only at the end; one is always written at the end and on a graceful stop).",
    )
    keep_checkpoints: int = Field(default=2, ge=1, description="Keep only the newest this many checkpoints.")
    resume: str = Field(
        default="auto",
        description="auto: continue from the run directory's newest checkpoint if it has one (a finished run says so and changes nothing); never: only start in an empty run directory; or a checkpoint directory to continue from.",
    )
    max_learner_restarts: int = Field(
        default=1,
        ge=0,
        description="Times the driver restarts a learner group that died (from the newest checkpoint) before the run ends with an error.",
    )
    actor_start_timeout_s: float = Field(
        default=ACTOR_START_TIMEOUT_S,
        gt=0,
        description="Seconds an actor's constructor may take (a model's first download and load, a vLLM engine's start with CUDA-graph capture) before the run fails with an error naming it; also how long the driver waits for a restarted actor to answer. GPU runs of multi-GB models may need 1800 or more.",
    )

    @property
    def directory(self) -> Path:
        return run_directory(self.output_dir, self.output_root, self.name)


class RunConfig(RunSettings):
    """The run as a whole."""

    steps: int = Field(default=120, ge=1, description="Learner steps (one optimiser step per rollout batch).")


HF_PROMPTS_PER_CALL = 4
"""``pipeline.prompts_per_call: auto`` with the HF backend."""


class PipelineConfig(BaseModel):
    """How rollout, judging and learning overlap."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_staleness: int = Field(
        default=2,
        ge=0,
        description="k: a sample generated by policy v is trained at learner version <= v + k. 0 = on-policy (no overlap between steps).",
    )
    prompts_per_step: int = Field(
        default=8, ge=1, description="Prompts per learner step; each yields rollout.group_size samples."
    )
    prompts_per_call: PositiveInt | Literal["auto"] = Field(
        default="auto",
        description="Prompts per rollout call; each call's groups go to the judge as soon as it returns. 'auto': 1 "
        "with vLLM (each request is its own call and streams to the judge; the engine batches across calls), "
        f"{HF_PROMPTS_PER_CALL} with HF (one batched generate returns all its groups at once).",
    )
    max_actor_restarts: int = Field(
        default=3,
        ge=0,
        description="Times Ray restarts each rollout worker and the judge pool after it dies; the calls it held are sent again.",
    )
    forward_ahead: bool | Literal["auto"] = Field(
        default="auto",
        description="On-policy (max_staleness 0), the learner runs its gradient pass's forward on a batch's samples "
        "while the judge scores them, and only the loss, backward and optimiser step once the scores arrive. It "
        "needs learner.backend torch with one rank, one optimiser step per batch (algorithm.num_iterations and "
        "num_minibatches 1), no dynamic sampling, and a step's samples in one learner.micro_batch_size. "
        "'auto': on wherever that holds; true: an error where it does not.",
    )

    placement: Literal["auto", "separate", "colocated"] = Field(
        default="auto",
        description="Where generation runs. separate: the rollout workers are processes (and devices) of their own, "
        "sent new weights after every step. colocated: generation shares the learner's device; with rollout.backend "
        "hf it runs in the learner's process on the policy's own weights (no second copy, no weight sync; LoRA "
        "generates with the live adapter), with vllm the engine is its own actor on a fraction of the learner's GPU "
        "(rollout.vllm.sleep_level releases its memory while the learner trains). Needs learner.world_size 1 and "
        "rollout.num_workers 1. 'auto': separate.",
    )

    def call_size(self, backend: str) -> int:
        """Prompts per rollout call for the rollout ``backend`` ('auto' resolved)."""
        if self.prompts_per_call != "auto":
            return self.prompts_per_call
        return 1 if backend == "vllm" else HF_PROMPTS_PER_CALL


class WeightSyncConfig(BaseModel):
    """How the learner's weights reach the rollout engines after each step."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    payload: Literal["auto", "full", "lora_adapter"] = Field(
        default="auto",
        description="What is shipped: full (merged) weights, or only the LoRA adapter (the engines keep the base weights and load each adapter as a new version; never merged). auto: lora_adapter when learner.lora.enabled, else full.",
    )
    transport: Literal["object_store", "broadcast"] = Field(
        default="object_store",
        description="object_store: a versioned update passed by reference through Ray's object store (CPU, small models, adapters). broadcast: learner rank 0 broadcasts full weights in buckets over a process group made for the purpose (NCCL on GPU, gloo on CPU); meant for vLLM engines, which take it mid-generation.",
    )
    backend: Literal["auto", "gloo", "nccl"] = Field(
        default="auto",
        description="Process-group backend of the broadcast transport; auto: nccl when the learner has GPUs, else gloo.",
    )
    bucket_mb: int = Field(
        default=256,
        ge=1,
        description="Broadcast bucket size in MB: tensors of one dtype are packed into flat buffers of at most this size, one collective each.",
    )


class WandbConfig(BaseModel):
    """Weights & Biases monitoring."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["auto", "online", "offline", "disabled"] = Field(
        default="auto",
        description="auto: online when wandb finds credentials (WANDB_API_KEY, WANDB_IDENTITY_TOKEN_FILE, or the ~/.netrc entry `wandb login` writes, for WANDB_BASE_URL or api.wandb.ai), else offline (upload later with `wandb sync <run dir>/wandb/offline-run-*`).",
    )
    project: str = Field(default="relay", description="wandb project.")
    entity: str | None = Field(
        default=None, description="wandb entity (user or team) that owns the project; null: your default entity."
    )
    group: str | None = Field(
        default=None, description="wandb group: runs that share it are shown together (e.g. one sweep); null: none."
    )
    tags: list[str] = Field(default_factory=list, description="wandb tags of the run, e.g. [gspo, qwen2.5-0.5b].")
    table_every: int = Field(default=10, ge=1, description="Log a completions table every this many steps.")
    table_rows: int = Field(default=16, ge=1, description="Rows in each completions table.")


class TrainEvalConfig(BaseModel):
    """Held-out evaluation while the run trains (``ray_jobs/rl/train_eval.py``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    every_steps: int = Field(
        default=0,
        ge=0,
        description="Evaluate the policy after every this many learner steps, and after the last step (0: no evaluation). Runs beside training; results go to eval.jsonl and wandb as eval/*.",
    )
    data: str | None = Field(
        default=None,
        description="Held-out prompts: a local .jsonl/.json/.csv/.parquet file or a Hugging Face dataset name, read like data.path with the same data.prompt_field, id_field, system_prompt and max_prompt_tokens. Required when every_steps > 0.",
    )
    split: str = Field(default="test", description="Split to load when eval.data is a hub dataset.")
    max_prompts: int | None = Field(
        default=None, ge=1, description="Evaluate only the first this many prompts (a fixed set); null: all of them."
    )
    samples_per_prompt: int = Field(default=1, ge=1, description="Samples generated per prompt at each evaluation.")
    temperature: float = Field(
        default=0.0,
        ge=0,
        description="Sampling temperature of the evaluation; 0 is greedy decoding, so eval curves are not sampling noise.",
    )
    label_field: str | None = Field(
        default="inappropriate",
        description="Boolean row field saying the request should be blocked; rows that have it give eval/block_rate and eval/false_block_rate (needs a rubric with a request check). null: none (the default on one's own data.path).",
    )

    @model_validator(mode="after")
    def _data_when_on(self) -> TrainEvalConfig:
        if self.every_steps > 0 and not self.data:
            raise ValueError(
                f"eval.data is required when eval.every_steps > 0 (got every_steps={self.every_steps}): "
                "name a held-out prompt file or hub dataset"
            )
        return self


def context_too_long(max_prompt_tokens: int, rollout: RolloutConfig) -> str | None:
    """Why the longest prompt plus completion cannot fit a vLLM engine's context (None: it fits,
    or the backend is not vLLM): vLLM rejects a request longer than ``max_model_len``."""
    total, limit = max_prompt_tokens + rollout.max_new_tokens, rollout.vllm.max_model_len
    if rollout.backend != "vllm" or total <= limit:
        return None
    return (
        f"data.max_prompt_tokens ({max_prompt_tokens}) + rollout.max_new_tokens ({rollout.max_new_tokens}) = "
        f"{total} exceeds rollout.vllm.max_model_len ({limit}); lower one or raise max_model_len"
    )


class ExperimentConfig(BaseModel):
    """Everything one training run needs, one section per component."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run: RunConfig = Field(default_factory=RunConfig, description="The run as a whole.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Policy model.")
    data: DataConfig = Field(default_factory=DataConfig, description="Prompt dataset.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Rollout workers and sampling.")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="LLM judge endpoint and rubric.")
    reward: RewardConfig = Field(default_factory=RewardConfig, description="Weighted reward terms.")
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig, description="Policy-optimisation algorithm.")
    learner: LearnerConfig = Field(default_factory=LearnerConfig, description="Policy learner.")
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="Overlap and staleness.")
    weight_sync: WeightSyncConfig = Field(
        default_factory=WeightSyncConfig, description="Learner-to-rollout weight sync."
    )
    wandb: WandbConfig = Field(default_factory=WandbConfig, description="wandb monitoring.")
    eval: TrainEvalConfig = Field(default_factory=TrainEvalConfig, description="Held-out evaluation during training.")

    @model_validator(mode="before")
    @classmethod
    def _own_task(cls, raw: Any) -> Any:
        """On one's own data.path, no demo default applies (``ray_jobs/config/own_task.py``)."""
        return own_task_defaults(raw, DataConfig.model_fields["path"].default)

    @model_validator(mode="after")
    def _judge_term_configured(self) -> ExperimentConfig:
        check_own_task(self.data.path, self.data.system_prompt, self.judge, self.reward.terms)
        return self

    @model_validator(mode="after")
    def _alarm_check_known(self) -> ExperimentConfig:
        self.judge.alarms.check_key([t.name for t in self.reward.terms], [m.name for m in self.judge.ensemble])
        return self

    @model_validator(mode="after")
    def _rollout_fits_training(self) -> ExperimentConfig:
        """RL sampling needs a group (the baseline) and a temperature the learner can divide logits by;
        the rollout section alone also allows the evaluation settings (1 sample, greedy)."""
        if self.rollout.group_size < 2:
            raise ValueError(
                f"rollout.group_size must be at least 2 for RL training (got {self.rollout.group_size}): "
                "group advantages need a group"
            )
        if self.rollout.temperature == 0:
            raise ValueError(
                "rollout.temperature must be above 0 for RL training (the learner divides logits by it); "
                "greedy decoding is for evaluation (eval.temperature)"
            )
        return self

    @model_validator(mode="after")
    def _algorithm_fits_rollout(self) -> ExperimentConfig:
        """Algorithm settings that depend on other sections, checked before anything starts."""
        algo, limit = self.algorithm.settings, self.rollout.max_new_tokens
        if algo.overlong_buffer_tokens(limit) > limit:
            raise ValueError(
                f"algorithm.overlong_buffer ({algo.overlong_buffer}) exceeds rollout.max_new_tokens ({limit})"
            )
        per_step = self.pipeline.prompts_per_step * self.rollout.group_size
        if algo.num_minibatches > per_step:
            raise ValueError(
                f"algorithm.num_minibatches ({algo.num_minibatches}) exceeds the samples per step "
                f"(pipeline.prompts_per_step x rollout.group_size = {per_step})"
            )
        return self

    @model_validator(mode="after")
    def _weight_sync_fits(self) -> ExperimentConfig:
        """Weight-sync choices that depend on the learner and rollout sections."""
        ws, lora = self.weight_sync, self.learner.lora
        if ws.payload == "lora_adapter" and not lora.enabled:
            raise ValueError("weight_sync.payload 'lora_adapter' needs learner.lora.enabled: true")
        if ws.transport == "broadcast" and self.adapter_sync:
            raise ValueError(
                "weight_sync.transport 'broadcast' ships full weights; with LoRA set weight_sync.payload: full "
                "or use transport object_store for adapters"
            )
        tp, gpus = self.rollout.vllm.tensor_parallel_size, self.rollout.num_gpus_per_worker
        if self.rollout.backend == "vllm" and tp > 1 and gpus != tp:
            raise ValueError(
                f"rollout.vllm.tensor_parallel_size {tp} needs rollout.num_gpus_per_worker: {tp} (got {gpus:g})"
            )
        return self

    @model_validator(mode="after")
    def _placement_fits(self) -> ExperimentConfig:
        if self.pipeline.placement == "colocated" and (why := colocation_blocker(self.learner, self.rollout)):
            raise ValueError(f"pipeline.placement: colocated {why}")
        ws = self.weight_sync
        if why := shared_engine_blocker(self.colocated, self.rollout, self.adapter_sync, ws.transport, ws.backend):
            raise ValueError(why)
        return self

    @model_validator(mode="after")
    def _context_fits(self) -> ExperimentConfig:
        if why := context_too_long(self.data.max_prompt_tokens, self.rollout):
            raise ValueError(why)
        return self

    @model_validator(mode="after")
    def _token_budget_fits(self) -> ExperimentConfig:
        longest = self.data.max_prompt_tokens + self.rollout.max_new_tokens
        self.learner.check_token_budget(longest, "data.max_prompt_tokens + rollout.max_new_tokens")
        return self

    @model_validator(mode="after")
    def _forward_ahead_fits(self) -> ExperimentConfig:
        if self.pipeline.forward_ahead is True and (why := self.forward_ahead_blocker()):
            raise ValueError(f"pipeline.forward_ahead: true needs {why}; set it to auto or false")
        return self

    def forward_ahead_blocker(self) -> str | None:
        """Why the learner cannot run a batch's forward before it is scored here (None: it can)."""
        s, lr = self.algorithm.settings, self.learner
        per_step = self.pipeline.prompts_per_step * self.rollout.group_size
        checks = {
            "pipeline.max_staleness 0": self.pipeline.max_staleness == 0,
            "learner.backend torch": lr.backend == "torch",
            "algorithm.num_iterations and num_minibatches 1": s.num_iterations == 1 and s.num_minibatches == 1,
            "no dynamic sampling": not s.dynamic_sampling,
            f"learner.micro_batch_size >= {per_step} (a step's samples)": lr.micro_batch_size >= per_step,
            "no colocated engine that sleeps (rollout.vllm.sleep_level 0)": not self.engine_sleeps,
        }
        return next((need for need, ok in checks.items() if not ok), None)

    @property
    def forward_ahead(self) -> bool:
        """True when the learner runs each batch's forward while the judge scores it."""
        return self.pipeline.forward_ahead is not False and self.forward_ahead_blocker() is None

    @property
    def colocated(self) -> bool:
        """True when generation shares the learner's device (``pipeline.placement``, 'auto' resolved)."""
        return self.pipeline.placement == "colocated"

    @property
    def engine_sleeps(self) -> bool:
        """A colocated vLLM engine gives its memory to the learner's steps: the learner's forward cannot start first."""
        return self.colocated and self.rollout.backend == "vllm" and self.rollout.vllm.sleep_level > 0

    @property
    def generates_in_learner(self) -> bool:
        """Colocated with HF generation: the learner's process generates with the policy's own module."""
        return self.colocated and self.rollout.backend == "hf"

    @property
    def adapter_sync(self) -> bool:
        """True when only LoRA adapters travel to the rollout engines."""
        return self.weight_sync.payload == "lora_adapter" or (
            self.weight_sync.payload == "auto" and self.learner.lora.enabled
        )


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """The training job's config: defaults <- YAML file <- overrides (``load_validated``)."""
    return load_validated(ExperimentConfig, path, overrides)
