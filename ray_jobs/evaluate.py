"""Held-out evaluation of named conditions, with paired statistics and cost.

    python -m ray_jobs.evaluate [--config FILE] [a.b=value ...]

Every condition (``ray_jobs/config/evaluation.py``) answers the same held-out items
on rollout workers (HF or vLLM); the evaluation judge pool scores the selected
completion of each, with its limits, retries and no-score semantics. Outputs in
the run directory: ``config.yaml``, ``items.jsonl`` (every item x condition),
``results.json``, ``report.md`` and PNG plots (``ray_jobs/evaluation/report.py``).

Invariants: ``items.jsonl`` grows one whole chunk at a time (one write,
fsynced); re-running the same command keeps every complete chunk and evaluates
only the rest, sampling each chunk from its own seed, so a resumed evaluation
equals the uninterrupted one; a finished one only rebuilds the report (so
``statistics.*`` may change between runs). An unscored item is kept with its
error and left out of the comparisons that involve its condition, never 0.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path

import ray
import yaml

from actors.judge_pool import JudgePool
from actors.model.files import ModelFileError, is_model_file, locate_model_file, resolve_model_file
from actors.model.loading import BUILTIN_TINY, AdapterBaseError, adapter_base, load_tokenizer, resolve_model_path
from ray_jobs.config.changes import changed_keys
from ray_jobs.config.evaluation import ConditionConfig, EvaluateConfig, default_conditions
from ray_jobs.config.experiment import ConfigError, redacted
from ray_jobs.config.run_paths import SharedPathError, check_shared_paths
from ray_jobs.data.prompts import DatasetError, load_labelled_prompts
from ray_jobs.dry_run.plan import plan_evaluate
from ray_jobs.evaluation.conditions import ConditionRun, HeldOutItem, start_workers
from ray_jobs.evaluation.report import ItemResult, build_results, comparison_sentence, from_json, to_json, write_report
from ray_jobs.job_command import job_main
from ray_jobs.runtime.actor_settings import absolute_model, auto_threads
from ray_jobs.runtime.control import GracefulStop
from ray_jobs.runtime.faults import ActorStartError, StopRequested, check_started
from ray_jobs.runtime.hub import HubNameError, check_hub_name
from ray_jobs.runtime.lifecycle import RunDirectoryError, RunLock
from ray_jobs.runtime.local_servers import LocalJudgeError, rewards_for_run
from ray_jobs.runtime.ray_session import ray_session
from rewards.judge.llm_judge import JudgeUnreachableError, MissingApiKeyError

log = logging.getLogger("relay.evaluate")

ITEMS = "items.jsonl"
MAY_CHANGE = ("statistics.", "wandb.", "run.resume", "run.name")  # do not change what was evaluated
EVAL_ERRORS = (
    AdapterBaseError,
    ConfigError,
    DatasetError,
    HubNameError,
    RunDirectoryError,
    MissingApiKeyError,
    JudgeUnreachableError,
    LocalJudgeError,
    ActorStartError,
    ModelFileError,
    SharedPathError,
)


def check_model_path(path: str, key: str) -> None:
    """One line for a policy or critic that cannot be loaded: a missing local directory or model
    file (or its package), an unreachable hub name."""
    if is_model_file(path):
        locate_model_file(path, key)  # ModelFileError when the file or its package is missing
        return
    if path == BUILTIN_TINY or Path(path).exists():
        if Path(path).exists():
            adapter_base(path)  # AdapterBaseError when its base is missing
        return
    if path.startswith(("/", ".", "~")) or path.count("/") != 1:
        hint = " (train it first: python -m ray_jobs.train)" if path.rstrip("/").endswith("final") else ""
        raise ConfigError(f"{key}: {path} does not exist{hint}")
    check_hub_name(path, "model", key)


def policy_path(cond: ConditionConfig) -> str:
    """What the condition generates with: its policy, or the base of its adapter when ``adapter`` is off."""
    base = adapter_base(cond.policy) if Path(cond.policy).exists() else None
    return base if base is not None and not cond.adapter else cond.policy


def held_out_items(cfg: EvaluateConfig, cond: ConditionConfig, tokenizer) -> list[HeldOutItem]:
    """The held-out items as this condition's policy sees them (its system prompt, its chat template)."""
    system = cond.system_prompt if cond.system_prompt is not None else cfg.data.system_prompt
    data = cfg.data.model_copy(update={"system_prompt": system})
    prompts, labels = load_labelled_prompts(data, tokenizer, cfg.data.label_field)
    items = []
    for p, label in list(zip(prompts, labels))[: cfg.data.max_items]:
        stratum = p.fields.get(cfg.data.stratum_field) if cfg.data.stratum_field else None
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": p.prompt_text}
        ]
        items.append(HeldOutItem(p, messages, label, None if stratum is None else str(stratum)))
    return items


