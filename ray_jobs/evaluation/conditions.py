"""Running one evaluation condition on the rollout workers, a critic and the judge pool.

Per condition the held-out items are cut into chunks of ``run.items_per_call``
(fixed positions in item order). Each chunk is one rollout call (k samples per
item at the condition's temperature, seeded by ``chunk_seed`` so a resumed run
samples exactly what the uninterrupted one would), then the selection rule,
then one judge-pool call for the completions that are scored. Every rollout
worker holds one call at a time; judging a chunk overlaps generating the next.

Selection (``select``): ``single`` scores the one completion; ``critic`` scores
every candidate with the critic learner (``beta`` x mean token log-prob under
the critic, ``Learner.score_sequences``) and judges the best; ``judge`` judges
all k and keeps the best judge score (an unscored candidate never wins, and an
item whose candidates are all unscored is unscored, never 0).

Cost accounting (seed 003's): one forward pass per generated candidate plus one
batched critic pass per item, so best-of-4 with a critic costs 5.0 passes and
best-of-4 by the judge 4.0 passes plus 4 judge calls.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import ray

from actors.messages import PromptItem, RolloutResult, ScoreResult, SequenceBatch
from actors.rollout.worker import RolloutWorker
from ray_jobs.config.evaluation import ConditionConfig, EvaluateConfig
from ray_jobs.data.sequences import encode_prompt_completion
from ray_jobs.evaluation.report import ItemResult
from ray_jobs.runtime.actor_settings import auto_threads
from ray_jobs.runtime.faults import RunFaultError, is_actor_fault
from ray_jobs.runtime.placement import rollout_worker_options
from rewards.client.outage import JudgeOutageError

log = logging.getLogger("relay.evaluate")


@dataclass(frozen=True)
class HeldOutItem:
    """One held-out item as a condition's policy sees it (``prompt`` tokenised with its template)."""

    prompt: PromptItem
    messages: list[dict]
    label: bool | None
    stratum: str | None


