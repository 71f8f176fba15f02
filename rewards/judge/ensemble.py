"""Judge ensembles (``judge.ensemble``): several judges score every sample.

``EnsembleJudge`` holds one ``JudgeReward`` per member, each built from the
member's ``JudgeConfig`` (``rewards.judge.endpoints.member_configs``: the
judge's, with the member's set fields in place) and so with its own HTTP
client, limits, circuit breakers and verdict cache; all share the rubric and
one in-flight gauge. For one sample every member is asked concurrently, then
(``combine``):

* the reward is ``aggregate`` of the members' rewards by
  ``judge.ensemble_aggregate``: ``mean`` (weighted by the members' weights),
  ``median`` (unweighted) or ``min``, over the members that gave a score;
* each criterion is aggregated the same way over the members that scored it;
  a request-check flag (0/1) is the same aggregate rounded (>= 0.5 is 1);
* ``flags["member/<name>"]`` is each member's reward (absent for a member
  that failed), which the pool logs as ``judge/member/<name>``;
* the trace sums the members' (every member's requests count) and records
  ``member_requests`` and ``member_failures`` (member, cause).

Failure policy: a member that fails leaves the aggregate to the others. Only
when every member failed is the sample unscored: ``JudgeError`` with the
members' cause when they all failed alike (e.g. ``judge_circuit_open``),
else ``judge_ensemble_failed``, and a detail naming each member's cause.
Never 0.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from typing import Literal, Protocol

import numpy as np
from pydantic import SecretStr

from rewards.client.chat_client import JudgeClient
from rewards.client.clock import Clock
from rewards.client.transport import Transport
from rewards.errors import JudgeError, RewardError
from rewards.judge.cache import VerdictCache
from rewards.judge.config import JudgeConfig
from rewards.judge.endpoints import key_variables, keys_from, member_configs
from rewards.judge.llm_judge import JudgeReward, JudgeScore
from rewards.judge.rubric import CriterionConfig, Rubric
from rewards.metrics import InflightGauge, JudgeTrace

__all__ = [
    "ENSEMBLE_FAILED",
    "MEMBER_FLAG_PREFIX",
    "AnyJudge",
    "EnsembleJudge",
    "JudgeMember",
    "aggregate",
    "build_judge",
    "combine",
    "judge_engine_config",
]

Aggregate = Literal["mean", "median", "min"]
ENSEMBLE_FAILED = "judge_ensemble_failed"
MEMBER_FLAG_PREFIX = "member/"
"""``JudgeScore.flags["member/<name>"]``: that member's reward for the sample."""


class JudgeMember(Protocol):
    """What the ensemble needs of a member (``JudgeReward``'s interface)."""

    @property
    def client(self) -> JudgeClient: ...
    @property
    def rubric(self) -> Rubric: ...
    @property
    def cache(self) -> VerdictCache: ...
    async def score(self, request_text: str, completion_text: str) -> JudgeScore: ...
    async def score_group(
        self, request_text: str, completions: Sequence[str], group_key: str
    ) -> list[JudgeScore | JudgeError]: ...
    def stats(self) -> dict[str, object]: ...
    async def check_endpoint(self) -> None: ...
    async def aclose(self) -> None: ...


def aggregate(values: Sequence[float], weights: Sequence[float], how: Aggregate) -> float:
    """``mean``: ``sum(w * v) / sum(w)``; ``median``: the unweighted median (the mean of the middle
    two for an even count); ``min``: the smallest. ValueError for no values or mismatched weights."""
    if not values or len(values) != len(weights):
        raise ValueError(f"aggregate needs values with one weight each (got {len(values)} and {len(weights)})")
    if how == "mean":
        return float(np.average(values, weights=weights))
    if how == "median":
        return float(np.median(values))
    if how == "min":
        return float(min(values))
    raise ValueError(f"unknown ensemble aggregate {how!r}; use mean, median or min")


REQUEST_CHECK_FLAGS = frozenset({"inappropriate", "blocked"})
"""The flags that stay 0/1 when aggregated (the others, e.g. group mode's ``position`` or
``pass/0``, are aggregated like rewards: the same for every member where they describe the
shown order, which a group key fixes)."""


def _aggregate_keys(
    per_member: Sequence[tuple[Mapping[str, float], float]], how: Aggregate, binary: frozenset[str] = frozenset()
) -> dict[str, float]:
    """Each key any member gives, aggregated over the members that give it (keys in ``binary``: rounded to 0/1)."""
    out: dict[str, float] = {}
    for key in dict.fromkeys(k for values, _ in per_member for k in values):
        given = [(values[key], weight) for values, weight in per_member if key in values]
        value = aggregate([v for v, _ in given], [w for _, w in given], how)
        out[key] = float(value >= 0.5) if key in binary else value
    return out


