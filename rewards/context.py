"""What a reward term that takes a third parameter gets: ``ctx: RewardContext``.

A user term ``def term(prompt, completion, ctx)`` (sync or async; the composer
detects the third positional parameter) is called with one ``RewardContext``
per sample: ``ctx.row``, the dataset row of the sample's prompt (its fields
as JSON values, read-only), and ``ctx.llm(name)``, an ``LLMClient`` on a
configured engine (``reward.engines.<name>``) or, for ``"judge"``, on the
judge's own endpoints. Every call goes through that engine's limits, retries,
breaker and cache (``rewards/llm.py``) and is counted for the term.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rewards.errors import LLMCallError, RewardError
from rewards.llm import ChatEngine, EngineUsage, LLMClient

__all__ = ["LLMCallError", "LLMClient", "RewardContext", "TermUsage", "JUDGE_ENGINE"]

JUDGE_ENGINE = "judge"
"""``ctx.llm()``'s default: the judge's own endpoints."""


@dataclass
class TermUsage:
    """One term's LLM usage for one sample, per engine name."""

    engines: dict[str, EngineUsage] = field(default_factory=dict)

    def of(self, name: str) -> EngineUsage:
        return self.engines.setdefault(name, EngineUsage())

    @property
    def llm_calls(self) -> int:
        """HTTP requests the term sent, every engine and attempt."""
        return sum(u.requests for u in self.engines.values())


@dataclass(frozen=True)
class RewardContext:
    """The row of one sample's prompt and the engines its term may call.

    Invariants: ``row`` is read-only (a mapping proxy when built by the
    composer); ``llm`` never builds an engine, it hands out the composer's,
    so every term and sample shares their limits.
    """

    row: Mapping[str, Any]
    _engines: Mapping[str, ChatEngine] = field(default_factory=dict, repr=False, compare=False)
    _usage: TermUsage = field(default_factory=TermUsage, repr=False, compare=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False, compare=False)

    @classmethod
    def build(cls, row: Mapping[str, Any], engines: Mapping[str, ChatEngine], usage: TermUsage) -> RewardContext:
        """A context on the running event loop (where the engines' calls run)."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        return cls(types.MappingProxyType(dict(row)), engines, usage, loop)

    @property
    def usage(self) -> TermUsage:
        """The LLM usage of this term and sample so far."""
        return self._usage

    def llm(self, name: str = JUDGE_ENGINE) -> LLMClient:
        """The engine ``reward.engines.<name>``, or ``"judge"``: the judge's endpoints.
        An unknown name raises ``RewardError`` naming the configured engines."""
        engine = self._engines.get(name)
        if engine is None:
            configured = sorted(n for n in self._engines if n != JUDGE_ENGINE)
            judge = "'judge' is the judge's endpoints" if JUDGE_ENGINE in self._engines else "no judge is configured"
            raise RewardError(f"ctx.llm({name!r}): unknown engine; reward.engines has {configured} ({judge})")
        return LLMClient(engine, self._usage.of(name), self._loop)