def chunked(items: list[HeldOutItem], size: int) -> list[tuple[int, list[HeldOutItem]]]:
    return [(c, items[i : i + size]) for c, i in enumerate(range(0, len(items), size))]


def load_done(run_dir: Path, recorded: dict, resume: str, sizes: dict[str, dict[int, int]]) -> list[ItemResult]:
    """The complete chunks already in ``items.jsonl`` (a torn or partial chunk is dropped and redone)."""
    path = run_dir / ITEMS
    saved = run_dir / "config.yaml"
    if not path.exists():
        return []
    if resume == "never":
        raise RunDirectoryError(
            f"run directory {run_dir} already holds an evaluation and run.resume=never: set "
            "run.resume=auto to continue it, or choose another run.name / run.output_dir"
        )
    changed = changed_keys(yaml.safe_load(saved.read_text()) if saved.exists() else {}, recorded, MAY_CHANGE)
    if changed:
        raise RunDirectoryError(
            f"cannot continue the evaluation in {run_dir}: these keys differ from its config.yaml: "
            f"{', '.join(changed)} (keep them, or choose another run.output_dir)"
        )
    lines = path.read_text().split("\n")
    parsed = [json.loads(line) for line in lines[:-1] if line]  # the last piece has no newline: torn, dropped
    counts: dict[tuple[str, int], int] = {}
    for row in parsed:
        counts[row["condition"], row["chunk"]] = counts.get((row["condition"], row["chunk"]), 0) + 1
    keep = [
        row
        for row in parsed
        if counts[row["condition"], row["chunk"]] == sizes.get(row["condition"], {}).get(row["chunk"])
    ]
    if len(keep) != len(parsed) or lines[-1]:
        log.warning(
            "items.jsonl: dropped %d lines of unfinished chunks; they are evaluated again", len(parsed) - len(keep)
        )
        _write_lines(path, keep, mode="w")
    return [from_json({k: v for k, v in row.items() if k != "chunk"}) for row in keep]


def _write_lines(path: Path, rows: list[dict], mode: str = "a") -> None:
    """Append (or rewrite) whole lines in one write, then fsync."""
    with path.open(mode) as f:
        f.write("".join(json.dumps(row) + "\n" for row in rows))
        f.flush()
        os.fsync(f.fileno())


def run(cfg: EvaluateConfig) -> Path:
    """One evaluation end to end (continued from ``items.jsonl`` when it has one); returns the run directory."""
    run_dir, recorded = cfg.run.directory, redacted(cfg)
    for name, cond in cfg.conditions.items():
        check_model_path(cond.policy, f"conditions.{name}.policy")
        if cond.critic is not None:
            check_model_path(cond.critic.path, f"conditions.{name}.critic.path")
    lock, stop = RunLock(run_dir), GracefulStop()
    try:
        items = {
            name: held_out_items(
                cfg, cond, load_tokenizer(resolve_model_path(cfg.model.model_copy(update={"path": policy_path(cond)})))
            )
            for name, cond in cfg.conditions.items()
        }
        sizes = {n: {c: len(chunk) for c, chunk in chunked(v, cfg.run.items_per_call)} for n, v in items.items()}
        done = load_done(run_dir, recorded, cfg.run.resume, sizes)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(recorded, sort_keys=False))
        finished = {(r.condition, r.item_id) for r in done}
        todo = {
            n: [(c, ch) for c, ch in chunked(v, cfg.run.items_per_call) if (n, ch[0].prompt.prompt_id) not in finished]
            for n, v in items.items()
        }
        if any(todo.values()):
            _evaluate(cfg, run_dir, todo, stop)
        if stop():
            raise StopRequested()
        return _report(cfg, run_dir, sizes)
    finally:
        stop.restore()
        lock.release()