def merged_trace(outcomes: Mapping[str, JudgeScore | JudgeError]) -> JudgeTrace:
    """One sample's trace from its members' outcomes: summed requests, retries, latencies and transport
    failures; ``member_requests`` for every member, ``member_failures`` for each that failed; a cache hit
    when every member's verdict came from its cache; gated when every member gated it."""
    trace = JudgeTrace()
    member_traces = []
    for name, outcome in outcomes.items():
        trace.member_requests[name] += outcome.requests
        if isinstance(outcome, JudgeError):
            trace.member_failures[(name, outcome.cause)] += 1
        member = outcome.trace if isinstance(outcome.trace, JudgeTrace) else None
        if member is not None:  # its requests are the outcome's
            member_traces.append(member)
            trace.add_requests(member)
        else:
            trace.requests += outcome.requests
    scored = [o for o in outcomes.values() if isinstance(o, JudgeScore)]
    trace.cache_hit = len(scored) == len(outcomes) > 0 and all(t.cache_hit for t in member_traces)
    gated = {o.trace.gated for o in scored}
    trace.gated = gated.pop() if len(scored) == len(outcomes) and len(gated) == 1 else None
    return trace


def combine(
    outcomes: Mapping[str, JudgeScore | JudgeError], weights: Mapping[str, float], how: Aggregate
) -> JudgeScore | JudgeError:
    """One sample's ensemble outcome from its members' (module docstring): a ``JudgeScore`` when at
    least one member scored it, else a ``JudgeError`` summarising the members' causes."""
    trace = merged_trace(outcomes)
    scored = {name: o for name, o in outcomes.items() if isinstance(o, JudgeScore)}
    if not scored:
        causes = {name: o.cause for name, o in outcomes.items() if isinstance(o, JudgeError)}
        cause = next(iter(causes.values())) if len(set(causes.values())) == 1 else ENSEMBLE_FAILED
        detail = "every ensemble member failed: " + ", ".join(f"{n}={c}" for n, c in causes.items())
        return JudgeError(cause, detail, requests=trace.requests, trace=trace)
    names = list(scored)
    score = aggregate([scored[n].score for n in names], [weights[n] for n in names], how)
    criteria = _aggregate_keys([(scored[n].criteria, weights[n]) for n in names], how)
    flags = _aggregate_keys([(scored[n].flags, weights[n]) for n in names], how, REQUEST_CHECK_FLAGS)
    flags.update({f"{MEMBER_FLAG_PREFIX}{n}": scored[n].score for n in names})
    return JudgeScore(score, criteria, trace.requests, flags, trace)


