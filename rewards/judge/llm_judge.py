"""LLM-as-a-judge reward over OpenAI-compatible chat-completions endpoints.

``JudgeReward.score(request, completion)`` for one sample:

1. strip ``<think>`` (``judge.strip_think``);
2. **rule gate** (``judge.rule_gate``, ``rewards/judge/gate.py``): an empty or
   degenerate answer gets the rubric's minimum reward without a request;
3. **cache** (``rewards/judge/cache.py``): a verdict for the same (judge models,
   rubric version, prompt version, request, candidate) is reused, and
   identical requests in flight at the same time share one verdict;
4. **ask the judge** (``rewards/client/chat_client.py``: balancing, limits, breaker,
   retries) with the fenced prompt of ``rewards/judge/prompt.py``, temperature
   ``judge.temperature`` (0 by default) and ``response_format`` per
   ``judge.response_format`` (the verdict's strict JSON schema by default);
5. **parse and validate** (``rewards/judge/verdict.py``); an empty, malformed or
   invalid reply is asked again up to ``judge.malformed_retries`` times;
6. the reward is ``Rubric.reward(verdict)`` (``rewards/judge/rubric.py``): the
   weighted criteria score in [0, 1], or the request check's outcome.

``JudgeReward.score_group(request, completions, group_key)`` judges the completions of one
prompt group together, in one request (``judge.mode: group``; ``rewards/judge/group.py``).

Failure policy: a judge that does not give a valid verdict gives *no score*.
``score`` then raises ``JudgeError`` (a ``RewardError``) with a short cause:
``judge_timeout``, ``judge_connection_error``, ``judge_http_<status>``,
``judge_circuit_open``, ``judge_deadline``, ``judge_empty``,
``judge_malformed``, ``judge_invalid_verdict`` or ``judge_error:<Type>``. It
never returns 0 for a failure, and failures are never cached. Messages never
contain an API key nor any text sent back by the endpoint with an HTTP error.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import openai
from pydantic import SecretStr

from rewards.client.chat_client import JudgeClient
from rewards.client.clock import Clock
from rewards.client.endpoint import Endpoint, display_url
from rewards.client.limits import estimate_tokens
from rewards.client.transport import OpenAITransport, Transport, TransportError, make_client
from rewards.errors import JudgeError, JudgeUnreachableError, MissingApiKeyError, RewardError
from rewards.judge.cache import SharedCalls, VerdictCache, verdict_key
from rewards.judge.config import JudgeConfig
from rewards.judge.endpoints import key_variables, read_api_key, resolve_api_keys, resolve_endpoints
from rewards.judge.gate import gate_reason
from rewards.judge.group import GroupJudge
from rewards.judge.prompt import (
    CANDIDATE_CLOSE,
    CANDIDATE_OPEN,
    CRITERION_LINE_RE,
    PROMPT_VERSION,
    REQUEST_CLOSE,
    REQUEST_OPEN,
    build_judge_messages,
    format_criterion_line,
    neutralize_fences,
    response_format_for,
    strip_think,
    system_message,
    user_message,
)
from rewards.judge.rubric import CriterionConfig, Rubric, Verdict
from rewards.judge.verdict import extract_first_json_object, parse_verdict
from rewards.metrics import JudgeTrace

__all__ = [
    "CANDIDATE_CLOSE",
    "CANDIDATE_OPEN",
    "CRITERION_LINE_RE",
    "JudgeError",
    "JudgeReward",
    "JudgeScore",
    "JudgeUnreachableError",
    "MissingApiKeyError",
    "PROMPT_VERSION",
    "REQUEST_CLOSE",
    "REQUEST_OPEN",
    "build_judge_messages",
    "check_endpoint",
    "extract_first_json_object",
    "format_criterion_line",
    "neutralize_fences",
    "parse_verdict",
    "resolve_api_key",
    "resolve_api_keys",
    "strip_think",
    "weighted_score",
]


def weighted_score(scores: Mapping[str, float], criteria: list[CriterionConfig]) -> float:
    """``sum_c w_c * score_c / 10 / sum_c w_c``, in [0, 1] for scores in [0, 10]."""
    total = sum(c.weight for c in criteria)
    if total <= 0:
        raise ValueError("the rubric weights must not all be 0")
    return sum(c.weight * scores[c.name] / 10.0 for c in criteria) / total


# --------------------------------------------------------------------------
# API keys and the endpoint check
# --------------------------------------------------------------------------


def resolve_api_key(judge: JudgeConfig, environ: Mapping[str, str]) -> SecretStr:
    """The key of the first endpoint (``judge.api_key_env`` in the one-endpoint
    form), after checking that every endpoint's variable is set.

    Raises ``MissingApiKeyError`` (naming the variable, never a value) when a
    variable is unset or empty. ``JudgeReward`` reads the other endpoints'
    keys itself; pass ``resolve_api_keys(...)`` to hand them all over.
    """
    keys = resolve_api_keys(judge, environ)
    return keys[key_variables(judge)[0]]


def _all_keys(
    judge: JudgeConfig, api_key: SecretStr | Mapping[str, SecretStr], environ: Mapping[str, str] | None
) -> dict[str, SecretStr]:
    """Variable name -> key for every endpoint: from ``api_key`` (the first
    endpoint's key, or a mapping), the others from ``environ`` (default ``os.environ``)."""
    names = key_variables(judge)
    if isinstance(api_key, SecretStr):
        keys = {names[0]: api_key}
    elif isinstance(api_key, Mapping) and all(isinstance(v, SecretStr) for v in api_key.values()):
        keys = dict(api_key)
    else:
        raise TypeError("the judge API key must be passed as a pydantic.SecretStr (or a mapping of them)")
    env = os.environ if environ is None else environ
    for name in names:
        if name not in keys:
            keys[name] = read_api_key(name, env, "judge.endpoints[*].api_key_env")
    return keys


async def _check_one(endpoint: Endpoint, timeout_s: float) -> str | None:
    """None if ``GET /models`` answers, else a key-free reason."""
    client = make_client(endpoint.base_url, endpoint.api_key, timeout_s)
    try:
        await client.models.list()
    except Exception as err:  # noqa: BLE001 - every failure is reported the same way
        return _check_failure_reason(err, endpoint.api_key_env, timeout_s)
    finally:
        await client.close()
    return None


def _check_failure_reason(err: Exception, api_key_env: str, timeout_s: float) -> str:
    if isinstance(err, openai.APITimeoutError):
        return f"no answer within {timeout_s:g} s"
    if isinstance(err, openai.APIStatusError):
        if err.status_code in (401, 403):
            return f"HTTP {err.status_code} (the API key in ${api_key_env} was rejected)"
        return f"HTTP {err.status_code}"
    if isinstance(err, openai.APIConnectionError):
        cause = type(err.__cause__).__name__ if err.__cause__ is not None else "connection error"
        return f"connection failed ({cause})"
    return type(err).__name__


async def check_endpoints(endpoints: list[Endpoint], timeout_s: float, label: str = "judge") -> None:
    """``GET {base_url}/models`` on every endpoint; ``JudgeUnreachableError`` naming
    the first that fails (``label``, e.g. ``judge`` or ``engine geo``, the URL without
    user info or query, a key-free reason; the underlying exception is not chained:
    its text may hold what the endpoint sent)."""
    reasons = await asyncio.gather(*(_check_one(e, timeout_s) for e in endpoints))
    for endpoint, reason in zip(endpoints, reasons):
        if reason is not None:
            raise JudgeUnreachableError(f"{label} endpoint {display_url(endpoint.base_url)} is unreachable: {reason}")


async def check_endpoint(judge: JudgeConfig, api_key: SecretStr | Mapping[str, SecretStr]) -> None:
    """Check every endpoint of ``judge`` (see ``check_endpoints``)."""
    endpoints = resolve_endpoints(judge, _all_keys(judge, api_key, None))
    await check_endpoints(endpoints, judge.timeout_s)


# --------------------------------------------------------------------------
# The reward
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgeScore:
    """A verdict's reward. ``score`` in [``Rubric.min_reward``, ``max_reward``];
    ``criteria`` the raw 0-10 scores (empty for rule-gated samples); ``flags``
    the request check as 0/1; ``requests`` the HTTP requests it took;
    ``trace`` the retries, latencies, cache hit and gate reason."""

    score: float
    criteria: dict[str, float]
    requests: int
    flags: dict[str, float] = field(default_factory=dict)
    trace: JudgeTrace = field(default_factory=JudgeTrace)


class JudgeReward:
    """Scores (request, completion) pairs with an LLM judge (module docstring).

    Invariants: a failure raises ``JudgeError`` and never yields a score; only
    valid verdicts enter the cache; the API keys are only unwrapped to build
    HTTP clients. ``transport``, ``clock`` and ``rng`` are injectable for tests.
    """

    def __init__(
        self,
        judge: JudgeConfig,
        api_key: SecretStr | Mapping[str, SecretStr],
        *,
        transport: Transport | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._judge = judge
        self._rubric: Rubric = judge.rubric_spec()
        self._endpoints = resolve_endpoints(judge, _all_keys(judge, api_key, environ))
        self._client = JudgeClient(
            self._endpoints,
            judge.timeout_s,
            judge.retry,
            judge.circuit_breaker,
            transport or OpenAITransport(judge.timeout_s, clock),
            clock,
            rng,
        )
        self._cache = VerdictCache(judge.cache_size, judge.cache_path)
        self._models = sorted({e.model for e in self._endpoints})
        self._response_format = response_format_for(judge.response_format, self._rubric)
        self._system = system_message(self._rubric)  # the same for every sample
        self._shared: SharedCalls[Verdict] = SharedCalls(self._cache)
        self.totals: Counter[str] = Counter()
        self._group = GroupJudge(judge, self._rubric, self._client, self._models, self.totals)

    def __repr__(self) -> str:
        return f"JudgeReward(endpoints={[e.display for e in self._endpoints]}, rubric={self._rubric.version!r})"

    @property
    def rubric(self) -> Rubric:
        return self._rubric

    @property
    def criteria(self) -> list[CriterionConfig]:
        """The rubric's criteria, in order."""
        return list(self._rubric.criteria)

    @property
    def client(self) -> JudgeClient:
        """The HTTP policy layer (its ``gauge`` counts requests in flight)."""
        return self._client

    @property
    def cache(self) -> VerdictCache:
        return self._cache

    async def score(self, request_text: str, completion_text: str) -> JudgeScore:
        """Judge one completion; raise ``JudgeError`` if there is no valid verdict."""
        trace = JudgeTrace()
        candidate = strip_think(completion_text) if self._judge.strip_think else completion_text
        reason = gate_reason(candidate) if self._judge.rule_gate else None
        if reason is not None:
            trace.gated = reason
            self.totals["rule_gated"] += 1
            return JudgeScore(self._rubric.min_reward, {}, 0, {}, trace)
        try:
            verdict = await self._cached_or_judged(request_text, candidate, trace)
        except (RewardError, TransportError) as err:
            self._count(trace, failed=True)
            raise JudgeError(err.cause, err.detail, requests=trace.requests, trace=trace) from None
        self._count(trace, failed=False)
        return JudgeScore(self._rubric.reward(verdict), dict(verdict.criteria), trace.requests, verdict.flags(), trace)

    async def score_group(
        self, request_text: str, completions: Sequence[str], group_key: str
    ) -> list[JudgeScore | JudgeError]:
        """Judge one prompt group's completions together (``judge.mode: group``,
        ``rewards/judge/group.py``): one entry per completion, in input order, a ``JudgeError``
        where a completion got no valid verdict (never a 0). ``group_key`` seeds the shown order."""
        results: list[JudgeScore | JudgeError] = []
        for outcome in await self._group.run(request_text, completions, group_key):
            trace = outcome.trace
            if trace.gated is not None:
                self.totals["rule_gated"] += 1
            else:
                self._count(trace, failed=outcome.score is None)
            if outcome.score is None:
                cause = outcome.cause or "judge_group_partial"
                results.append(JudgeError(cause, outcome.detail, requests=trace.requests, trace=trace))
            else:
                results.append(JudgeScore(outcome.score, outcome.criteria, trace.requests, outcome.flags, trace))
        return results

    def _count(self, trace: JudgeTrace, failed: bool) -> None:
        self.totals["requests"] += trace.requests
        self.totals["retries"] += sum(trace.retries.values())
        self.totals["cache_hits"] += int(trace.cache_hit)
        self.totals["failures"] += int(failed)

    async def _cached_or_judged(self, request_text: str, candidate: str, trace: JudgeTrace) -> Verdict:
        """A cached verdict, one shared with an identical request in flight, or a new one."""
        if not self._cache.enabled:
            return await self._judged(request_text, candidate, trace)
        key = verdict_key(self._models, self._rubric.version, PROMPT_VERSION, request_text, candidate)
        verdict, hit = await self._shared.run(key, lambda: self._judged(request_text, candidate, trace))
        trace.cache_hit = hit
        return verdict

    async def _judged(self, request_text: str, candidate: str, trace: JudgeTrace) -> Verdict:
        """Ask the judge; re-ask after an empty/malformed/invalid reply, at most
        ``judge.malformed_retries`` times (each counted in ``trace.retries``)."""
        messages = [
            {"role": "system", "content": self._system},
            {"role": "user", "content": user_message(request_text, candidate, self._judge.max_candidate_chars)},
        ]
        body: dict[str, object] = {
            "messages": messages,
            "temperature": self._judge.temperature,
            "max_tokens": self._judge.max_tokens,
        }
        if self._response_format is not None:
            body["response_format"] = self._response_format
        tokens = estimate_tokens(messages, self._judge.max_tokens)
        strict = self._judge.response_format != "none"
        left = self._judge.malformed_retries
        while True:
            try:
                reply = await self._client.complete(body, tokens, trace)
                return parse_verdict(reply.content, self._rubric, strict=strict)
            except RewardError as err:
                if left == 0:
                    raise
                left -= 1
                trace.retries[err.cause] += 1

    async def check_endpoint(self) -> None:
        """``GET /models`` on every endpoint (see ``check_endpoints``)."""
        await check_endpoints(self._endpoints, self._judge.timeout_s)

    def stats(self) -> dict[str, object]:
        """Cumulative counters (plain data, key-free)."""
        return {
            **dict(self.totals),
            "circuit_opened": {e.display: self._client.breakers[e.key].opened_count for e in self._endpoints},
        }

    async def aclose(self) -> None:
        """Close the HTTP clients of the current event loop and the disk cache."""
        await self._client.aclose()
        self._cache.close()
        self._group.close()
