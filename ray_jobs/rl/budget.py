"""The run's judge spending in US dollars, and ``judge.budget_usd``.

``SpendTracker`` keeps the run's total: the judge pool's own running total
(every request of the judge and of every engine, including calls still being
scored and held-out evaluations; ``JudgePool.spent``) plus what earlier pools
spent: a restarted pool (another instance id) starts from 0 again, so the old
pool's last total is kept, and a resumed run starts from its checkpoint's total
(``counters()`` go into ``DriverState.counters``).

``BudgetGuard`` decides, by hand-checkable rules, with ``spent`` the run's total
and ``c`` the most one step has cost so far (a step's ``judge/cost_usd``):

* launch a batch ahead of the step being trained only when
  ``spent + (in_flight + 1) * c <= budget``, so work in flight cannot pass it;
  before any step's cost is known (``c`` = 0) no batch is launched ahead.
  The batch of the next step to train is always launched: whether to go on at
  all is the stop rule's decision;
* after a step that leaves steps to train, stop when no batch is in flight and
  ``spent + c > budget`` (one more step could pass it), or when ``spent`` is
  past the budget already; batches in flight were paid for within the budget
  when launched, so they are trained, not thrown away. Never mid-step;
* a resumed run generates and judges its checkpoint's batches in flight again:
  it starts only when ``spent + max(1, in_flight) * c <= budget``.

So a run stopped by its budget spent more than ``budget - c``, and no more than
the budget unless a step costs more than any before it. ``RunBudget`` applies
both to the training loop (``ray_jobs/train.py``). Nothing here touches Ray.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ray_jobs.config.loading import ConfigError
from rewards.config import EngineConfig
from rewards.judge.config import JudgeConfig, JudgeMemberConfig

__all__ = ["BudgetGuard", "RunBudget", "SpendTracker", "TOTAL", "budget_stop_cause", "is_priced"]

TOTAL = "judge/cost_usd_total"
"""Checkpoint counter and metric: US dollars the run has spent on its judge and engines."""
STEP_COST = "judge/step_cost_usd_max"
"""Checkpoint counter: the most one step has cost (``BudgetGuard.step_cost_usd``)."""
STEP_METRIC = "judge/cost_usd"
"""The step's metric of what its batch cost (``rewards/metrics.py``: ``spend_metrics``)."""


def is_priced(judge: JudgeConfig, engines: Mapping[str, EngineConfig]) -> bool:
    """Whether any token of the judge (or an ensemble member) or of an engine has a price (on the service or an endpoint)."""
    services: list[JudgeConfig | JudgeMemberConfig | EngineConfig] = [judge, *judge.ensemble, *engines.values()]
    prices = [
        p
        for s in services
        for priced in (s, *s.endpoints)
        for p in (priced.price_per_million_input_tokens, priced.price_per_million_output_tokens)
    ]
    return any(p is not None and p > 0 for p in prices)


class SpendTracker:
    """The run's total spending across judge pool restarts and resumes (module docstring).

    Invariant: ``total`` never decreases; it is ``base + sum(last totals of earlier pools)
    + the current pool's total``.
    """

    def __init__(self, saved: Mapping[str, float] | None = None) -> None:
        self._base = float((saved or {}).get(TOTAL, 0.0))
        self._instance: str | None = None
        self._pool = 0.0

    @property
    def total(self) -> float:
        return self._base + self._pool

    def observe(self, pool: tuple[str, float] | None) -> float:
        """Take in the pool's (instance id, running total); None (it did not answer) keeps the last one."""
        if pool is not None:
            instance, spent = pool
            if self._instance is not None and instance != self._instance:
                self._base += self._pool  # a restarted pool counts from 0 again
                self._pool = 0.0
            self._instance, self._pool = instance, max(self._pool, float(spent))
        return self.total


