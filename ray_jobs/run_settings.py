"""The train driver's run-time settings: what ``auto`` and relative paths in a config
become on this machine, resolved once in the driver before any actor starts, so every
actor receives plain numbers and absolute paths (and the log says what was chosen)."""

from __future__ import annotations

import logging

from ray_jobs.config import ExperimentConfig
from ray_jobs.offline import absolute_model, auto_threads
from ray_jobs.pipeline import judge_inflight_bound
from ray_jobs.train_eval import EvalSet

log = logging.getLogger("relay.train")


def settings_for_run(cfg: ExperimentConfig, evalset: EvalSet | None) -> ExperimentConfig:
    """``cfg`` with the judge's concurrency, the stages' torch threads and the model path resolved."""
    return with_absolute_model_path(with_stage_threads(with_judge_concurrency(cfg, evalset)))


def with_judge_concurrency(cfg: ExperimentConfig, evalset: EvalSet | None) -> ExperimentConfig:
    """``judge.max_concurrency: auto`` resolved to what this pipeline can have in flight."""
    eval_samples = len(evalset.items) * cfg.eval.samples_per_prompt if evalset is not None else 0
    bound = judge_inflight_bound(
        cfg.pipeline.prompts_per_step,
        cfg.rollout.group_size,
        cfg.pipeline.max_staleness,
        cfg.algorithm.settings.dynamic_sampling,
        eval_samples,
    )
    judge = cfg.judge.with_inflight(bound)
    log.info(
        "judge.max_concurrency: %d per endpoint%s",
        judge.concurrency,
        " (auto: what the pipeline can have in flight)" if cfg.judge.max_concurrency == "auto" else "",
    )
    return cfg.model_copy(update={"judge": judge})


def with_stage_threads(cfg: ExperimentConfig) -> ExperimentConfig:
    """``torch_threads: auto`` (``ray_jobs.offline.auto_threads``): stages that run in turn
    (max_staleness 0) get every core each; overlapping rollout workers and learner ranks share them."""
    ro, lr = cfg.rollout, cfg.learner
    overlap = cfg.pipeline.max_staleness > 0
    threads = {
        "rollout": auto_threads(ro.torch_threads, ro.num_workers + (lr.world_size if overlap else 0)),
        "learner": auto_threads(lr.torch_threads, lr.world_size + (ro.num_workers if overlap else 0)),
    }
    if threads != {"rollout": ro.torch_threads, "learner": lr.torch_threads}:
        log.info("torch threads (auto): %s", threads)
    return cfg.model_copy(
        update={
            "rollout": ro.model_copy(update={"torch_threads": threads["rollout"]}),
            "learner": lr.model_copy(update={"torch_threads": threads["learner"]}),
        }
    )


def with_absolute_model_path(cfg: ExperimentConfig) -> ExperimentConfig:
    """Actors may run in another working directory: give them an absolute model path."""
    return cfg.model_copy(update={"model": absolute_model(cfg.model)})
