"""The reward terms the composer evaluates: the judge term and function terms.

A function term is a rule (``rewards.rules``) or a user function loaded from
``package.module:function``: ``(prompt, completion) -> float | None``, or,
when it has a third positional parameter without a default (or one named ``ctx``),
``(prompt, completion, ctx: RewardContext) -> float | None``; sync or async.
``reward.terms[*].options`` are passed as keyword arguments on every call;
an option the function cannot take is an error at construction. A TRL-style
reward function (batched, ``f(completions, **kwargs)``) is ``rewards/trl_terms.py``'s.

Outcome of one term for one sample: a finite number, or an error cause (a
``RewardError``'s cause, ``<name>_no_score`` for None,
``<name>_invalid_value`` for a non-number, ``<name>_error:<Type>`` for any
other exception). A failure is never turned into 0.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rewards.context import RewardContext, TermUsage
from rewards.errors import JudgeError, RewardError
from rewards.judge.ensemble import AnyJudge
from rewards.judge.llm_judge import JudgeScore
from rewards.llm import ChatEngine
from rewards.metrics import JudgeTrace

__all__ = ["FunctionTerm", "JudgeTerm", "Outcome", "TermFn", "load_term_function", "takes_context"]

logger = logging.getLogger(__name__)

TermFn = Callable[..., float | None | Awaitable[float | None]]
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


@dataclass(frozen=True)
class Outcome:
    """What one term gave for one sample: a value, or an error cause; ``usage`` its LLM calls."""

    value: float | None
    error: str | None
    criteria: dict[str, float] = field(default_factory=dict)
    judge_requests: int = 0
    flags: dict[str, float] = field(default_factory=dict)
    trace: JudgeTrace | None = None
    seconds: float = 0.0
    usage: TermUsage | None = None


class JudgeTerm:
    """The LLM-judge term (value in [Rubric.min_reward, Rubric.max_reward]); ``judge`` a
    ``JudgeReward`` or an ``EnsembleJudge``. With ``grouped`` (``judge.mode: group``) the
    composer calls ``evaluate_group`` once per prompt group instead of ``evaluate`` per
    sample. Only ``judge.score`` and ``judge.score_group`` are called."""

    def __init__(self, name: str, weight: float, judge: AnyJudge, grouped: bool = False) -> None:
        self.name, self.weight, self.judge, self.grouped = name, weight, judge, grouped

    async def evaluate(
        self, prompt: str, completion: str, row: Mapping[str, Any], engines: Mapping[str, ChatEngine]
    ) -> Outcome:
        started = time.perf_counter()
        try:
            verdict: JudgeScore | JudgeError = await self.judge.score(prompt, completion)
        except JudgeError as err:
            verdict = err
        return _judge_outcome(verdict, time.perf_counter() - started)

    async def evaluate_group(self, prompt: str, completions: Sequence[str], group_key: str) -> list[Outcome]:
        """One outcome per completion of one prompt group (in order); each gets an equal
        share of the group's time."""
        started = time.perf_counter()
        verdicts = await self.judge.score_group(prompt, completions, group_key)
        seconds = (time.perf_counter() - started) / max(1, len(completions))
        return [_judge_outcome(v, seconds) for v in verdicts]


def _judge_outcome(verdict: JudgeScore | JudgeError, seconds: float) -> Outcome:
    if isinstance(verdict, JudgeError):
        trace = verdict.trace if isinstance(verdict.trace, JudgeTrace) else None
        return Outcome(None, verdict.cause, judge_requests=verdict.requests, trace=trace, seconds=seconds)
    return Outcome(verdict.score, None, verdict.criteria, verdict.requests, verdict.flags, verdict.trace, seconds)


def _is_async_callable(fn: object) -> bool:
    # an object whose __call__ is a coroutine function (not a callable check, so not callable())
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004