def _evaluate(cfg: EvaluateConfig, run_dir: Path, todo: dict, stop: GracefulStop) -> None:
    """Every condition's remaining chunks: generate, select, judge, append to ``items.jsonl``."""
    critics = sum(c.critic is not None for c in cfg.conditions.values())
    cpus = cfg.rollout.num_workers * cfg.rollout.num_cpus_per_worker + (cfg.learner.num_cpus if critics else 0)
    with contextlib.ExitStack() as stack:
        judge_cfg, reward_cfg, keys = stack.enter_context(rewards_for_run(cfg.judge, cfg.reward, run_dir))
        most_judged = max(c.k if c.select == "judge" else 1 for c in cfg.conditions.values())
        judge_cfg = judge_cfg.with_inflight(cfg.run.items_per_call * most_judged)  # one chunk is judged at a time
        stack.enter_context(ray_session(cpus))
        check_shared_paths(run_dir, _model_paths(cfg))
        stop.install()  # ray.init replaced our SIGTERM handler
        judge = ray.remote(JudgePool).options(num_cpus=0, max_concurrency=1000).remote(judge_cfg, reward_cfg, keys)
        workers: tuple[str, list] | None = None
        engine_groups: list = []  # tensor-parallel engines' placement groups, one per worker, kept across policies
        for name, cond in cfg.conditions.items():
            if not todo[name] or stop():
                continue
            path = policy_path(cond)  # a model file: its copy, converted by run() before any actor starts
            path = resolve_model_file(path, cfg.model.cache_dir) if is_model_file(path) else path
            path = str(Path(path).resolve()) if Path(path).exists() else path
            if workers is None or workers[0] != path:  # conditions with the same policy share its workers
                old = workers[1] if workers else []
                if old:  # their engines shut down first: a tensor-parallel engine's shards free its GPUs
                    ray.wait([w.close.remote() for w in old], num_returns=len(old), timeout=60)
                for w in old:
                    ray.kill(w)
                workers = (path, start_workers(cfg, path, cfg.rollout.num_workers, engine_groups))
            critic, critic_tok = _start_critic(cfg, cond) if cond.critic is not None else (None, None)
            check_started(
                {
                    "judge pool": judge,
                    **{f"rollout worker {w} ({name})": a for w, a in enumerate(workers[1])},
                    **({f"critic ({name})": critic.ranks[0]} if critic is not None else {}),
                },
                cfg.run.actor_start_timeout_s,
            )
            try:
                runner = ConditionRun(name, cond, cfg, workers[1], judge, critic, critic_tok)
                for c, results in zip((c for c, _ in todo[name]), runner.results(todo[name], stop)):
                    _write_lines(run_dir / ITEMS, [{"chunk": c, **to_json(r)} for r in results])
                    log.info("%s: chunk %d done (%d items)", name, c, len(results))
            finally:
                if critic is not None:
                    critic.kill()


def _start_critic(cfg: EvaluateConfig, cond: ConditionConfig):
    """The critic as a one-rank learner group (nothing trained) and its tokenizer."""
    from actors.learner.sequence_objectives import SequenceObjective
    from algorithms.config import AlgorithmConfig
    from ray_jobs.runtime.learner_group import LearnerGroup

    assert cond.critic is not None
    is_adapter = Path(cond.critic.path).exists() and adapter_base(cond.critic.path) is not None
    model = absolute_model(
        cfg.model.model_copy(update={"path": cond.critic.path, "adapter": "continue" if is_adapter else "merge"})
    )
    learner = cfg.learner.model_copy(
        update={
            "world_size": 1,
            "lora": cfg.learner.lora.model_copy(update={"enabled": is_adapter}),
            "torch_threads": auto_threads(cfg.learner.torch_threads, 1),  # it scores while the workers wait
        }
    )
    group = LearnerGroup(
        learner,
        model,
        AlgorithmConfig(),
        1.0,
        cfg.run.seed,
        None,
        total_steps=1,
        objective=SequenceObjective(name="sft"),
        start_timeout_s=cfg.run.actor_start_timeout_s,
    )
    return group, load_tokenizer(resolve_model_path(model))


