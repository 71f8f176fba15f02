"""The driver the offline jobs share: SFT and preference training on the learner group.

``run_offline`` is ``ray_jobs.train.run``'s lifecycle without rollouts or a
judge: the run directory lock, ``plan_resume``, checkpoints (``learner/``,
``policy/`` with the tokenizer, ``driver.json`` whose ``source`` is the
training-row sampler), ``final/``, ``config.yaml``, ``metrics.jsonl`` (one
line per optimiser step), wandb and the command line (``job_main``: ``error: ...``, exit code 2, for bad input). A job (``ray_jobs/sft.py``,
``ray_jobs/preference.py``) brings its config, its tokenised ``SequenceData``
and its ``SequenceObjective``; everything else is here.

Invariants: step ``s`` trains the ``s``-th batch of ``schedule.batch_size``
units served by ``PromptSource`` (epochs, reshuffled when ``data.shuffle``), so
a resumed run trains exactly the batches the uninterrupted one would; the
checkpoint of step ``N`` holds the learner after ``N`` optimiser steps.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import ray
from pydantic import BaseModel

from actors.model_files import ModelFileError
from actors.models import AdapterBaseError, ModelConfig, adapter_base, resolve_model_path
from actors.sequence_objectives import SequenceObjective
from algorithms.config import AlgorithmConfig
from ray_jobs.config import ConfigError
from ray_jobs.control import GracefulStop, command_exit_code
from ray_jobs.data import LOCAL_FORMATS, DatasetError, PromptSource
from ray_jobs.faults import StopRequested, check_started
from ray_jobs.hub import HubNameError, check_hub_name
from ray_jobs.learner_group import LearnerGroup, LearnerPlacementError
from ray_jobs.lifecycle import (
    Checkpoint,
    DriverState,
    RunDirectoryError,
    RunLock,
    directory_bytes,
    plan_resume,
    publish_final,
    write_checkpoint,
)
from ray_jobs.offline_config import load_job_config
from ray_jobs.pipeline import stage_threads
from ray_jobs.plan import NodeShape, Plan, add_plan_arguments, dry_run
from ray_jobs.run_paths import SharedPathError, check_shared_paths
from ray_jobs.sequence_data import SequenceData, SequenceDataConfig, to_batch
from ray_jobs.tracking import RunRecorder

log = logging.getLogger("relay.offline")

JOB_ERRORS = (
    AdapterBaseError,
    ConfigError,
    DatasetError,
    HubNameError,
    LearnerPlacementError,
    ModelFileError,
    RunDirectoryError,
    SharedPathError,
)


class OfflineRecorder(RunRecorder):
    """``RunRecorder`` for jobs without samples: one metrics line per optimiser step and a short console line."""

    with_samples = False

    def record(self, step: int, metrics: dict[str, float]) -> None:
        """Append the step's metrics line, print the console line, log to wandb."""
        self._metrics.write(json.dumps({"step": step, **metrics}) + "\n")
        self._metrics.flush()
        evals = " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k in ("eval/loss", "eval/rewards/accuracy"))
        print(
            f"step {step + 1:>4}/{self.total_steps} | loss {metrics['loss']:.4f} | lr {metrics['lr']:.2e} "
            f"| {metrics['throughput/tokens_per_s']:.0f} tokens/s {('| ' + evals) if evals else ''}",
            flush=True,
        )
        if self._wandb is not None:
            self._wandb.log(dict(metrics), step=step)


@contextlib.contextmanager
def ray_session(cpus: float) -> Iterator[None]:
    """Join ``RAY_ADDRESS``'s cluster, or start a private local Ray with at least ``cpus`` CPUs
    (what the job's actors reserve); a Ray this process already joined (tests, notebooks) is
    used as it is and left running."""
    if ray.is_initialized():
        yield
        return
    start_ray(cpus)
    try:
        yield
    finally:
        ray.shutdown()


def start_ray(cpus: float) -> None:
    """Join ``RAY_ADDRESS``'s cluster (``ray job submit`` sets it and ships the working dir) or
    start a private local Ray with at least ``cpus`` CPUs (``init_local_ray``)."""
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
    else:
        init_local_ray(cpus)


def init_local_ray(cpus: float) -> None:
    """Start a private local Ray with at least ``cpus`` logical CPUs (at least one per core).

    The repository reaches the actors on the PYTHONPATH that Ray's processes inherit from this
    one, not through a job ``runtime_env``: Ray places an actor in one of the Python workers it
    starts ahead of time only when the job has no runtime env, so with one the first actors wait
    for fresh processes while the ready ones sit idle.
    """
    repo_root = str(Path(__file__).resolve().parents[1])
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = repo_root + (os.pathsep + before if before else "")
    try:
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(cpus + 0.999)), include_dashboard=False)
    finally:  # Ray's processes have inherited it; this process's environment is left as it was
        if before is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = before