@dataclass
class BudgetGuard:
    """The stop and launch rules of ``judge.budget_usd`` (module docstring); ``budget_usd`` None:
    no budget, never stops. ``step_cost_usd`` is the most one step has cost so far."""

    budget_usd: float | None
    step_cost_usd: float = 0.0

    def record_step(self, cost_usd: float) -> None:
        self.step_cost_usd = max(self.step_cost_usd, cost_usd)

    def reached(self, spent_usd: float, in_flight: int = 0) -> bool:
        """After a step, with ``in_flight`` batches launched and not trained: whether to stop."""
        if self.budget_usd is None:
            return False
        return spent_usd > self.budget_usd or (in_flight == 0 and spent_usd + self.step_cost_usd > self.budget_usd)

    def may_resume(self, spent_usd: float, in_flight: int) -> bool:
        """Whether a run may resume with ``in_flight`` batches to generate and judge again (or one step)."""
        return self.budget_usd is None or spent_usd + max(1, in_flight) * self.step_cost_usd <= self.budget_usd

    def may_launch(self, spent_usd: float, in_flight: int) -> bool:
        """Whether a batch may be launched with ``in_flight`` batches launched and not trained."""
        if self.budget_usd is None or in_flight == 0:
            return True
        if self.step_cost_usd == 0:
            return False  # nothing known about a step's cost yet: no batch ahead
        return spent_usd + (in_flight + 1) * self.step_cost_usd <= self.budget_usd

    def cause(self, spent_usd: float, steps_left: int) -> str:
        """The one-line stop cause, with the budget that would finish the run's ``steps_left`` steps."""
        need = math.ceil((spent_usd + steps_left * self.step_cost_usd) * 100) / 100
        return (
            f"judge budget reached: ${spent_usd:.4f} spent of judge.budget_usd={self.budget_usd:g}, and one more "
            f"step costs up to ${self.step_cost_usd:.4f}; to go on, raise it (the {steps_left} steps left need "
            f"about judge.budget_usd={need:g})"
        )

    def counters(self, spent_usd: float) -> dict[str, float]:
        return {TOTAL: spent_usd, STEP_COST: self.step_cost_usd}


def budget_stop_cause(
    judge: JudgeConfig,
    engines: Mapping[str, EngineConfig],
    counters: Mapping[str, float] | None,
    steps_left: int,
    in_flight: int = 0,
) -> str | None:
    """Before a run starts: the stop cause when the spending saved in its checkpoint (``counters``;
    None for a new run) leaves no room for its ``in_flight`` batches or one more step under
    ``judge.budget_usd``, else None. ``ConfigError`` when a budget is set but no token has a
    price (it could never stop the run)."""
    if judge.budget_usd is None:
        return None
    if not is_priced(judge, engines):
        raise ConfigError(
            "judge.budget_usd is set but no token has a price, so the budget can never be reached: set "
            "judge.price_per_million_input_tokens / _output_tokens (or the endpoints' or engines' prices)"
        )
    saved = counters or {}
    guard = BudgetGuard(judge.budget_usd, float(saved.get(STEP_COST, 0.0)))
    spent = float(saved.get(TOTAL, 0.0))
    return guard.cause(spent, steps_left) if steps_left > 0 and not guard.may_resume(spent, in_flight) else None


class RunBudget:
    """What the training loop asks about spending (``ray_jobs/train.py``).

    ``priced``: whether any token has a price (``is_priced``; without, the spending is 0 and not
    reported); ``pool_spent`` asks the judge pool for its (instance id, running total), None when
    it does not answer; ``counters`` the checkpoint's saved ones (None for a new run).
    """

    def __init__(
        self,
        budget_usd: float | None,
        priced: bool,
        pool_spent: Callable[[], tuple[str, float] | None],
        counters: Mapping[str, float] | None = None,
    ) -> None:
        saved = counters or {}
        self._priced, self._pool_spent = priced, pool_spent
        self.tracker = SpendTracker(saved)
        self.guard = BudgetGuard(budget_usd, float(saved.get(STEP_COST, 0.0)))

    @classmethod
    def disabled(cls) -> RunBudget:
        """No prices, no budget: never asks the pool, never stops."""
        return cls(None, False, lambda: None)

    def may_launch(self, in_flight: int) -> bool:
        """``BudgetGuard.may_launch`` with the spending seen after the last step."""
        return self.guard.may_launch(self.tracker.total, in_flight)

    def after_step(self, step_metrics: Mapping[str, float]) -> dict[str, float]:
        """Take in a finished step's cost; its ``judge/cost_usd_total`` metric (when anything has a price)."""
        if not self._priced:
            return {}
        self.guard.record_step(float(step_metrics.get(STEP_METRIC, 0.0)))
        return {TOTAL: self.tracker.observe(self._pool_spent())}

    def stop_cause(self, steps_left: int, in_flight: int) -> str | None:
        """After a step, with ``in_flight`` batches launched and not trained: the cause to stop
        (None: go on); never when no step is left."""
        spent = self.tracker.total
        return self.guard.cause(spent, steps_left) if steps_left > 0 and self.guard.reached(spent, in_flight) else None

    def counters(self) -> dict[str, float]:
        """For the checkpoint: the spending now (asked afresh: batches in flight keep spending)."""
        if not self._priced:
            return {}
        return self.guard.counters(self.tracker.observe(self._pool_spent()))
