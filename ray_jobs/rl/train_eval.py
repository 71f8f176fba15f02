"""Held-out evaluation while an RL run trains (``eval.every_steps``).

After ``s`` learner steps, when ``s % eval.every_steps == 0`` or ``s`` is the
last step, the driver sends the fixed held-out prompts (``eval.data``, the first
``eval.max_prompts``) to the rollout workers as calls pinned to policy version
``s`` (``min_version=s``, just after the weights of ``s`` were published) with
the evaluation's sampling (``eval.samples_per_prompt`` at ``eval.temperature``,
greedy by default), each call's result going to the judge pool by object
reference, as training batches do. The driver does not wait: at every step it
writes the evaluations that have finished and goes on training. Evaluation
samples never enter a training batch, samples.jsonl or metrics.jsonl.

Where the results go: ``eval.jsonl``, one line per evaluation with ``step`` =
``s`` (the policy version evaluated), in the order they finish, and wandb as
``eval/*`` against ``eval/step`` (``ray_jobs/runtime/tracking.py``). metrics.jsonl keeps
exactly one line per learner step. Exactly once, across kills and resumes: the
policy of a checkpoint at step C and every older policy are final, so on resume
eval.jsonl keeps the evaluations of steps <= C (whenever they were written) and
drops newer ones, which the resumed run evaluates again on the same policies.
An evaluation of an older policy cannot be redone after a resume (only policy C
is restored), so a checkpoint at C first waits for the evaluations of steps < C
still running (they had at least a whole step to finish: usually none); the
evaluation of C itself is not waited for: a run resumed at C launches it again
if its line is missing. The final checkpoint waits for every evaluation (the
run is not finished before its last one).

Sampling order: evaluation calls are outside the workers' send order
(``seq=None``) and draw nothing from a worker's RNG (greedy decodes; at a
temperature above 0 each call samples from a private generator seeded from
``run.seed``, the step and the call), so on the HF backend a seeded run trains
on exactly the samples it would without evaluation, and its evaluations repeat
too. They do take rollout time (an HF worker generates one call at a time, and
its next weight update waits for an evaluation of the previous version) and
judge capacity (the same pool, rate limits and cache). With vLLM, evaluation
requests share the engine's batches (greedy requests are unaffected by batch
composition only up to numerics) and may span a weight update; such samples
are counted in ``eval/off_version_samples``.

Faults: an evaluation call lost with its actor (worker or judge restarted), or
not finished ``rollout.call_timeout_s`` after launch when a checkpoint waits
for it, is not sent again; its samples are counted in ``eval/lost_samples``
and left out of every other metric.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import ray

from actors.messages import PromptItem, ScoreResult
from algorithms.statistics import refusal_rates, summarize
from ray_jobs.config.experiment import TrainEvalConfig
from ray_jobs.data.prompts import DataConfig, load_labelled_prompts
from ray_jobs.rl.judge_outage import judge_outage_cause
from ray_jobs.runtime.faults import is_actor_fault
from ray_jobs.runtime.tracking import RunRecorder

log = logging.getLogger("relay.train")

BLOCKED_TERM = "judge/blocked"  # the request check's flag in ScoredSample.terms (0/1)


@dataclass(frozen=True)
class EvalSet:
    """The fixed held-out prompts. Invariant: ``labels[i]`` is ``items[i]``'s label
    (True: the request should be blocked; None: unknown)."""

    items: list[PromptItem]
    labels: list[bool | None]

    def labels_by_row(self) -> dict[int, bool | None] | None:
        """Dataset row -> label, or None when no prompt has a label (no block rates then)."""
        if all(label is None for label in self.labels):
            return None
        return {item.row: label for item, label in zip(self.items, self.labels)}


def load_eval_set(cfg: TrainEvalConfig, data: DataConfig, tokenizer) -> EvalSet | None:
    """The held-out prompts, read with ``data``'s fields from ``eval.data``; None when evaluation is off."""
    if cfg.every_steps == 0 or cfg.data is None:
        return None
    source = data.model_copy(update={"path": cfg.data, "split": cfg.split, "shuffle": False})
    items, labels = load_labelled_prompts(source, tokenizer, cfg.label_field, key="eval.data")
    keep = cfg.max_prompts or len(items)
    return EvalSet(items[:keep], labels[:keep])


def eval_due(steps_done: int, every: int, total: int) -> bool:
    """Whether the policy after ``steps_done`` learner steps is evaluated: every ``every`` steps and after the last."""
    return every > 0 and steps_done >= 1 and (steps_done % every == 0 or steps_done == total)


def eval_metrics(
    step: int, results: list[ScoreResult], labels: Mapping[int, bool | None] | None, lost: int = 0
) -> dict[str, float | None]:
    """One evaluation's ``eval/*`` metrics. Unscored samples are counted, never scored 0; a value
    that cannot be computed (the sd of one reward) is None. ``labels`` maps dataset rows to labels
    (None: no block rates); the blocked flag of a scored sample is its ``judge/blocked`` term."""
    scored = [s for r in results for s in r.scored]
    rewards = [s.reward for s in scored if s.reward is not None]
    summary = summarize(rewards)
    metrics: dict[str, float | None] = {
        "eval/policy_version": float(step),
        "eval/reward_mean": summary.mean,
        "eval/reward_sd": summary.sd,
        "eval/scored": float(len(rewards)),
        "eval/unscored": float(len(scored) - len(rewards)),
        "eval/lost_samples": float(lost),
        "eval/off_version_samples": float(
            sum(s.sample.policy_version != step or s.sample.final_policy_version is not None for s in scored)
        ),
        "eval/generate_s": sum(r.generate_s for r in results),
        "eval/judge_s": sum(r.judge_s for r in results),
    }
    if labels is not None:
        rates = refusal_rates(
            [labels.get(s.sample.prompt.row) for s in scored],
            [s.terms.get(BLOCKED_TERM) if s.reward is not None else None for s in scored],
        )
        metrics["eval/block_rate"], metrics["eval/false_block_rate"] = rates.block_rate, rates.false_block_rate
    return metrics


