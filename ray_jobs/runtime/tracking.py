"""Run outputs: config.yaml, metrics.jsonl, samples.jsonl, eval.jsonl, the console line and wandb.

Every sample generated is written to samples.jsonl, scored or not, so nothing
is lost; an unscored sample has ``reward: null`` and its ``reward_error``.
Evaluations during training (``ray_jobs/rl/train_eval.py``) go to eval.jsonl, one
line per evaluation keyed by ``step`` = the policy version evaluated, and to
wandb as ``eval/*`` against their own x-axis ``eval/step`` (an evaluation
finishes after later training steps were logged, and wandb steps only increase).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import IO, Any, Literal

import yaml

from actors.messages import ScoredSample
from ray_jobs.config.experiment import WandbConfig

log = logging.getLogger(__name__)

EVAL_FILE = "eval.jsonl"


WANDB_DEFAULT_HOST = "https://api.wandb.ai"


def wandb_credentials() -> str | None:
    """Where wandb would find credentials for its server, without reading the key out or calling
    the network: ``WANDB_API_KEY``, ``WANDB_IDENTITY_TOKEN_FILE``, or the netrc entry ``wandb
    login`` writes (``$NETRC``, else ``~/.netrc``) for ``WANDB_BASE_URL`` (default api.wandb.ai),
    found as wandb 0.31 finds it; None when there are none. A netrc entry wandb would refuse (not
    an API key) counts as none, with a warning that names the file only."""
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        if os.environ.get(var):
            return var
    from wandb.errors import AuthenticationError
    from wandb.sdk.lib.wbauth import HostUrl
    from wandb.sdk.lib.wbauth.wbnetrc import read_netrc_auth_with_source

    host = os.environ.get("WANDB_BASE_URL") or WANDB_DEFAULT_HOST
    try:
        found = read_netrc_auth_with_source(host=HostUrl(host))
    except (AuthenticationError, ValueError) as e:
        log.warning(
            "wandb: the netrc entry for %s is not a usable API key (%s); running offline", host, type(e).__name__
        )
        return None
    return None if found is None else found.source


def _wandb_mode(cfg: WandbConfig) -> Literal["online", "offline", "disabled"]:
    """``cfg.mode``; ``auto`` is online exactly when ``wandb_credentials`` finds credentials."""
    if cfg.mode != "auto":
        return cfg.mode
    source = wandb_credentials()
    if source is None:
        log.info("wandb: no credentials found (wandb login or WANDB_API_KEY); logging offline")
        return "offline"
    log.info("wandb: online with the credentials from %s", source)
    return "online"


def start_wandb(directory: Path, cfg: WandbConfig, config: dict, run_name: str, run_id: str | None):
    """A wandb run for a job's run directory (its files under ``<directory>/wandb``, console capture off),
    continuing the run ``run_id`` when given; None when ``wandb.mode`` is disabled."""
    mode = _wandb_mode(cfg)
    if mode == "disabled":
        return None
    import wandb

    wdir = directory / "wandb"
    wdir.mkdir(parents=True, exist_ok=True)
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        os.environ.setdefault(var, str(wdir.resolve()))  # keep wandb out of $HOME
    os.environ.setdefault("WANDB_SILENT", "true")
    return wandb.init(
        project=cfg.project,
        entity=cfg.entity,
        group=cfg.group,
        tags=list(cfg.tags) or None,
        name=run_name,
        config=config,
        mode=mode,
        id=run_id,
        resume="allow",
        dir=str(wdir),
        settings=wandb.Settings(console="off"),
    )


class RunRecorder:
    """Writes one run's outputs under ``directory``.

    Invariant: ``metrics.jsonl`` gets exactly one line per learner step and
    ``samples.jsonl`` one line per generated sample, in step order. A run that
    resumes at ``start_step`` first drops the lines of steps ``>= start_step``
    (written after its checkpoint, before the crash) and then appends, so every
    step appears exactly once; wandb continues the run ``wandb_id``.
    ``eval.jsonl`` gets one line per evaluation, in the order they finish; on
    resume it keeps the evaluations of policies ``<= start_step`` (the
    checkpoint's policy and older ones: still valid, whenever they were written)
    and drops newer ones, which the resumed run evaluates again; ``eval_steps``
    lists the kept ones.
    """

    with_samples = True
    """Whether the job generates samples (``samples.jsonl``) and held-out evaluations (``eval/*`` on
    their own wandb axis, ``eval/step``); the offline jobs do neither."""

    def __init__(
        self,
        directory: Path,
        config: dict,
        wandb_cfg: WandbConfig,
        run_name: str,
        total_steps: int,
        start_step: int = 0,
        wandb_id: str | None = None,
    ) -> None:
        from ray_jobs.runtime.lifecycle import truncate_jsonl

        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / "config.yaml.tmp"
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
        os.replace(tmp, directory / "config.yaml")
        files = ("metrics.jsonl", "samples.jsonl") if self.with_samples else ("metrics.jsonl",)
        dropped = {name: truncate_jsonl(directory / name, start_step) for name in files}
        dropped[EVAL_FILE] = truncate_jsonl(directory / EVAL_FILE, start_step + 1)
        self.eval_steps = _steps_in(directory / EVAL_FILE)
        if any(dropped.values()):
            log.info("resuming at step %d: dropped lines written after the checkpoint %s", start_step, dropped)
        self._metrics = (directory / "metrics.jsonl").open("a")
        self._samples = (directory / "samples.jsonl").open("a") if self.with_samples else None
        self._evals: IO[str] | None = None  # eval.jsonl, opened by the first evaluation
        self._wandb_step = max(start_step - 1, 0)  # the newest step logged to wandb
        self.total_steps = total_steps
        self.wandb_cfg = wandb_cfg
        self.wandb_id = wandb_id or _new_wandb_id()
        self._wandb = self._start_wandb(config, run_name)

    def sync(self) -> None:
        """Flush and fsync the output files (before a checkpoint is written)."""
        for f in (f for f in (self._metrics, self._samples, self._evals) if f is not None):
            f.flush()
            os.fsync(f.fileno())

    def _start_wandb(self, config: dict, run_name: str):
        run = start_wandb(self.directory, self.wandb_cfg, config, run_name, self.wandb_id)
        if run is not None and self.with_samples:
            run.define_metric("eval/step")
            run.define_metric("eval/*", step_metric="eval/step")
        return run

    def record_step(
        self, step: int, metrics: dict[str, float], scored: list[ScoredSample], advantages: list[float | None]
    ) -> None:
        """Append the step's metrics and samples, print the console line, log to wandb."""
        row = {"step": step, **metrics}
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()
        if self._samples is not None:
            for s, adv in zip(scored, advantages):
                self._samples.write(json.dumps(_sample_row(step, s, adv)) + "\n")
            self._samples.flush()
        print(_console_line(step, self.total_steps, metrics), flush=True)
        self._wandb_step = step
        if self._wandb is not None:
            payload: dict[str, Any] = dict(metrics)
            if step % self.wandb_cfg.table_every == 0 or step == self.total_steps - 1:
                payload["completions"] = self._table(step, scored, advantages)
            self._wandb.log(payload, step=step)

    def record_eval(self, step: int, metrics: dict[str, float | None]) -> None:
        """Append the evaluation of policy ``step`` to eval.jsonl (None: not computable, null),
        print its console line and log it to wandb (values that are None left out), merged
        into the newest training step's row with ``eval/step`` as its x-axis."""
        if self._evals is None:
            self._evals = (self.directory / EVAL_FILE).open("a")
        self._evals.write(json.dumps({"step": step, **metrics}) + "\n")
        self._evals.flush()
        self.eval_steps.add(step)
        print(_eval_line(step, self.total_steps, metrics), flush=True)
        if self._wandb is not None:
            payload = {k: v for k, v in metrics.items() if v is not None}
            self._wandb.log({**payload, "eval/step": step}, step=self._wandb_step)

    def _table(self, step: int, scored: list[ScoredSample], advantages: list[float | None]):
        import wandb

        table = wandb.Table(
            columns=["step", "prompt", "completion", "reward", "reward_error", "advantage", "policy_version"]
        )
        for s, adv in list(zip(scored, advantages))[: self.wandb_cfg.table_rows]:
            table.add_data(
                step,
                s.sample.prompt.prompt_text,
                s.sample.completion_text,
                s.reward,
                s.reward_error,
                adv,
                s.sample.policy_version,
            )
        return table

    def close(self) -> None:
        for f in (f for f in (self._metrics, self._samples, self._evals) if f is not None):
            f.close()
        if self._wandb is not None:
            self._wandb.finish()


def _steps_in(path: Path) -> set[int]:
    """The ``step`` of every line of a JSONL file (none when it does not exist)."""
    if not path.exists():
        return set()
    return {json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()}


def _eval_line(step: int, total: int, m: dict[str, float | None]) -> str:
    def num(key: str) -> str:
        return "n/a" if m.get(key) is None else f"{m[key]:.3f}"

    rates = (
        f" | block {num('eval/block_rate')} false-block {num('eval/false_block_rate')}"
        if "eval/block_rate" in m
        else ""
    )
    return (
        f"eval at step {step:>4}/{total} | reward {num('eval/reward_mean')} ± {num('eval/reward_sd')} "
        f"| {m.get('eval/scored') or 0:.0f} scored {m.get('eval/unscored') or 0:.0f} unscored{rates}"
    )


def _new_wandb_id() -> str:
    import secrets

    return secrets.token_hex(4)


def _sample_row(step: int, s: ScoredSample, advantage: float | None) -> dict[str, Any]:
    return {
        "step": step,
        "prompt_id": s.sample.prompt.prompt_id,
        "group_id": s.sample.group_id,
        "prompt": s.sample.prompt.prompt_text,
        "completion": s.sample.completion_text,
        "reward": s.reward,
        "reward_error": s.reward_error,
        "terms": s.terms,
        "advantage": advantage,
        "policy_version": s.sample.policy_version,
        "final_policy_version": s.sample.final_policy_version,
        "truncated": s.sample.truncated,
    }


def _console_line(step: int, total: int, m: dict[str, float]) -> str:
    return (
        f"step {step + 1:>4}/{total} | reward {m['reward/mean']:.3f} ± {m['reward/std']:.3f} "
        f"| loss {m.get('loss', float('nan')):+.4f} | staleness {m['staleness/mean']:.1f}/{m['staleness/max']:.0f} "
        f"| {m['throughput/samples_per_s']:.1f} samples/s (10-step window) | judge {m['judge/requests']:.0f} req "
        f"{m['judge/failures']:.0f} failed{_spent(m)} | {m['time/step_s']:.2f} s{_faults(m)}"
    )


def _spent(m: dict[str, float]) -> str:
    """The run's judge spending so far (``judge/cost_usd_total``), when a token has a price."""
    return f" ${m['judge/cost_usd_total']:.4f}" if "judge/cost_usd_total" in m else ""


def _faults(m: dict[str, float]) -> str:
    """The cumulative fault counters, when any fault happened."""
    names = ("rollout_restarts", "judge_restarts", "calls_resent")
    if not any(m.get(f"faults/{n}") for n in names):
        return ""
    return " | faults: " + ", ".join(f"{n} {m.get(f'faults/{n}', 0):.0f}" for n in names)
