"""The judge pool: turns a rollout worker's ``RolloutResult`` into a ``ScoreResult``.

A plain class, wrapped elsewhere with ``ray.remote`` as an async actor (this
module does not import Ray). All samples of one call are scored concurrently;
the judge's own semaphore (``judge.max_concurrency``) bounds the requests in
flight, also across concurrent ``score`` calls on the same actor.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from pydantic import SecretStr

from actors.messages import RolloutResult, Sample, ScoredSample, ScoreResult
from rewards.composer import JUDGE_TERM, RewardComposer, ScoredParts
from rewards.config import JudgeConfig, RewardConfig

__all__ = ["JudgePool"]

logger = logging.getLogger(__name__)

CRITERION_KEY_PREFIX = f"{JUDGE_TERM}/"
"""Per-criterion judge scores (0–10) appear in ``ScoredSample.terms`` as
``judge/<criterion>``, next to the term values, for logging."""


class JudgePool:
    """Scores rollout results with the configured reward terms.

    Invariants: ``score`` returns one ``ScoredSample`` per input sample, in
    input order; a sample whose reward could not be computed has
    ``reward=None`` and a cause in ``reward_error`` (never 0); the cumulative
    counters only grow. The API key stays inside the judge client.
    """

    def __init__(self, judge: JudgeConfig, reward: RewardConfig, api_key: SecretStr) -> None:
        self._composer = RewardComposer(reward, judge, api_key)
        self._judge_weighted = any(t.name == JUDGE_TERM and t.weight != 0 for t in reward.terms)
        self._samples = 0
        self._unscored = 0
        self._judge_requests = 0
        self._judge_failures = 0
        self._failures_by_cause: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"JudgePool({self._composer!r})"

    async def check(self) -> None:
        """Check the judge endpoint once (``JudgeUnreachableError`` on failure)."""
        await self._composer.check_endpoint()

    async def score(self, result: RolloutResult) -> ScoreResult:
        """Score every sample of ``result`` concurrently.

        ``judge_s`` is the wall time of this call, ``judge_requests`` the HTTP
        requests sent to the judge, ``judge_failures`` the samples left
        unscored because the (weighted) judge failed.
        """
        started = time.perf_counter()
        parts = await asyncio.gather(
            *(self._composer.score(s.prompt.prompt_text, s.completion_text) for s in result.samples)
        )
        scored: list[ScoredSample] = []
        requests = failures = 0
        for sample, part in zip(result.samples, parts):
            scored.append(self._record(sample, part))
            requests += part.judge_requests
            failures += int(self._is_judge_failure(part))
        self._judge_requests += requests
        self._judge_failures += failures
        return ScoreResult(
            batch_index=result.batch_index,
            scored=scored,
            generate_s=result.generate_s,
            judge_s=time.perf_counter() - started,
            judge_requests=requests,
            judge_failures=failures,
        )

    def _is_judge_failure(self, part: ScoredParts) -> bool:
        return part.reward is None and part.judge_error is not None and self._judge_weighted

    def _record(self, sample: Sample, part: ScoredParts) -> ScoredSample:
        """Count and log one sample's outcome; build its ``ScoredSample``."""
        self._samples += 1
        if part.reward is None:
            self._unscored += 1
            cause = part.error or "unknown"
            self._failures_by_cause[cause] += 1
            logger.warning(
                "sample left unscored: prompt_id=%s group_id=%s group_index=%d cause=%s",
                sample.prompt.prompt_id, sample.group_id, sample.group_index, cause,
            )
        terms: dict[str, float | None] = dict(part.terms)
        terms.update({f"{CRITERION_KEY_PREFIX}{k}": v for k, v in part.criteria.items()})
        return ScoredSample(sample=sample, reward=part.reward, reward_error=part.error, terms=terms)

    def stats(self) -> dict[str, object]:
        """Cumulative counters since construction (plain data, safe to log)."""
        return {
            "samples": self._samples,
            "scored": self._samples - self._unscored,
            "unscored": self._unscored,
            "judge_requests": self._judge_requests,
            "judge_failures": self._judge_failures,
            "failures_by_cause": dict(self._failures_by_cause),
        }

    async def close(self) -> None:
        """Release the judge's HTTP client."""
        await self._composer.aclose()
