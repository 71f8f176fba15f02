"""Weighted composition of reward terms.

A term is named in ``reward.terms`` either by a registered name (``judge`` or a
rule from ``rewards.rules.RULE_TERMS``) or by a dotted path
``package.module:function`` to a user function ``(prompt, completion) -> float | None``
or ``(prompt, completion, ctx: RewardContext) -> float | None``, sync or async
(``rewards/terms.py``; sync user functions run in a worker thread via
``asyncio.to_thread``; the built-in rules are cheap and run inline), or a
TRL-style reward function ``f(completions, **kwargs) -> list[float | None]``
called once per batch with TRL's arguments (``rewards/trl_terms.py``; told
apart by ``reward.terms[*].style``, by default by its ``completions``
parameter). A term's ``options`` are passed to it as keyword arguments.

Sync user functions never block the event loop (the judge pool's requests keep
flowing while they run); the default executor bounds how many run at once.

Terms that take ``ctx`` get the sample's dataset row (``ctx.row``) and the
engines (``ctx.llm(name)``): one ``ChatEngine`` per ``reward.engines`` entry
and ``judge`` for the judge's endpoints (sharing the judge term's client),
built once here and shared by every term and sample (``rewards/llm.py``).

``RewardComposer.score_batch`` evaluates all terms of a batch's samples
concurrently (``score``: one sample). For each sample the
total is ``sum(weight * value)`` over the terms with a non-zero weight; if any
of those fails (raises ``RewardError``, e.g. an ``LLMCallError``, returns None,
returns a non-number or a non-finite number, or raises anything else), the
sample is unscored: the reward is None and ``error`` holds the cause of the
first failing term in config order. A failure is never turned into 0. Terms of
weight 0 are still evaluated and reported in ``terms`` (for monitoring) but
cannot unscore a sample.

With ``judge.mode: group`` the judge term is evaluated once per prompt group
(``prompt_groups``: inputs sharing ``ScoreInput.group_id`` and prompt; an input
without a group id is a group of its own) through ``JudgeReward.score_group``,
concurrently with the other terms; each sample still gets its own outcome.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from rewards.config import RewardConfig, RewardTermConfig
from rewards.context import JUDGE_ENGINE, TermUsage
from rewards.errors import RewardError
from rewards.judge.config import JudgeConfig
from rewards.judge.endpoints import key_variables, keys_from
from rewards.judge.ensemble import AnyJudge, EnsembleJudge, build_judge, judge_engine_config
from rewards.judge.llm_judge import check_endpoints
from rewards.llm import ChatEngine
from rewards.metrics import JudgeTrace, Spend
from rewards.rules import RULE_TERMS
from rewards.terms import FunctionTerm, JudgeTerm, Outcome, TermFn, load_term_function
from rewards.trl_terms import BatchFunctionTerm, ScoreInput, TermContractError, is_trl_style

__all__ = [
    "JUDGE_TERM",
    "REGISTERED_TERMS",
    "RewardComposer",
    "RewardError",
    "ScoreInput",
    "ScoredParts",
    "TermContractError",
    "prompt_groups",
    "TermFn",
    "load_term_function",
]

logger = logging.getLogger(__name__)

JUDGE_TERM = "judge"
REGISTERED_TERMS: tuple[str, ...] = (JUDGE_TERM, *RULE_TERMS)


@dataclass(frozen=True)
class ScoredParts:
    """The reward of one sample and its parts.

    Invariants: exactly one of ``reward`` and ``error`` is None; ``terms`` has
    one entry per configured term (None where that term failed); ``criteria``
    holds the judge's 0–10 scores when the judge gave a verdict (else empty);
    ``judge_requests`` counts the HTTP requests sent to the judge;
    ``judge_error`` is the judge term's cause when the judge failed;
    ``judge_flags`` the request check as 0/1 (``inappropriate``, ``blocked``);
    ``judge_trace`` what judging took (None without a judge term);
    ``term_seconds`` the time each term took; ``term_usage`` the LLM calls of
    each term that takes ``ctx`` (per engine).
    """

    reward: float | None
    error: str | None
    terms: dict[str, float | None]
    criteria: dict[str, float] = field(default_factory=dict)
    judge_requests: int = 0
    judge_error: str | None = None
    judge_flags: dict[str, float] = field(default_factory=dict)
    judge_trace: JudgeTrace | None = field(default=None, compare=False)
    term_seconds: dict[str, float] = field(default_factory=dict, compare=False)
    term_usage: dict[str, TermUsage] = field(default_factory=dict, compare=False)


_Term = JudgeTerm | FunctionTerm | BatchFunctionTerm


def _given_keys(judge: JudgeConfig | None, api_key: SecretStr | Mapping[str, SecretStr] | None) -> dict[str, SecretStr]:
    """Variable name -> key of what the caller handed over (a lone key is the judge's first endpoint's)."""
    if isinstance(api_key, SecretStr):
        return {key_variables(judge)[0]: api_key} if judge is not None else {}
    return dict(api_key or {})


class RewardComposer:
    """Builds the configured terms and engines once and scores (prompt, completion, row) triples.

    Construction fails early (ValueError, or ``MissingApiKeyError`` for an
    engine's unset key) on unknown or duplicate term names, all-zero weights,
    unimportable user functions, options a function cannot take, or a
    ``judge`` term without judge config/key. ``api_key`` is the judge's first
    endpoint's key or a mapping of variable names to keys (engines' included);
    a key not given is read from the environment.
    """

    def __init__(
        self,
        reward: RewardConfig,
        judge: JudgeConfig | None = None,
        api_key: SecretStr | Mapping[str, SecretStr] | None = None,
        **inject: Any,
    ) -> None:
        if not reward.terms:
            raise ValueError("reward.terms must name at least one term")
        names = [t.name for t in reward.terms]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"reward.terms names {duplicates} more than once")
        if all(t.weight == 0 for t in reward.terms):
            raise ValueError("reward.terms must give at least one term a non-zero weight")
        self._judge: AnyJudge | None = None
        self._terms: list[_Term] = [self._build_term(t, judge, api_key) for t in reward.terms]
        self._engines = self._build_engines(reward, judge, api_key, inject)

    def __repr__(self) -> str:
        parts = ", ".join(f"{t.name}*{t.weight:g}" for t in self._terms)
        return f"RewardComposer({parts}; engines={sorted(self._engines)})"

    @property
    def term_names(self) -> list[str]:
        """Configured term names, in config order."""
        return [t.name for t in self._terms]

    @property
    def judge(self) -> AnyJudge | None:
        """The judge reward (an ``EnsembleJudge`` with ``judge.ensemble``), when a ``judge`` term is configured."""
        return self._judge

    @property
    def engines(self) -> dict[str, ChatEngine]:
        """The engines terms may call, by name (``judge`` when a term takes ``ctx`` and a judge is configured)."""
        return dict(self._engines)

    def _build_term(
        self, term: RewardTermConfig, judge: JudgeConfig | None, api_key: SecretStr | Mapping[str, SecretStr] | None
    ) -> _Term:
        if term.name in REGISTERED_TERMS and term.options:
            raise ValueError(f"reward term {term.name!r} takes no options (got {sorted(term.options)})")
        if term.name == JUDGE_TERM:
            if judge is None or api_key is None:
                raise ValueError("reward term 'judge' needs a judge config and an API key")
            self._judge = build_judge(judge, api_key)
            return JudgeTerm(term.name, term.weight, self._judge, grouped=judge.mode == "group")
        if term.name in RULE_TERMS:
            return FunctionTerm(term.name, term.weight, RULE_TERMS[term.name], in_thread=False)
        if ":" in term.name:
            fn = load_term_function(term.name)
            if term.style == "trl" or (term.style == "auto" and is_trl_style(fn)):
                return BatchFunctionTerm(term.name, term.weight, fn, term.options)
            return FunctionTerm(term.name, term.weight, fn, in_thread=True, options=term.options)
        raise ValueError(
            f"unknown reward term {term.name!r}: registered terms are {list(REGISTERED_TERMS)}, "
            "or give a user function as 'package.module:function'"
        )

    def _build_engines(
        self,
        reward: RewardConfig,
        judge: JudgeConfig | None,
        api_key: SecretStr | Mapping[str, SecretStr] | None,
        inject: Mapping[str, Any],
    ) -> dict[str, ChatEngine]:
        given = _given_keys(judge, api_key)
        engines: dict[str, ChatEngine] = {}
        for name, config in reward.engines.items():
            where = f"reward.engines.{name}"
            engines[name] = ChatEngine(name, config, keys_from(config, given, os.environ, where), where=where, **inject)
        with_ctx = any(isinstance(t, FunctionTerm) and t.with_ctx for t in self._terms)
        service = judge_engine_config(judge) if judge is not None else None  # an ensemble's: its first member's
        if with_ctx and service is not None and api_key is not None and service.is_remote:
            client = self._judge.client if self._judge is not None else None
            keys = {} if client is not None else keys_from(service, given, os.environ, "judge")
            engines[JUDGE_ENGINE] = ChatEngine(JUDGE_ENGINE, service, keys, where="judge", client=client, **inject)
        return engines

    async def score(self, prompt_text: str, completion_text: str, row: Mapping[str, Any] | None = None) -> ScoredParts:
        """Evaluate all terms concurrently and combine them (see module docstring);
        ``row`` is the prompt's dataset row, ``ctx.row`` of the terms that take ``ctx``."""
        return (await self.score_batch([ScoreInput(prompt_text, completion_text, row or {})]))[0]

    async def score_batch(self, inputs: Sequence[ScoreInput]) -> list[ScoredParts]:
        """``score`` for each of ``inputs`` (one ``ScoredParts`` each, in order): per-sample terms
        per input, TRL-style terms once for the batch and, in group mode (``judge.mode: group``),
        the judge once per prompt group (``prompt_groups``), all concurrently. A TRL term's
        ``TermContractError`` (wrong number of values) cancels the rest and is raised."""
        grouped = next((t for t in self._terms if isinstance(t, JudgeTerm) and t.grouped), None)
        per_sample = [t for t in self._terms if not isinstance(t, BatchFunctionTerm) and t is not grouped]
        batch_terms = [t for t in self._terms if isinstance(t, BatchFunctionTerm)]
        groups = prompt_groups(inputs) if grouped is not None else []
        group_jobs = [
            grouped.evaluate_group(inputs[g[0]].prompt, [inputs[n].completion for n in g], key)
            for key, g in groups
            if grouped is not None
        ]
        jobs = [
            *(
                asyncio.gather(*(t.evaluate(i.prompt, i.completion, i.row, self._engines) for t in per_sample))
                for i in inputs
            ),
            *(t.evaluate_batch(inputs) for t in batch_terms),
            *group_jobs,
        ]
        done = await _all_or_cancel(jobs)
        sample_outcomes = done[: len(inputs)]
        batch_outcomes = done[len(inputs) : len(inputs) + len(batch_terms)]
        group_outcomes: dict[int, Outcome] = {}
        for (_, members), outcomes in zip(groups, done[len(inputs) + len(batch_terms) :]):
            group_outcomes.update(zip(members, outcomes))
        parts = []
        for n, outcomes in enumerate(sample_outcomes):
            by_term: dict[str, Outcome] = dict(zip((t.name for t in per_sample), outcomes))
            for t, b in zip(batch_terms, batch_outcomes):
                by_term[t.name] = Outcome(b.values[n], b.errors[n], seconds=b.seconds / len(inputs))
            if grouped is not None:
                by_term[grouped.name] = group_outcomes[n]
            parts.append(self._combine([by_term[t.name] for t in self._terms]))
        return parts

    def _combine(self, outcomes: list[Outcome]) -> ScoredParts:
        """One sample's ``ScoredParts`` from its terms' outcomes (in config order)."""
        judge = next((o for t, o in zip(self._terms, outcomes) if isinstance(t, JudgeTerm)), Outcome(None, None))
        terms = {t.name: o.value for t, o in zip(self._terms, outcomes)}
        weighted = [(t, o) for t, o in zip(self._terms, outcomes) if t.weight != 0]
        failed = [o.error for _, o in weighted if o.error is not None]
        # An outcome without an error has a value, so none is skipped when none failed.
        total = None if failed else float(sum(t.weight * o.value for t, o in weighted if o.value is not None))
        return ScoredParts(
            total,
            failed[0] if failed else None,
            terms,
            criteria=judge.criteria,
            judge_requests=judge.judge_requests,
            judge_error=judge.error,
            judge_flags=judge.flags,
            judge_trace=judge.trace,
            term_seconds={t.name: o.seconds for t, o in zip(self._terms, outcomes)},
            term_usage={t.name: o.usage for t, o in zip(self._terms, outcomes) if o.usage is not None},
        )

    def spent(self) -> Spend:
        """Every request's tokens and US dollars so far: the judge's client and each engine's
        (the ``judge`` engine shares the judge's client, counted once; an ensemble's every member)."""
        judge = self._judge
        members = judge.members.values() if isinstance(judge, EnsembleJudge) else [judge] if judge else []
        clients = [m.client for m in members]  # an ensemble: every member's own client
        clients += [e.client for e in self._engines.values()]
        total = Spend()
        for client in {id(c): c for c in clients}.values():
            total.add_spend(client.spent)
        return total

    async def check_endpoint(self) -> None:
        """``GET /models`` on the judge's endpoints (with a ``judge`` term) and every engine's;
        ``JudgeUnreachableError`` naming the first that fails."""
        if self._judge is not None:
            await self._judge.check_endpoint()
        for name, engine in self._engines.items():
            if name != JUDGE_ENGINE or self._judge is None:
                label = "judge" if name == JUDGE_ENGINE else f"engine {name}"
                await check_endpoints(engine.client.endpoints, engine.timeout_s, label)

    async def aclose(self) -> None:
        """Release the judge's and the engines' HTTP clients."""
        if self._judge is not None:
            await self._judge.aclose()
        for engine in self._engines.values():
            await engine.aclose()


def prompt_groups(inputs: Sequence[ScoreInput]) -> list[tuple[str, list[int]]]:
    """``(group key, input indices)`` per prompt group, in order of first appearance: inputs
    with the same ``group_id`` and prompt form one group (key: the group id); an input
    without a ``group_id`` is a group of its own (key: ``"#<index>"``)."""
    groups: dict[tuple[str, str] | int, tuple[str, list[int]]] = {}
    for n, item in enumerate(inputs):
        key: tuple[str, str] | int = (item.group_id, item.prompt) if item.group_id is not None else n
        groups.setdefault(key, (item.group_id if item.group_id is not None else f"#{n}", []))[1].append(n)
    return list(groups.values())


async def _all_or_cancel(jobs: list[Awaitable[Any]]) -> list[Any]:
    """``asyncio.gather`` of ``jobs``; when one raises, the others are cancelled before it propagates."""
    tasks = [asyncio.ensure_future(j) for j in jobs]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise
