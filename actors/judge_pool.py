"""The judge pool: turns a rollout worker's ``RolloutResult`` into a ``ScoreResult``.

A plain class, wrapped elsewhere with ``ray.remote`` as ONE async actor (this
module does not import Ray), so every rollout call's scoring runs on one
event loop and shares one ``JudgeReward`` and one ``ChatEngine`` per reward
engine: their per-endpoint limits (concurrency, requests/min, tokens/min),
circuit breakers, caches and in-flight gauges apply across all concurrent
``score`` calls. Each sample is scored with its prompt's dataset row
(``PromptItem.fields``), which terms taking ``ctx`` read as ``ctx.row``;
a TRL-style reward function gets the call's samples as one batch.

Judge outages (``rewards/client/outage.py``): while the judge is down, a call
sends nothing and waits; a sample whose judge failed with an outage cause
while the judge was down (or went down during its call) is not returned
unscored: the call waits until the judge answers again (one shared probe,
backoff from ``judge.circuit_breaker.cooldown_s`` doubling to 30 s) and scores
it again through ``RewardComposer.score_batch`` (in group mode, its whole
group), up to ``MAX_OUTAGE_ROUNDS`` times. Once the judge has been down for
``judge.max_outage_s`` with no request completed, the call raises
``JudgeOutageError`` (the driver stops the run as on SIGTERM).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence

from pydantic import SecretStr

from actors.messages import RolloutResult, Sample, ScoredSample, ScoreResult
from rewards.client.clock import SystemClock
from rewards.client.outage import JudgeOutage, OutageWaiter, is_outage_cause
from rewards.composer import JUDGE_TERM, RewardComposer, ScoredParts, ScoreInput
from rewards.config import RewardConfig
from rewards.judge.config import JudgeConfig
from rewards.llm import EngineUsage
from rewards.metrics import JudgeTrace, call_metrics, engine_metrics, spend_metrics, term_metrics

__all__ = ["JudgePool"]

logger = logging.getLogger(__name__)

CRITERION_KEY_PREFIX = f"{JUDGE_TERM}/"
"""Per-criterion judge scores (0–10) and the request check's flags (0/1:
``judge/inappropriate``, ``judge/blocked``) appear in ``ScoredSample.terms``
as ``judge/<name>``, next to the term values, for logging."""

PROBE_BODY: dict[str, object] = {
    "messages": [{"role": "user", "content": "Reply with the word OK."}],
    "max_tokens": 1,
    "temperature": 0.0,
}
"""The outage probe: the smallest chat completion (any answer but a retryable failure ends the outage)."""
PROBE_MAX_BACKOFF_S = 30.0
MAX_OUTAGE_ROUNDS = 5
"""A call scores again what outages failed at most this many times (a sample whose own requests
keep tripping the breakers while the probe is answered is not waited on forever)."""


class JudgePool:
    """Scores rollout results with the configured reward terms.

    Invariants: ``score`` returns one ``ScoredSample`` per input sample, in
    input order, each scored exactly once; a sample whose reward could not be
    computed has ``reward=None`` and a cause in ``reward_error`` (never 0);
    the cumulative counters only grow. The API keys stay inside the judge
    client. ``api_key`` is the first endpoint's key or a mapping of variable
    names to keys (other endpoints' keys are read from the environment).
    """

    def __init__(self, judge: JudgeConfig, reward: RewardConfig, api_key: SecretStr | Mapping[str, SecretStr]) -> None:
        self._composer = RewardComposer(reward, judge, api_key)
        self._engine_names = sorted(reward.engines)
        self._judge_weighted = any(t.name == JUDGE_TERM and t.weight != 0 for t in reward.terms)
        self._counts: Counter[str] = Counter()
        self._failures_by_cause: Counter[str] = Counter()
        self._instance = uuid.uuid4().hex  # tells this pool's spending from a restarted pool's
        judge_reward = self._composer.judge
        self._group_mode = judge.mode == "group"
        self._waiter: OutageWaiter | None = None
        if judge_reward is not None:
            logger.info("judge: %r", judge_reward)
            client = judge_reward.client
            first = min(PROBE_MAX_BACKOFF_S, max(0.1, judge.circuit_breaker.cooldown_s))
            probe = functools.partial(client.probe, PROBE_BODY)
            self._waiter = OutageWaiter(
                client.outage, probe, SystemClock(), first, PROBE_MAX_BACKOFF_S, judge.max_outage_s
            )

    def __repr__(self) -> str:
        return f"JudgePool({self._composer!r})"

    async def check(self) -> None:
        """Check the judge's and the engines' endpoints once (``JudgeUnreachableError`` on failure)."""
        await self._composer.check_endpoint()

    async def score(self, result: RolloutResult) -> ScoreResult:
        """Score every sample of ``result`` concurrently (TRL-style terms once, for the whole call).

        ``judge_s`` is the wall time of this call, ``judge_requests`` the HTTP
        requests sent to the judge, ``judge_failures`` the samples left
        unscored because the (weighted) judge failed, ``judge_metrics`` the
        call's judge and per-term metrics (``rewards/metrics.py``).
        """
        started = time.perf_counter()
        judge = self._composer.judge
        gauge = judge.client.gauge if judge is not None else None
        with contextlib.ExitStack() as stack:
            watch = stack.enter_context(gauge.watch()) if gauge is not None else _NoWatch()
            engine_watches = {n: stack.enter_context(e.gauge.watch()) for n, e in self._composer.engines.items()}
            parts, rescored = await self._scored(
                [
                    ScoreInput(
                        s.prompt.prompt_text,
                        s.completion_text,
                        s.prompt.fields,
                        s.prompt.messages,
                        s.completion_token_ids,
                        s.group_id,
                    )
                    for s in result.samples
                ]
            )
        scored_at = time.time()
        scored = [self._record(sample, part) for sample, part in zip(result.samples, parts)]
        failures = [p.judge_error for p in parts if self._is_judge_failure(p)]
        requests = sum(p.judge_requests for p in parts)
        self._counts["judge_requests"] += requests
        self._counts["judge_failures"] += len(failures)
        metrics = self._metrics(parts, failures, watch.peak, {n: w.peak for n, w in engine_watches.items()})
        if self._waiter is not None:
            metrics["judge/outage_rescored"] = float(rescored)
        return ScoreResult(
            batch_index=result.batch_index,
            scored=scored,
            generate_s=result.generate_s,
            judge_s=time.perf_counter() - started,
            judge_requests=requests,
            judge_failures=len(failures),
            judge_metrics=metrics,
            score_lags=score_lags(result.samples, scored_at),
        )

    async def _scored(self, inputs: Sequence[ScoreInput]) -> tuple[list[ScoredParts], int]:
        """``score_batch`` of ``inputs``, with what an outage failed scored again once the judge
        answers (module docstring); also returns how many samples were scored again."""
        if self._waiter is None:
            return await self._composer.score_batch(inputs), 0
        await self._waiter.until_up()  # nothing is sent while the judge is down
        mark = self._waiter.detector.mark()
        parts = await self._composer.score_batch(inputs)
        rescored = 0
        for _ in range(MAX_OUTAGE_ROUNDS):
            todo = self._outage_failed(inputs, parts, mark)
            if not todo:
                break
            logger.warning("%d samples failed while the judge was down: scored again once it answers", len(todo))
            await self._waiter.until_up()
            mark = self._waiter.detector.mark()
            again = await self._composer.score_batch([inputs[i] for i in todo])
            for i, part in zip(todo, again):
                parts[i] = _merged(parts[i], part)
            rescored += len(todo)
        else:
            if todo := self._outage_failed(inputs, parts, mark):
                logger.warning("%d samples met %d outages in a row: left unscored", len(todo), MAX_OUTAGE_ROUNDS + 1)
        self._counts["outage_rescored"] += rescored
        return parts, rescored

    def _outage_failed(
        self, inputs: Sequence[ScoreInput], parts: list[ScoredParts], mark: tuple[int, bool]
    ) -> list[int]:
        """Indices to score again: unscored by an outage cause of the judge while the judge was
        down since ``mark`` (in group mode, with every sample of their groups)."""
        assert self._waiter is not None
        if not self._waiter.detector.overlaps(mark):
            return []
        failed = [
            i
            for i, p in enumerate(parts)
            if p.reward is None and p.judge_error is not None and is_outage_cause(p.judge_error)
        ]
        if self._group_mode and failed:
            groups = {inputs[i].group_id for i in failed}
            return [i for i, x in enumerate(inputs) if x.group_id in groups]
        return failed

    async def outage(self) -> JudgeOutage:
        """The judge's outage state (``rewards/client/outage.py``; never down without a judge term)."""
        return self._waiter.detector.state() if self._waiter is not None else JudgeOutage()

    def _metrics(
        self, parts: list[ScoredParts], failures: list[str | None], peak: int, engine_peaks: Mapping[str, int]
    ) -> dict[str, float]:
        """The call's judge, per-term and per-engine metrics (``rewards/metrics.py``)."""
        traces = [p.judge_trace for p in parts if p.judge_trace is not None]
        metrics = call_metrics(traces, [c or "unknown" for c in failures], peak) if self._composer.judge else {}
        engines: dict[str, EngineUsage] = {name: EngineUsage() for name in self._engine_names}
        for name in self._composer.term_names:
            usages = [p.term_usage[name] for p in parts if name in p.term_usage]
            calls = sum(u.llm_calls for u in usages) + (
                sum(p.judge_requests for p in parts) if name == JUDGE_TERM else 0
            )
            metrics.update(
                term_metrics(
                    name, [p.terms.get(name) for p in parts], sum(p.term_seconds.get(name, 0.0) for p in parts), calls
                )
            )
            for usage in usages:
                for engine, counts in usage.engines.items():
                    engines.setdefault(engine, EngineUsage()).add(counts)
        for engine, counts in engines.items():
            metrics.update(engine_metrics(engine, vars(counts), engine_peaks.get(engine, 0)))
        metrics.update(spend_metrics(traces, engines.values()))
        return metrics

    def _is_judge_failure(self, part: ScoredParts) -> bool:
        return part.reward is None and part.judge_error is not None and self._judge_weighted

    def _record(self, sample: Sample, part: ScoredParts) -> ScoredSample:
        """Count and log one sample's outcome; build its ``ScoredSample``."""
        self._counts["samples"] += 1
        trace = part.judge_trace or JudgeTrace()
        self._counts["judge_retries"] += sum(trace.retries.values())
        self._counts["judge_cache_hits"] += int(trace.cache_hit)
        self._counts["judge_rule_gated"] += int(trace.gated is not None)
        if part.reward is None:
            self._counts["unscored"] += 1
            cause = part.error or "unknown"
            self._failures_by_cause[cause] += 1
            logger.warning(
                "sample left unscored: prompt_id=%s group_id=%s group_index=%d cause=%s",
                sample.prompt.prompt_id,
                sample.group_id,
                sample.group_index,
                cause,
            )
        terms: dict[str, float | None] = dict(part.terms)
        terms.update({f"{CRITERION_KEY_PREFIX}{k}": v for k, v in part.criteria.items()})
        terms.update({f"{CRITERION_KEY_PREFIX}{k}": v for k, v in part.judge_flags.items()})
        return ScoredSample(sample=sample, reward=part.reward, reward_error=part.error, terms=terms)

    def stats(self) -> dict[str, object]:
        """Cumulative counters since construction (plain data, safe to log)."""
        samples, unscored = self._counts["samples"], self._counts["unscored"]
        stats: dict[str, object] = {
            "samples": samples,
            "scored": samples - unscored,
            "unscored": unscored,
            "judge_requests": self._counts["judge_requests"],
            "judge_failures": self._counts["judge_failures"],
            "judge_retries": self._counts["judge_retries"],
            "judge_cache_hits": self._counts["judge_cache_hits"],
            "judge_rule_gated": self._counts["judge_rule_gated"],
            "failures_by_cause": dict(self._failures_by_cause),
            **vars(self._composer.spent()),  # input_tokens, output_tokens, cost_usd, usage_estimated
        }
        if self._composer.judge is not None:
            stats["circuit_opened"] = self._composer.judge.stats()["circuit_opened"]
        if self._waiter is not None:
            outage = self._waiter.detector.state()
            stats.update(outages=outage.count, outage_s=round(outage.total_s, 1))
            stats["outage_rescored"] = self._counts["outage_rescored"]
        return stats

    def spent(self) -> tuple[str, float]:
        """(this pool's instance id, US dollars its judge and engines spent since it started, including
        requests of calls still being scored); a restarted pool has another id and starts from 0."""
        return self._instance, self._composer.spent().cost_usd

    async def close(self) -> None:
        """Release the judge's HTTP clients and disk cache."""
        await self._composer.aclose()


def score_lags(samples: list[Sample], scored_at: float) -> list[float]:
    """Per group (in order of appearance), seconds from its last finished sample to ``scored_at``;
    groups whose finish time is unknown (``finished_at`` 0) are left out."""
    finished: dict[str, float] = {}
    for s in samples:
        finished[s.group_id] = max(finished.get(s.group_id, 0.0), s.finished_at)
    return [scored_at - t for t in finished.values() if t > 0]


def _merged(first: ScoredParts, again: ScoredParts) -> ScoredParts:
    """``again`` (a sample scored again after an outage) carrying what both tries took: the judge
    requests, and in the trace every count, counter and list summed (the rest is ``again``'s)."""
    trace = again.judge_trace
    if first.judge_trace is not None and trace is not None:
        values = {}
        for f in dataclasses.fields(JudgeTrace):
            a, b = getattr(first.judge_trace, f.name), getattr(trace, f.name)
            summable = isinstance(b, (int, float, list, Counter)) and not isinstance(b, bool) and type(a) is type(b)
            values[f.name] = a + b if summable and f.name != "deadline" else b
        trace = JudgeTrace(**values)
    return dataclasses.replace(again, judge_requests=first.judge_requests + again.judge_requests, judge_trace=trace)


class _NoWatch:
    """Stands in for the watch of ``InflightGauge.watch()`` without a judge term."""

    peak = 0