def chunk_seed(seed: int, condition: str, chunk: int) -> int:
    """The sampling seed of one chunk: fixed by (run seed, condition name, chunk index)."""
    digest = hashlib.sha256(f"{seed}/{condition}/{chunk}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def best_index(scores: Sequence[float | None]) -> int | None:
    """Index of the highest score (the first on ties); None when nothing was scored."""
    scored = [(s, -i) for i, s in enumerate(scores) if s is not None]
    return -max(scored)[1] if scored else None


def critic_batch(tokenizer: Any, items: list[HeldOutItem], candidates: list[list[str]]) -> SequenceBatch:
    """Every (item, candidate) as a critic row: the item's conversation, then the candidate as the
    assistant turn; the loss mask covers the candidate's tokens (as SimPO/SFT training masked them)."""
    ids, masks = [], []
    for item, texts in zip(items, candidates):
        for text in texts:
            full, start = encode_prompt_completion(tokenizer, item.messages, [{"role": "assistant", "content": text}])
            ids.append(full)
            masks.append([0] * start + [1] * (len(full) - start))
    return SequenceBatch(0, ids, masks)


class ConditionRun:
    """One condition's chunks through generation, selection and judging (``results`` yields them in order)."""

    def __init__(
        self,
        name: str,
        cond: ConditionConfig,
        cfg: EvaluateConfig,
        workers: list,
        judge: Any,
        critic: Any | None,
        critic_tokenizer: Any | None,
    ) -> None:
        self.name, self.cond, self.cfg = name, cond, cfg
        self.workers, self.judge, self.critic, self.critic_tokenizer = workers, judge, critic, critic_tokenizer

    def results(
        self, chunks: list[tuple[int, list[HeldOutItem]]], stop: Callable[[], bool]
    ) -> Iterator[list[ItemResult]]:
        """Each chunk's item results, in chunk order, at most one rollout call per worker in flight."""
        pending: list[tuple[int, list[HeldOutItem], int, ray.ObjectRef]] = []
        todo = list(chunks)
        while todo or pending:
            while todo and len(pending) < len(self.workers) and not stop():
                index, items = todo.pop(0)
                worker = next(w for w in range(len(self.workers)) if w not in {p[2] for p in pending})
                pending.append((index, items, worker, self._send(worker, index, items)))
            if not pending:
                return
            index, items, worker, call = pending.pop(0)
            yield self._finish(items, self._collect(index, items, worker, call))

    def _send(self, worker: int, index: int, items: list[HeldOutItem]) -> ray.ObjectRef:
        return self.workers[worker].generate.remote(
            index,
            0,
            [i.prompt for i in items],
            n=self.cond.k,
            temperature=self.cond.temperature,
            seed=chunk_seed(self.cfg.run.seed, self.name, index),
        )

    def _collect(self, index: int, items: list[HeldOutItem], worker: int, call: ray.ObjectRef) -> RolloutResult:
        """The chunk's generation; sent again (its own seed: the same samples) when the worker died, or
        was restarted after finishing nothing for ``rollout.call_timeout_s``, up to ``run.max_actor_restarts`` times."""
        for _attempt in range(self.cfg.run.max_actor_restarts + 1):
            try:
                return ray.get(call, timeout=self.cfg.rollout.call_timeout_s)
            except ray.exceptions.GetTimeoutError:
                cause = f"no result after {self.cfg.rollout.call_timeout_s:g} s"
                ray.kill(self.workers[worker], no_restart=False)
            except Exception as exc:  # noqa: BLE001 - actor faults are recovered, the rest re-raised
                if not is_actor_fault(exc):
                    raise
                cause = type(exc).__name__
            log.warning("%s: rollout worker %d lost chunk %d (%s); sending it again", self.name, worker, index, cause)
            _wait_until_back(self.workers[worker], self.cfg.run.actor_start_timeout_s)
            call = self._send(worker, index, items)
        raise RunFaultError(
            f"{self.name}: rollout worker {worker} failed chunk {index} "
            f"{self.cfg.run.max_actor_restarts + 1} times; re-run the same command to continue"
        )

    def _judge(self, result: RolloutResult) -> ScoreResult:
        """The judge pool's scores of ``result``, asked again when the pool died (Ray restarts it)."""
        for _ in range(self.cfg.run.max_actor_restarts + 1):
            try:
                return ray.get(self.judge.score.remote(result))
            except Exception as exc:  # noqa: BLE001
                if isinstance(cause := getattr(exc, "cause", None), JudgeOutageError):  # past judge.max_outage_s
                    raise RunFaultError(f"{self.name}: {cause}; re-run the same command to continue") from None
                if not is_actor_fault(exc):
                    raise
                log.warning("%s: the judge pool died (%s); asking again", self.name, type(exc).__name__)
                _wait_until_back(self.judge, self.cfg.run.actor_start_timeout_s)
        raise RunFaultError(
            f"{self.name}: the judge pool failed {self.cfg.run.max_actor_restarts + 1} times; "
            "re-run the same command to continue"
        )

    def _finish(self, items: list[HeldOutItem], generated: RolloutResult) -> list[ItemResult]:
        critic_scores, started = None, time.perf_counter()
        if self.cond.critic is not None:
            assert self.critic is not None  # a condition with a critic is run with one
            k, texts = self.cond.k, [s.completion_text for s in generated.samples]
            batch = critic_batch(self.critic_tokenizer, items, [texts[i * k : (i + 1) * k] for i in range(len(items))])
            try:
                rows = self.critic.score_sequences(batch, adapter=self.cond.critic.adapter)
            except Exception as exc:  # noqa: BLE001
                if not is_actor_fault(exc):
                    raise
                raise RunFaultError(
                    f"{self.name}: the critic died ({type(exc).__name__}); re-run the same command to continue"
                ) from None
            critic_scores = [self.cond.critic.beta * r["logp_mean"] for r in rows]
        return finish_chunk(
            self.name, self.cond, items, generated, critic_scores, self._judge, time.perf_counter() - started
        )


def finish_chunk(
    name: str,
    cond: ConditionConfig,
    items: list[HeldOutItem],
    generated: RolloutResult,
    critic_scores: list[float] | None,
    judge: Callable[[RolloutResult], ScoreResult],
    critic_s: float,
) -> list[ItemResult]:
    """Select each item's completion (``critic_scores``: one per candidate, for ``select: critic``),
    judge, and build the chunk's item results. ``judge`` scores a ``RolloutResult`` (the judge pool).
    An item's ``seconds`` is its share of the chunk's generation, critic (``critic_s``) and judge time."""
    k = cond.k
    groups = [generated.samples[i * k : (i + 1) * k] for i in range(len(items))]
    if cond.select == "judge":
        answer = judge(generated)
        judged = answer.scored
        chosen = [best_index([s.reward for s in judged[i * k : (i + 1) * k]]) for i in range(len(items))]
        picks = [judged[i * k + (0 if c is None else c)] for i, c in enumerate(chosen)]
        calls = k
    else:
        if cond.select == "critic":
            assert critic_scores is not None and len(critic_scores) == len(generated.samples)
            chosen = [best_index(critic_scores[i * k : (i + 1) * k]) for i in range(len(items))]
        else:
            chosen = [0] * len(items)
        picked = RolloutResult(
            generated.batch_index,
            [g[0 if c is None else c] for g, c in zip(groups, chosen)],
            generated.generate_s,
            generated.worker_id,
        )
        answer = judge(picked)
        picks, calls = answer.scored, 1
    seconds = (generated.generate_s + critic_s + answer.judge_s) / len(items)
    passes = float(k + (1 if cond.select == "critic" else 0))  # k generations + one batched critic pass
    results = []
    for item, group, c, scored in zip(items, groups, chosen, picks):
        unscored = c is None or scored.reward is None
        error = f"no candidate was scored (first: {scored.reward_error})" if c is None else scored.reward_error
        results.append(
            ItemResult(
                condition=name,
                item_id=item.prompt.prompt_id,
                prompt=item.prompt.prompt_text,
                stratum=item.stratum,
                label=item.label,
                candidates=[s.completion_text for s in group],
                selected=c,
                score=None if unscored else scored.reward,
                error=error if unscored else None,
                blocked=None if unscored else scored.terms.get("judge/blocked"),
                forward_passes=passes,
                generated_tokens=sum(len(s.completion_token_ids) for s in group),
                judge_calls=calls,
                seconds=seconds,
            )
        )
    return results


def _wait_until_back(actor: Any, timeout_s: float) -> None:
    """Until Ray has restarted ``actor`` (its constructor ran again), or ``RunFaultError`` after
    ``timeout_s`` (``run.actor_start_timeout_s``; it is then dead for good: restarts used up, or it cannot start)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=max(1.0, deadline - time.monotonic()))
            return
        except ray.exceptions.ActorUnavailableError:  # restarting
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            break
    raise RunFaultError(
        f"an actor did not come back within {timeout_s:g} s (run.actor_start_timeout_s); re-run the same command "
        "to continue"
    )


def start_workers(cfg: EvaluateConfig, policy_path: str, count: int, engine_groups: list | None = None) -> list:
    """``count`` rollout worker actors generating with ``policy_path`` (their sampling comes per call),
    placed as ``ray_jobs/runtime/placement.py`` plans them. A tensor-parallel engine's worker runs in a
    placement group of its own: ``engine_groups[w]`` for worker w, reserved on first use and kept
    for later calls (the previous policy's workers, closed, left it free)."""
    model = cfg.model.model_copy(update={"path": policy_path, "adapter": "merge"})
    ro = cfg.rollout.model_copy(update={"torch_threads": auto_threads(cfg.rollout.torch_threads, count)})
    groups = [] if engine_groups is None else engine_groups
    workers = []
    for w in range(count):
        group, options = rollout_worker_options(ro, w, groups[w] if w < len(groups) else None)
        if group is not None and w == len(groups):
            groups.append(group)
        actor = ray.remote(RolloutWorker).options(
            **options, max_concurrency=1000, max_restarts=cfg.run.max_actor_restarts, max_task_retries=0
        )
        workers.append(actor.remote(ro, model, worker_id=w, seed=cfg.run.seed))
    return workers
