"""TRL-style reward functions as reward terms, unchanged.

A function written for TRL's ``GRPOTrainer`` (``reward_funcs``)::

    def f(completions, **kwargs) -> list[float | None]

is named in ``reward.terms`` like any user function (``package.module:function``)
and called batched, sync or async, with TRL's keyword arguments:

* ``prompts``: one per sample, the dataset's message list for a conversational
  row (``PromptItem.messages``, as the dataset gave it), else the prompt text;
* ``completions``: one per sample, ``[{"role": "assistant", "content": text}]``
  for a conversational row, else the text;
* ``completion_ids``: the completion's token ids;
* every other column of the dataset row (``prompt``, ``completion`` and
  ``completion_ids`` excepted, as TRL does) as a list over the batch, a row
  without the column giving None; then the term's ``options``.

The batch is one rollout call's samples (whole groups). It runs in the judge
pool beside the other terms: a sync function in a worker thread, like every
user function. Its value for a sample is a finite number, or None (unscored,
cause ``<name>_no_score``, never 0); a non-number is ``<name>_invalid_value``;
an exception leaves every sample of the batch unscored (``<name>_error:<Type>``).
A result that is not a list of one value per completion is a ``TermContractError``:
a one-line error naming the term, which ends the run (a bug in the function, not
a scoring failure).

Which style a function has: ``reward.terms[*].style`` (``trl`` or ``sample``), or
with ``auto`` (the default) its signature: a parameter named ``completions`` is
TRL's; anything else is relay's per-sample ``(prompt, completion[, ctx])``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import numbers
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BatchFunctionTerm", "ScoreInput", "TermContractError", "is_trl_style", "trl_arguments"]

logger = logging.getLogger(__name__)

TRL_FIXED = ("prompts", "completions", "completion_ids")
_NOT_COLUMNS = ("prompt", "completion", "completion_ids")  # TRL leaves these out of the column kwargs


class TermContractError(ValueError):
    """A reward function broke its contract (e.g. a TRL function returned the wrong number of
    values); the message is one line naming the term."""


@dataclass(frozen=True)
class ScoreInput:
    """One sample to score: the prompt text the judge sees, the completion, the dataset row, the
    prompt's chat messages when the row was conversational (None otherwise), the completion's
    token ids and its prompt group's id."""

    prompt: str
    completion: str
    row: Mapping[str, Any] = field(default_factory=dict)
    prompt_messages: Sequence[Mapping[str, Any]] | None = None
    completion_ids: Sequence[int] = ()
    group_id: str | None = None  # the prompt group (group-mode judging scores a group in one request)


def is_trl_style(fn: object) -> bool:
    """True when ``fn`` has a parameter named ``completions`` (TRL's reward-function convention)."""
    try:
        return "completions" in inspect.signature(fn).parameters  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def trl_arguments(inputs: Sequence[ScoreInput]) -> dict[str, list[Any]]:
    """TRL's keyword arguments for a batch (module docstring): prompts, completions,
    completion_ids and every dataset column as a list over the batch."""
    columns = list(dict.fromkeys(k for i in inputs for k in i.row if k not in _NOT_COLUMNS))
    kwargs: dict[str, list[Any]] = {
        "prompts": [list(i.prompt_messages) if i.prompt_messages is not None else i.prompt for i in inputs],
        "completions": [
            [{"role": "assistant", "content": i.completion}] if i.prompt_messages is not None else i.completion
            for i in inputs
        ],
        "completion_ids": [list(i.completion_ids) for i in inputs],
    }
    kwargs.update({c: [i.row.get(c) for i in inputs] for c in columns})
    return kwargs


@dataclass(frozen=True)
class BatchOutcome:
    """A batch term's values (one per sample, None where unscored) and the causes of the unscored."""

    values: list[float | None]
    errors: list[str | None]
    seconds: float


class BatchFunctionTerm:
    """A TRL-style reward function: one call per batch (module docstring)."""

    def __init__(self, name: str, weight: float, fn: Any, options: Mapping[str, Any] | None = None) -> None:
        self.name, self.weight, self.fn = name, weight, fn
        self.options = dict(options or {})
        clash = sorted(set(self.options) & set(TRL_FIXED))
        if clash:
            raise ValueError(f"reward term {name!r}: options {clash} would replace TRL's own arguments")
        call = getattr(fn, "__call__", None)  # noqa: B004 - an object whose __call__ is async
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)

    async def evaluate_batch(self, inputs: Sequence[ScoreInput]) -> BatchOutcome:
        """One call for ``inputs``; ``TermContractError`` when the result is not one value per input."""
        started = time.perf_counter()
        kwargs = {**trl_arguments(inputs), **self.options}
        try:
            if self.is_async:
                result = await self.fn(**kwargs)
            else:
                result = await asyncio.to_thread(self.fn, **kwargs)
            if inspect.isawaitable(result):
                result = await result
        except Exception as err:  # noqa: BLE001 - a user function may raise anything
            logger.warning("reward term %s raised %s", self.name, type(err).__name__, exc_info=True)
            cause = f"{self.name}_error:{type(err).__name__}"
            return BatchOutcome([None] * len(inputs), [cause] * len(inputs), time.perf_counter() - started)
        values = self._values(result, len(inputs))
        checked = [self._check(v) for v in values]
        return BatchOutcome([v for v, _ in checked], [e for _, e in checked], time.perf_counter() - started)

    def _values(self, result: object, n: int) -> list[object]:
        if hasattr(result, "tolist") and not isinstance(result, (list, tuple)):
            result = result.tolist()  # a numpy array or torch tensor
        if not isinstance(result, (list, tuple)):
            raise TermContractError(
                f"reward term {self.name!r} (TRL style) returned {type(result).__name__}, not a list of "
                f"{n} values (one float or None per completion)"
            )
        if len(result) != n:
            raise TermContractError(
                f"reward term {self.name!r} (TRL style) returned {len(result)} values for {n} completions; "
                "it must return one float or None per completion"
            )
        return list(result)

    def _check(self, value: object) -> tuple[float | None, str | None]:
        if value is None:
            return None, f"{self.name}_no_score"
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
            logger.warning("reward term %s returned an invalid value of type %s", self.name, type(value).__name__)
            return None, f"{self.name}_invalid_value"
        return float(value), None