@dataclass
class _EvalCall:
    """One evaluation call: its prompts and its ScoreResult's reference (generation, then judging)."""

    prompts: list[PromptItem]
    scored: ray.ObjectRef


@dataclass
class _PendingEval:
    """An evaluation of policy ``step`` launched and not yet recorded."""

    step: int
    calls: list[_EvalCall]
    launched_at: float = field(default_factory=time.monotonic)


class TrainEval:
    """Launches, collects and records the evaluations of one run (module docstring).

    Invariants: an evaluation of step ``s`` is launched at most once per driver
    (none when ``recorder.eval_steps`` already has it) and recorded exactly once;
    ``after_step`` never blocks; ``settle(C)`` returns once no evaluation of a
    step < C (of any step, when C is the last step) is pending.
    """

    def __init__(
        self,
        cfg: TrainEvalConfig,
        evalset: EvalSet | None,
        stages,
        recorder: RunRecorder | None,
        total_steps: int,
        prompts_per_call: int,
        seed: int,
        timeout_s: float,
    ) -> None:
        self.cfg, self.evalset = cfg, evalset
        self.stages, self.recorder = stages, recorder
        self.total_steps, self.per_call, self.seed, self.timeout_s = total_steps, prompts_per_call, seed, timeout_s
        self.labels = evalset.labels_by_row() if evalset is not None else None
        self.pending: dict[int, _PendingEval] = {}

    @classmethod
    def disabled(cls) -> TrainEval:
        """An instance that evaluates nothing (``eval.every_steps: 0``)."""
        return cls(TrainEvalConfig(), None, None, None, 0, 1, 0, 0.0)

    def after_step(self, steps_done: int) -> None:
        """Record the evaluations that finished; launch the one of ``steps_done`` when due
        (the weights of ``steps_done`` are the newest published)."""
        if self.evalset is None or self.recorder is None:  # disabled: both are None
            return
        self._record_finished()
        if (
            eval_due(steps_done, self.cfg.every_steps, self.total_steps)
            and steps_done not in self.pending
            and steps_done not in self.recorder.eval_steps
        ):
            self.pending[steps_done] = self._launch(steps_done)

    def settle(self, steps_done: int) -> None:
        """Before the checkpoint of ``steps_done``: wait for the evaluations of older policies
        (of every policy, at the last step), each at most ``timeout_s`` after its launch."""
        waiting = [s for s in sorted(self.pending) if s < steps_done or steps_done >= self.total_steps]
        for s in waiting:
            pending = self.pending[s]
            refs = [c.scored for c in pending.calls]
            left = max(0.0, pending.launched_at + self.timeout_s - time.monotonic())
            ray.wait(refs, num_returns=len(refs), timeout=left, fetch_local=False)
            self._record(self.pending.pop(s))

    def _launch(self, step: int) -> _PendingEval:
        """The evaluation prompts in calls of ``prompts_per_call``, spread over the workers."""
        assert self.evalset is not None
        items, workers = self.evalset.items, self.stages.rollouts
        calls = []
        for call, lo in enumerate(range(0, len(items), self.per_call)):
            chunk = items[lo : lo + self.per_call]
            generated = workers[call % len(workers)].generate.remote(
                step,
                call,
                chunk,
                step,
                None,
                n=self.cfg.samples_per_prompt,
                temperature=self.cfg.temperature,
                seed=(self.seed * 1_000_003 + step) * 1_000 + call,
            )
            calls.append(_EvalCall(chunk, self.stages.judge.score.remote(generated)))
        log.info("evaluating policy v%d on %d held-out prompts (%d calls)", step, len(items), len(calls))
        return _PendingEval(step, calls)

    def _record_finished(self) -> None:
        for s in sorted(self.pending):
            refs = [c.scored for c in self.pending[s].calls]
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
            if len(done) == len(refs):
                self._record(self.pending.pop(s))

    def _record(self, pending: _PendingEval) -> None:
        """Fetch what finished (a call lost with its actor, or unfinished, counts as lost) and record it."""
        assert self.recorder is not None
        results, lost = [], 0
        for call in pending.calls:
            ready, _ = ray.wait([call.scored], timeout=0, fetch_local=False)
            cause = "not finished in time"
            if ready:
                try:
                    results.append(ray.get(call.scored))
                    continue
                except Exception as exc:  # an actor fault (or a judge outage) is counted, anything else raised
                    if not is_actor_fault(exc) and judge_outage_cause(exc) is None:
                        raise
                    cause = type(exc).__name__
            lost += len(call.prompts) * self.cfg.samples_per_prompt
            log.warning("evaluation of v%d lost a call of %d prompts (%s)", pending.step, len(call.prompts), cause)
        self.recorder.record_eval(pending.step, eval_metrics(pending.step, results, self.labels, lost))
