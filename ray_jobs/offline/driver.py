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

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from actors.learner.sequence_objectives import SequenceObjective
from actors.model.loading import ModelConfig, adapter_base
from algorithms.config import AlgorithmConfig
from ray_jobs.config.run_paths import check_shared_paths
from ray_jobs.data.prompts import LOCAL_FORMATS, PromptSource
from ray_jobs.data.sequences import SequenceData, SequenceDataConfig, to_batch
from ray_jobs.runtime.actor_settings import absolute_model, auto_threads
from ray_jobs.runtime.control import GracefulStop
from ray_jobs.runtime.faults import StopRequested, check_started
from ray_jobs.runtime.hub import check_hub_name
from ray_jobs.runtime.learner_group import LearnerGroup
from ray_jobs.runtime.lifecycle import (
    Checkpoint,
    DriverState,
    RunLock,
    directory_bytes,
    plan_resume,
    publish_final,
    write_checkpoint,
)
from ray_jobs.runtime.ray_session import ray_session
from ray_jobs.runtime.tracking import RunRecorder

log = logging.getLogger("relay.offline")


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