T = TypeVar("T")  # a torch_threads setting: a number, "auto", or a CoreShare


def auto_threads(setting: T, concurrent: int) -> T | int:
    """A ``torch_threads`` setting with 'auto' resolved on local Ray: an even share of the
    cores this process may use among ``concurrent`` processes that compute at once, at most
    ``OMP_NUM_THREADS`` when the environment sets it (the usual per-process cap). On a cluster
    (``RAY_ADDRESS``) 'auto' stays: Ray sets each actor's OMP_NUM_THREADS from its CPUs."""
    if setting != "auto" or os.environ.get("RAY_ADDRESS"):
        return setting
    threads = stage_threads(len(os.sched_getaffinity(0)), concurrent)
    cap = os.environ.get("OMP_NUM_THREADS", "")
    return min(threads, int(cap)) if cap.isdigit() and int(cap) > 0 else threads


def absolute_model(model: ModelConfig) -> ModelConfig:
    """``model`` as actors receive it, with absolute local paths (they may run in another working
    directory, or on another node).

    A LoRA adapter to merge (``model.adapter: merge``) stays the adapter's own path, with an
    absolute ``cache_dir``: each actor merges it on its own node (``resolve_model_path``: once per
    node, under the cache's build lock), because a merged copy made here is on this node's disk
    only. It is merged here too, first, so that a bad adapter fails before any actor starts.
    """
    path = Path(resolve_model_path(model))
    if model.adapter == "merge" and adapter_base(model.path) is not None:
        local = {"path": str(Path(model.path).resolve()), "cache_dir": str(Path(model.cache_dir).resolve())}
        return model.model_copy(update=local)
    return model.model_copy(update={"path": str(path.resolve())}) if path.exists() else model


class OfflineRun:
    """One offline run's state in the driver: the group, the row sampler, the recorder, the newest checkpoint."""

    def __init__(
        self,
        cfg: Any,
        recorded: dict,
        data: SequenceData,
        objective: SequenceObjective,
        tokenizer: Any,
        steps: int,
        stop: GracefulStop,
    ) -> None:
        self.cfg, self.recorded, self.data, self.objective = cfg, recorded, data, objective
        self.tokenizer, self.steps, self.stop = tokenizer, steps, stop
        self.run_dir = cfg.run.directory
        self.source = PromptSource(data.train, cfg.data.shuffle, cfg.run.seed)
        self.newest: Checkpoint | None = None

    def checkpoint(self, group: Any, recorder: OfflineRecorder, steps_done: int) -> Checkpoint:
        """Write checkpoint ``steps_done`` (unless the newest already is it)."""
        if self.newest is not None and self.newest.step == steps_done:
            return self.newest
        recorder.sync()
        state = DriverState(next_step=steps_done, source=self.source.state_dict(), wandb_id=recorder.wandb_id)

        def fill(tmp: Path) -> None:
            group.save_checkpoint(str((tmp / "learner").resolve()))
            group.save(str((tmp / "policy").resolve()))
            self.tokenizer.save_pretrained(tmp / "policy")

        self.newest, seconds = write_checkpoint(
            self.run_dir, steps_done, self.recorded, state, fill, self.cfg.run.keep_checkpoints
        )
        log.info(
            "checkpoint step-%d written in %.2f s (%.1f MB)",
            steps_done,
            seconds,
            directory_bytes(self.newest.path) / 1e6,
        )
        return self.newest

    def train(self, checkpoint: Checkpoint | None) -> None:
        """Start the learner group, restore ``checkpoint`` (or write step 0's), train, publish ``final/``."""
        cfg = self.cfg
        state = checkpoint.driver_state() if checkpoint else None
        start = state.next_step if state else 0
        with contextlib.ExitStack() as stack:
            recorder = stack.enter_context(
                contextlib.closing(
                    OfflineRecorder(
                        self.run_dir,
                        self.recorded,
                        cfg.wandb,
                        cfg.run.name,
                        self.steps,
                        start,
                        state.wandb_id if state else None,
                    )
                )
            )
            threads = auto_threads(cfg.learner.torch_threads, cfg.learner.world_size)  # the learner runs alone
            group = LearnerGroup(
                cfg.learner.model_copy(update={"torch_threads": threads}),
                absolute_model(cfg.model),
                AlgorithmConfig(),
                1.0,
                cfg.run.seed,
                None,
                total_steps=self.steps,
                objective=self.objective,
                start_timeout_s=cfg.run.actor_start_timeout_s,
            )
            stack.callback(group.kill)
            check_started({f"learner rank {r}": a for r, a in enumerate(group.ranks)}, cfg.run.actor_start_timeout_s)
            if checkpoint is not None and state is not None:
                group.load_checkpoint(str(checkpoint.learner_dir.resolve()))
                self.source.load_state_dict(state.source)
                log.info("resumed from %s at step %d", checkpoint.path, start)
            else:
                self.checkpoint(group, recorder, 0)
            self._loop(group, recorder, start)
            final = self.checkpoint(group, recorder, self.steps)
            if cfg.run.save_final:
                publish_final(final, self.run_dir)

    def _loop(self, group: Any, recorder: OfflineRecorder, start: int) -> None:
        cfg, pairs = self.cfg, self.objective.pairs
        evaluation = to_batch(0, self.data.eval, pairs) if self.data.eval else None
        initial = group.evaluate_sequences(evaluation) if evaluation is not None and start == 0 else {}
        every = cfg.run.checkpoint_every
        for step in range(start, self.steps):
            begin = time.perf_counter()
            result = group.train_sequences(to_batch(step, self.source.take(cfg.schedule.batch_size), pairs))
            metrics = {
                **result.metrics,
                "epoch": float(self.source.epoch),
                "data/truncated": float(self.data.truncated),
                **{f"data/skipped/{k}": float(v) for k, v in self.data.skipped.items()},
            }
            if step == start:
                metrics.update({key.replace("eval/", "eval_initial/", 1): v for key, v in initial.items()})
            due = cfg.schedule.eval_every and (step + 1) % cfg.schedule.eval_every == 0
            if evaluation is not None and (due or step + 1 == self.steps):
                metrics.update(group.evaluate_sequences(evaluation))
            metrics["time/step_s"] = time.perf_counter() - begin
            recorder.record(step, metrics)
            if (every and (step + 1) % every == 0) or self.stop():
                self.checkpoint(group, recorder, step + 1)
            if self.stop():
                raise StopRequested()