class EnsembleJudge:
    """Several judges scoring each sample, aggregated (module docstring); the interface of
    ``JudgeReward`` where the composer and the judge pool use it.

    Invariants: every member is asked for every sample; a sample is unscored (``JudgeError``)
    only when every member failed; the members' in-flight requests are counted by one gauge
    (``client.gauge``, the first member's client carrying it); keys stay in the members' clients.
    """

    def __init__(self, judge: JudgeConfig, members: Mapping[str, JudgeMember]) -> None:
        if len(members) < 2:
            raise ValueError("an ensemble needs at least 2 members")
        self._judge = judge
        self._members = dict(members)
        weights = {m.name: m.weight for m in judge.ensemble}
        self._weights = {name: weights.get(name, 1.0) for name in self._members}
        self._gauge = InflightGauge()
        for member in self._members.values():
            member.client.gauge = self._gauge

    @classmethod
    def from_config(
        cls,
        judge: JudgeConfig,
        api_key: SecretStr | Mapping[str, SecretStr],
        *,
        transports: Mapping[str, Transport] | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> EnsembleJudge:
        """One ``JudgeReward`` per member of ``judge.ensemble``. ``api_key``: the first member's first
        key or a mapping of variable names to keys; the others are read from ``environ`` (default
        ``os.environ``; ``MissingApiKeyError`` naming ``judge.ensemble[<name>].api_key_env``)."""
        import os

        given = {key_variables(judge)[0]: api_key} if isinstance(api_key, SecretStr) else dict(api_key)
        env = os.environ if environ is None else environ
        members: dict[str, JudgeMember] = {}
        for member, config in member_configs(judge):
            if not config.is_remote:
                raise ValueError(
                    f"judge.ensemble[{member.name}] has no base_url yet; with local_server the driver "
                    "must set it to the started stand-in's URL before building the judge"
                )
            keys = keys_from(config, given, env, f"judge.ensemble[{member.name}]")
            transport = (transports or {}).get(member.name)
            members[member.name] = JudgeReward(config, keys, transport=transport, clock=clock, rng=rng)
        return cls(judge, members)

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}*{self._weights[n]:g}: {m!r}" for n, m in self._members.items())
        return f"EnsembleJudge({self._judge.ensemble_aggregate}; {parts})"

    @property
    def members(self) -> dict[str, JudgeMember]:
        return dict(self._members)

    @property
    def rubric(self) -> Rubric:
        return self._judge.rubric_spec()

    @property
    def criteria(self) -> list[CriterionConfig]:
        """The rubric's criteria, in order."""
        return list(self.rubric.criteria)

    @property
    def client(self) -> JudgeClient:
        """The first member's client (the ``ctx.llm("judge")`` engine's); its ``gauge`` counts every member's requests."""
        return next(iter(self._members.values())).client

    @property
    def cache(self) -> VerdictCache:
        """The first member's verdict cache (each member has its own: ``caches``)."""
        return next(iter(self._members.values())).cache

    @property
    def caches(self) -> dict[str, VerdictCache]:
        return {name: m.cache for name, m in self._members.items()}

    async def score(self, request_text: str, completion_text: str) -> JudgeScore:
        """Ask every member concurrently; the aggregate, or ``JudgeError`` when every member failed."""
        names = list(self._members)
        outcomes = await asyncio.gather(*(self._one(self._members[n], request_text, completion_text) for n in names))
        result = combine(dict(zip(names, outcomes)), self._weights, self._judge.ensemble_aggregate)
        if isinstance(result, JudgeError):
            raise result
        return result

    @staticmethod
    async def _one(member: JudgeMember, request_text: str, completion_text: str) -> JudgeScore | JudgeError:
        try:
            return await member.score(request_text, completion_text)
        except JudgeError as err:
            return err

    async def score_group(
        self, request_text: str, completions: Sequence[str], group_key: str
    ) -> list[JudgeScore | JudgeError]:
        """Every member's ``score_group`` concurrently; per completion, ``combine`` of the members' outcomes."""
        names = list(self._members)
        per_member = await asyncio.gather(*(self._group(n, request_text, completions, group_key) for n in names))
        how = self._judge.ensemble_aggregate
        return [
            combine({n: outcomes[i] for n, outcomes in zip(names, per_member)}, self._weights, how)
            for i in range(len(completions))
        ]

    async def _group(
        self, name: str, request_text: str, completions: Sequence[str], group_key: str
    ) -> list[JudgeScore | JudgeError]:
        """One member's outcomes for a group; a member that raises fails every completion (its
        requests counted once, on the first)."""
        try:
            outcomes = await self._members[name].score_group(request_text, completions, group_key)
        except RewardError as err:
            requests = err.requests if isinstance(err, JudgeError) else 0
            first = JudgeError(err.cause, err.detail, requests=requests, trace=getattr(err, "trace", None))
            return [first, *(JudgeError(err.cause, err.detail, requests=0) for _ in completions[1:])]
        if len(outcomes) != len(completions):
            raise ValueError(f"judge.ensemble[{name}] gave {len(outcomes)} outcomes for a group of {len(completions)}")
        return list(outcomes)

    async def check_endpoint(self) -> None:
        """``GET /models`` on every member's endpoints (``JudgeUnreachableError`` naming the first that fails)."""
        for member in self._members.values():
            await member.check_endpoint()

    def stats(self) -> dict[str, object]:
        """Cumulative counters by member (``members``), and ``circuit_opened`` keyed ``<member>: <endpoint>``."""
        stats = {name: m.stats() for name, m in self._members.items()}
        opened: dict[str, object] = {}
        for name, member_stats in stats.items():
            circuits = member_stats.get("circuit_opened", {})
            opened.update({f"{name}: {e}": n for e, n in circuits.items()} if isinstance(circuits, dict) else {})
        return {"members": stats, "circuit_opened": opened}

    async def aclose(self) -> None:
        """Close every member's HTTP clients and cache."""
        for member in self._members.values():
            await member.aclose()


AnyJudge = JudgeReward | EnsembleJudge


def build_judge(judge: JudgeConfig, api_key: SecretStr | Mapping[str, SecretStr]) -> AnyJudge:
    """The judge of a config: an ``EnsembleJudge`` with ``judge.ensemble``, else a ``JudgeReward``."""
    if judge.ensemble:
        return EnsembleJudge.from_config(judge, api_key)
    return JudgeReward(judge, api_key)


def judge_engine_config(judge: JudgeConfig) -> JudgeConfig:
    """The config of the ``ctx.llm("judge")`` engine: the judge's, or its first ensemble member's."""
    return member_configs(judge)[0][1] if judge.ensemble else judge
