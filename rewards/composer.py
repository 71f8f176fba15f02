"""Weighted composition of reward terms.

A term is named in ``reward.terms`` either by a registered name (``judge`` or a
rule from ``rewards.rules.RULE_TERMS``) or by a dotted path
``package.module:function`` to a user function ``(prompt, completion) -> float | None``,
sync or async (sync user functions run in a worker thread via
``asyncio.to_thread``; the built-in rules are cheap and run inline).

Sync user functions never block the event loop (the judge pool's requests keep
flowing while they run); the default executor bounds how many run at once.

``RewardComposer.score`` evaluates all terms of one sample concurrently. The
total is ``sum(weight * value)`` over the terms with a non-zero weight; if any
of those fails (raises ``RewardError``, returns None, returns a non-number or a
non-finite number, or raises anything else), the sample is unscored: the
reward is None and ``error`` holds the cause of the first failing term in
config order. A failure is never turned into 0. Terms of weight 0 are still
evaluated and reported in ``terms`` (for monitoring) but cannot unscore a sample.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import inspect
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from pydantic import SecretStr

from rewards.config import JudgeConfig, RewardConfig, RewardTermConfig
from rewards.errors import JudgeError, RewardError
from rewards.judge import JudgeReward
from rewards.metrics import JudgeTrace
from rewards.rules import RULE_TERMS

__all__ = [
    "JUDGE_TERM",
    "REGISTERED_TERMS",
    "RewardComposer",
    "RewardError",
    "ScoredParts",
    "load_term_function",
]

logger = logging.getLogger(__name__)

JUDGE_TERM = "judge"
REGISTERED_TERMS: tuple[str, ...] = (JUDGE_TERM, *RULE_TERMS)

TermFn = Callable[[str, str], "float | None | Awaitable[float | None]"]


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
    ``term_seconds`` the time each term took.
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


@dataclass(frozen=True)
class _Outcome:
    """What one term gave for one sample: a value, or an error cause."""

    value: float | None
    error: str | None
    criteria: dict[str, float] = field(default_factory=dict)
    judge_requests: int = 0
    flags: dict[str, float] = field(default_factory=dict)
    trace: JudgeTrace | None = None
    seconds: float = 0.0


class _JudgeTerm:
    """The LLM-judge term (value in [Rubric.min_reward, Rubric.max_reward])."""

    def __init__(self, name: str, weight: float, judge: JudgeReward) -> None:
        self.name, self.weight, self.judge = name, weight, judge

    async def evaluate(self, prompt: str, completion: str) -> _Outcome:
        started = time.perf_counter()
        try:
            verdict = await self.judge.score(prompt, completion)
        except JudgeError as err:
            trace = err.trace if isinstance(err.trace, JudgeTrace) else None
            return _Outcome(None, err.cause, judge_requests=err.requests, trace=trace,
                            seconds=time.perf_counter() - started)
        return _Outcome(verdict.score, None, verdict.criteria, verdict.requests, verdict.flags, verdict.trace,
                        time.perf_counter() - started)


class _FunctionTerm:
    """A rule or user function term; ``in_thread`` runs a sync function off the loop."""

    def __init__(self, name: str, weight: float, fn: TermFn, in_thread: bool) -> None:
        self.name, self.weight, self.fn, self.in_thread = name, weight, fn, in_thread
        self.is_async = _is_async_callable(fn)

    async def evaluate(self, prompt: str, completion: str) -> _Outcome:
        started = time.perf_counter()
        outcome = await self._evaluate(prompt, completion)
        return dataclasses.replace(outcome, seconds=time.perf_counter() - started)

    async def _evaluate(self, prompt: str, completion: str) -> _Outcome:
        try:
            if self.is_async:
                value = await self.fn(prompt, completion)  # type: ignore[misc]
            elif self.in_thread:
                value = await asyncio.to_thread(self.fn, prompt, completion)
            else:
                value = self.fn(prompt, completion)
            if inspect.isawaitable(value):
                value = await value
        except RewardError as err:
            return _Outcome(None, err.cause)
        except Exception as err:  # noqa: BLE001 - a user function may raise anything
            logger.warning("reward term %s raised %s", self.name, type(err).__name__, exc_info=True)
            return _Outcome(None, f"{self.name}_error:{type(err).__name__}")
        return self._check_value(value)

    def _check_value(self, value: object) -> _Outcome:
        if value is None:
            return _Outcome(None, f"{self.name}_no_score")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            logger.warning("reward term %s returned an invalid value of type %s",
                           self.name, type(value).__name__)
            return _Outcome(None, f"{self.name}_invalid_value")
        return _Outcome(float(value), None)


_Term = _JudgeTerm | _FunctionTerm


def _is_async_callable(fn: object) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)
    )


def load_term_function(path: str) -> TermFn:
    """Import ``package.module:function`` (the attribute may be dotted, e.g.
    ``module:Class.method``); raise ValueError with a clear message otherwise."""
    module_name, sep, attr_path = path.partition(":")
    if not sep or not module_name or not attr_path or ":" in attr_path:
        raise ValueError(f"reward term {path!r} is not of the form 'package.module:function'")
    try:
        target: object = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"reward term {path!r}: cannot import module {module_name!r} ({type(err).__name__}: {err})"
        ) from err
    for attr in attr_path.split("."):
        if not hasattr(target, attr):
            raise ValueError(f"reward term {path!r}: {module_name!r} has no attribute {attr_path!r}")
        target = getattr(target, attr)
    if not callable(target):
        raise ValueError(f"reward term {path!r} is not callable")
    return target  # type: ignore[return-value]


class RewardComposer:
    """Builds the configured terms once and scores (prompt, completion) pairs.

    Construction fails early (ValueError) on unknown or duplicate term names,
    all-zero weights, unimportable user functions, or a ``judge`` term without
    judge config/key.
    """

    def __init__(
        self,
        reward: RewardConfig,
        judge: JudgeConfig | None = None,
        api_key: SecretStr | None = None,
    ) -> None:
        if not reward.terms:
            raise ValueError("reward.terms must name at least one term")
        names = [t.name for t in reward.terms]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"reward.terms names {duplicates} more than once")
        if all(t.weight == 0 for t in reward.terms):
            raise ValueError("reward.terms must give at least one term a non-zero weight")
        self._judge: JudgeReward | None = None
        self._terms: list[_Term] = [self._build_term(t, judge, api_key) for t in reward.terms]

    def __repr__(self) -> str:
        parts = ", ".join(f"{t.name}*{t.weight:g}" for t in self._terms)
        return f"RewardComposer({parts})"

    @property
    def term_names(self) -> list[str]:
        """Configured term names, in config order."""
        return [t.name for t in self._terms]

    @property
    def judge(self) -> JudgeReward | None:
        """The judge reward, when a ``judge`` term is configured."""
        return self._judge

    def _build_term(
        self, term: RewardTermConfig, judge: JudgeConfig | None, api_key: SecretStr | None
    ) -> _Term:
        if term.name == JUDGE_TERM:
            if judge is None or api_key is None:
                raise ValueError("reward term 'judge' needs a judge config and an API key")
            self._judge = JudgeReward(judge, api_key)
            return _JudgeTerm(term.name, term.weight, self._judge)
        if term.name in RULE_TERMS:
            return _FunctionTerm(term.name, term.weight, RULE_TERMS[term.name], in_thread=False)
        if ":" in term.name:
            return _FunctionTerm(term.name, term.weight, load_term_function(term.name), in_thread=True)
        raise ValueError(
            f"unknown reward term {term.name!r}: registered terms are {list(REGISTERED_TERMS)}, "
            "or give a user function as 'package.module:function'"
        )

    async def score(self, prompt_text: str, completion_text: str) -> ScoredParts:
        """Evaluate all terms concurrently and combine them (see module docstring)."""
        outcomes = await asyncio.gather(
            *(t.evaluate(prompt_text, completion_text) for t in self._terms)
        )
        judge = next((o for t, o in zip(self._terms, outcomes) if isinstance(t, _JudgeTerm)), _Outcome(None, None))
        extra = dict(criteria=judge.criteria, judge_requests=judge.judge_requests, judge_error=judge.error,
                     judge_flags=judge.flags, judge_trace=judge.trace,
                     term_seconds={t.name: o.seconds for t, o in zip(self._terms, outcomes)})
        terms = {t.name: o.value for t, o in zip(self._terms, outcomes)}
        weighted = [(t, o) for t, o in zip(self._terms, outcomes) if t.weight != 0]
        failed = [o.error for _, o in weighted if o.error is not None]
        if failed:
            return ScoredParts(None, failed[0], terms, **extra)
        total = sum(t.weight * o.value for t, o in weighted)  # type: ignore[operator]
        return ScoredParts(float(total), None, terms, **extra)

    async def check_endpoint(self) -> None:
        """Check the judge endpoint (no-op without a ``judge`` term)."""
        if self._judge is not None:
            await self._judge.check_endpoint()

    async def aclose(self) -> None:
        """Release the judge's HTTP client."""
        if self._judge is not None:
            await self._judge.aclose()