def _model_paths(cfg: EvaluateConfig) -> dict[str, str]:
    """Every condition's policy and critic path, by config key (``check_shared_paths``)."""
    paths = {f"conditions.{name}.policy": cond.policy for name, cond in cfg.conditions.items()}
    paths.update(
        {f"conditions.{n}.critic.path": c.critic.path for n, c in cfg.conditions.items() if c.critic is not None}
    )
    return paths


def _report(cfg: EvaluateConfig, run_dir: Path, sizes: dict) -> Path:
    """results.json, report.md and the plots from every item in ``items.jsonl``."""
    done = load_done(run_dir, redacted(cfg), "auto", sizes)
    stats = cfg.statistics
    results = build_results(
        done,
        list(cfg.conditions),
        stats.baseline,
        stats.resamples,
        stats.seed if stats.seed is not None else cfg.run.seed,
        stats.confidence,
    )
    written = write_report(run_dir, results, f"Evaluation {cfg.run.name}")
    print(f"evaluation finished: {run_dir / 'report.md'}", flush=True)
    for row in results["comparisons"]:
        print(comparison_sentence(row, stats.confidence), flush=True)
    _log_wandb(cfg, run_dir, results, written)
    return run_dir


def _log_wandb(cfg: EvaluateConfig, run_dir: Path, results: dict, written: list[Path]) -> None:
    """The summary, the comparisons table and the plots to wandb, when it is on."""
    from ray_jobs.runtime.tracking import start_wandb

    wb = start_wandb(run_dir, cfg.wandb, redacted(cfg), cfg.run.name, None)
    if wb is None:
        return
    import wandb

    summary = {
        f"eval/{name}/{key}": value
        for name, c in results["conditions"].items()
        for key, value in c.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    rows = [
        [
            c["a"],
            c["b"],
            c["mean_delta"],
            c["ci_low"],
            c["ci_high"],
            c["p_one_sided"],
            c["wins"],
            c["losses"],
            c["ties"],
        ]
        for c in results["comparisons"]
    ]
    wb.log(
        {
            **summary,
            "eval/comparisons": wandb.Table(
                columns=["a", "b", "mean_delta", "ci_low", "ci_high", "p_one_sided", "wins", "losses", "ties"],
                data=rows,
            ),
            **{f"eval/{p.stem}": wandb.Image(str(p)) for p in written if p.suffix == ".png"},
        }
    )
    wb.finish()


def load_eval_config(path: str | None, overrides: list[str]) -> EvaluateConfig:
    """``load_validated``, except that ``conditions.<name>.<key>=value`` overrides patch the default
    conditions (not replace them) when the config file names none."""
    from ray_jobs.config.experiment import load_validated

    file_has = (
        path is not None and Path(path).is_file() and "conditions" in (yaml.safe_load(Path(path).read_text()) or {})
    )
    if not file_has and any(o.startswith("conditions.") for o in overrides):
        defaults = {n: c.model_dump(exclude_defaults=True) for n, c in default_conditions().items()}
        overrides = [f"conditions={json.dumps(defaults)}", *overrides]
    return load_validated(EvaluateConfig, path, overrides)


def main(argv: list[str] | None = None) -> int:
    return job_main(
        "relay evaluate",
        "Held-out evaluation of named conditions.",
        EvaluateConfig,
        run,
        argv,
        errors=EVAL_ERRORS,
        load=load_eval_config,
        plan=plan_evaluate,
    )


if __name__ == "__main__":
    sys.exit(main())