def run_offline(cfg: Any, recorded: dict, data: SequenceData, objective: SequenceObjective, tokenizer: Any) -> Path:
    """One offline run end to end (resumed from the run directory's newest checkpoint per ``run.resume``)."""
    run_dir = cfg.run.directory
    steps = cfg.schedule.total_steps(cfg.run.steps, len(data.train))
    lock = RunLock(run_dir)
    stop = GracefulStop()
    try:
        plan = plan_resume(run_dir, cfg.run.resume, steps, recorded)
        if plan.action == "finished":
            assert plan.checkpoint is not None
            if cfg.run.save_final and not (run_dir / "final").exists():
                publish_final(plan.checkpoint, run_dir)
            print(
                f"run already finished: {run_dir} has its checkpoint of step {plan.checkpoint.step}; nothing to do",
                flush=True,
            )
            return run_dir
        with ray_session(LearnerGroup.resources(cfg.learner)[0]):
            check_shared_paths(run_dir, {"model.path": cfg.model.path})
            stop.install()
            OfflineRun(cfg, recorded, data, objective, tokenizer, steps, stop).train(plan.checkpoint)
    finally:
        stop.restore()
        lock.release()
    print(f"run finished: {run_dir}", flush=True)
    return run_dir


def check_sources(model: ModelConfig, data: SequenceDataConfig) -> None:
    """One-line errors for hub names that cannot be reached (an adapter's base included), before anything loads."""
    check_hub_name(model.path, "model", "model.path")
    base = adapter_base(model.path) if model.path and not model.path.startswith("builtin:") else None
    if base is not None:
        check_hub_name(base, "model", f"model.path's adapter base ({model.path}/adapter_config.json)")
    for path, key in ((data.path, "data.path"), (data.eval_path, "data.eval_path")):
        if path is not None and Path(path).suffix.lower() not in LOCAL_FORMATS:
            check_hub_name(path, "dataset", key)


def job_main(
    prog: str,
    description: str,
    config_class: type[BaseModel],
    run_job,
    argv: list[str] | None,
    errors: tuple[type[BaseException], ...] = JOB_ERRORS,
    load=None,
    plan: Callable[[Any, NodeShape], Plan] | None = None,
) -> int:
    """Parse ``--config FILE a.b=value ...``, run, and map bad input (``errors``) to ``error: ...`` and
    exit code 2; ``load(path, overrides)`` replaces the plain config loader. With ``--dry-run``,
    ``plan(cfg, node)`` builds the plan shown instead of running (``ray_jobs/plan.py``)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", help="YAML config (default: the embedded CPU default)")
    parser.add_argument("overrides", nargs="*", help="overrides such as run.steps=10 learner.lr=1e-4")
    if plan is not None:
        add_plan_arguments(parser)
    args = parser.parse_args(argv)
    loader = load or (lambda path, overrides: load_job_config(config_class, path, overrides))
    if plan is not None and args.dry_run:
        return dry_run(args, lambda: loader(args.config, args.overrides), plan, errors)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return command_exit_code(lambda: loader(args.config, args.overrides), run_job, errors)