def _signature(fn: object) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def takes_context(fn: object) -> bool:
    """Whether ``fn`` takes ``ctx``: a parameter named ``ctx``, or a third positional
    parameter without a default (one with a default is an option)."""
    sig = _signature(fn)
    if sig is None:
        return False
    positional = [p for p in sig.parameters.values() if p.kind in _POSITIONAL]
    third = positional[2] if len(positional) >= 3 else None
    return "ctx" in sig.parameters or (third is not None and third.default is inspect.Parameter.empty)


def check_options(name: str, fn: object, options: Mapping[str, Any], with_ctx: bool) -> None:
    """ValueError (one line) for an option ``fn`` cannot take as a keyword argument."""
    sig = _signature(fn)
    if not options or sig is None:
        return
    params = list(sig.parameters.values())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    fixed = 3 if with_ctx else 2
    positional = [p for p in params if p.kind in _POSITIONAL]
    taken = {p.name for p in positional[:fixed]} | {"ctx"}
    allowed = sorted(
        p.name for p in params if p.name not in taken and p.kind in (*_POSITIONAL, inspect.Parameter.KEYWORD_ONLY)
    )
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"reward term {name!r}: unknown option(s) {unknown}; the function takes {allowed}")


class FunctionTerm:
    """A rule or user function term; ``in_thread`` runs a sync function off the event loop."""

    def __init__(
        self, name: str, weight: float, fn: TermFn, in_thread: bool, options: Mapping[str, Any] | None = None
    ) -> None:
        self.name, self.weight, self.fn, self.in_thread = name, weight, fn, in_thread
        self.is_async = _is_async_callable(fn)
        self.with_ctx = takes_context(fn)
        sig = _signature(fn)
        ctx_param = sig.parameters.get("ctx") if sig is not None else None
        self.ctx_keyword = ctx_param is not None and ctx_param.kind is inspect.Parameter.KEYWORD_ONLY
        self.options = dict(options or {})
        check_options(name, fn, self.options, self.with_ctx)

    async def evaluate(
        self, prompt: str, completion: str, row: Mapping[str, Any], engines: Mapping[str, ChatEngine]
    ) -> Outcome:
        started = time.perf_counter()
        usage = TermUsage() if self.with_ctx else None
        args: tuple[Any, ...] = (prompt, completion)
        kwargs = dict(self.options)
        if usage is not None:
            ctx = RewardContext.build(row, engines, usage)
            if self.ctx_keyword:
                kwargs["ctx"] = ctx
            else:
                args += (ctx,)
        value, error = await self._call(args, kwargs)
        outcome = self._check_value(value) if error is None else Outcome(None, error)
        return Outcome(outcome.value, outcome.error, seconds=time.perf_counter() - started, usage=usage)

    async def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[object, str | None]:
        try:
            if self.is_async:
                value = await self.fn(*args, **kwargs)  # type: ignore[misc]
            elif self.in_thread:
                value = await asyncio.to_thread(self.fn, *args, **kwargs)
            else:
                value = self.fn(*args, **kwargs)
            if inspect.isawaitable(value):
                value = await value
        except RewardError as err:
            return None, err.cause
        except Exception as err:  # noqa: BLE001 - a user function may raise anything
            logger.warning("reward term %s raised %s", self.name, type(err).__name__, exc_info=True)
            return None, f"{self.name}_error:{type(err).__name__}"
        return value, None

    def _check_value(self, value: object) -> Outcome:
        if value is None:
            return Outcome(None, f"{self.name}_no_score")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            logger.warning("reward term %s returned an invalid value of type %s", self.name, type(value).__name__)
            return Outcome(None, f"{self.name}_invalid_value")
        return Outcome(float(value), None)


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
        ) from None
    for attr in attr_path.split("."):
        if not hasattr(target, attr):
            raise ValueError(f"reward term {path!r}: {module_name!r} has no attribute {attr_path!r}")
        target = getattr(target, attr)
    if not callable(target):
        raise ValueError(f"reward term {path!r} is not callable")
    return target
