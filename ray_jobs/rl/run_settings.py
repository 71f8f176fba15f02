"""The train driver's run-time settings: what ``auto`` and relative paths in a config
become on this machine, resolved once in the driver before any actor starts, so every
actor receives plain numbers and absolute paths (and the log says what was chosen)."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from uuid import uuid4

from actors.core_share import CoreShare
from actors.scratch import remove_orphans
from ray_jobs.config.experiment import ExperimentConfig
from ray_jobs.rl.pipeline import judge_inflight_bound
from ray_jobs.rl.train_eval import EvalSet
from ray_jobs.runtime.actor_settings import absolute_model, auto_threads

log = logging.getLogger("relay.train")
BOARD_PREFIX = "relay-cores"  # /dev/shm/relay-cores-<driver pid>-<uuid> (actors/scratch.py)


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
    """``torch_threads: auto`` (``ray_jobs.runtime.actor_settings.auto_threads``): stages that run in turn
    (max_staleness 0, or colocated in one process) get every core each; overlapping rollout workers and learner ranks share
    them, by what computes at the moment where ``follows_overlap`` (``actors/core_share.py``),
    else evenly."""
    ro, lr = cfg.rollout, cfg.learner
    overlap = cfg.pipeline.max_staleness > 0 and not cfg.generates_in_learner  # colocated: one process takes turns
    threads: dict[str, int | str | CoreShare] = {
        "rollout": auto_threads(ro.torch_threads, ro.num_workers + (lr.world_size if overlap else 0)),
        "learner": auto_threads(lr.torch_threads, lr.world_size + (ro.num_workers if overlap else 0)),
    }
    cores = auto_threads("auto", 1)
    if follows_overlap(cfg) and isinstance(cores, int) and cores > 1:
        board_dir = Path("/dev/shm" if Path("/dev/shm").is_dir() else tempfile.gettempdir())
        remove_orphans(board_dir, BOARD_PREFIX)  # boards of drivers killed before remove_core_board
        board = str(board_dir / f"{BOARD_PREFIX}-{os.getpid()}-{uuid4().hex}")
        slots = ro.num_workers + lr.world_size
        threads = {
            "rollout": CoreShare(board=board, first_slot=0, slots=slots, cores=cores),
            "learner": CoreShare(board=board, first_slot=ro.num_workers, slots=slots, cores=cores),
        }
        log.info("torch threads (auto): the stages share %d cores by what computes at the moment (%s)", cores, board)
    elif threads != {"rollout": ro.torch_threads, "learner": lr.torch_threads}:
        log.info("torch threads (auto): %s", threads)
    return cfg.model_copy(
        update={
            "rollout": ro.model_copy(update={"torch_threads": threads["rollout"]}),
            "learner": lr.model_copy(update={"torch_threads": threads["learner"]}),
        }
    )


def follows_overlap(cfg: ExperimentConfig) -> bool:
    """Whether 'auto' torch threads follow the overlap: both stages 'auto', overlapping
    (max_staleness > 0), on local Ray and CPU (so on one node), HF rollouts, a torch learner."""
    ro, lr = cfg.rollout, cfg.learner
    return (
        ro.torch_threads == lr.torch_threads == "auto"
        and cfg.pipeline.max_staleness > 0
        and not cfg.generates_in_learner
        and not os.environ.get("RAY_ADDRESS")
        and ro.backend == "hf"
        and lr.backend == "torch"
        and ro.num_gpus_per_worker == 0
        and lr.num_gpus == 0
    )


def remove_core_board(cfg: ExperimentConfig) -> None:
    """Remove the stages' core board file (``with_stage_threads``), if the run has one."""
    share = cfg.learner.torch_threads
    if isinstance(share, CoreShare):
        Path(share.board).unlink(missing_ok=True)


def with_absolute_model_path(cfg: ExperimentConfig) -> ExperimentConfig:
    """Actors may run in another working directory: give them an absolute model path."""
    return cfg.model_copy(update={"model": absolute_model(cfg.model)})
