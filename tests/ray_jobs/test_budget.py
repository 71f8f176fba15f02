"""``judge.budget_usd`` without Ray: the guard's stop and launch rules by hand, the run's spending across
pool restarts and resumes, the check before a resumed run starts, the stop cause on exit, the console."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ray_jobs.config.loading import ConfigError
from ray_jobs.rl.budget import STEP_COST, TOTAL, BudgetGuard, RunBudget, SpendTracker, budget_stop_cause, is_priced
from ray_jobs.runtime.control import GracefulStop, command_exit_code
from ray_jobs.runtime.faults import FaultCounters, StopRequested
from ray_jobs.runtime.tracking import _console_line
from rewards.client.config import EndpointConfig
from rewards.config import EngineConfig
from rewards.judge.config import JudgeConfig

PRICED = JudgeConfig(price_per_million_input_tokens=1.0, budget_usd=10.0)


def test_the_stop_rule_by_hand() -> None:
    guard = BudgetGuard(10.0)
    assert not guard.reached(9.99)  # no step cost known yet: stop only past the budget itself
    assert guard.reached(10.01)
    guard.record_step(3.0)
    guard.record_step(2.0)  # the most one step cost is kept
    assert guard.step_cost_usd == 3.0
    assert not guard.reached(7.0)  # 7 + 3 = 10: one more step still fits
    assert guard.reached(7.5)  # 7.5 + 3 > 10
    assert not guard.reached(7.5, in_flight=1)  # a batch in flight was paid for within the budget: train it
    assert guard.reached(10.5, in_flight=1)  # past the budget itself: stop all the same
    assert not BudgetGuard(None, 3.0).reached(1e9)  # no budget: never
    # a resumed run judges its batches in flight again: 4 + 2 x 3 = 10 fits, 4 + 3 x 3 does not
    assert guard.may_resume(4.0, in_flight=2) and not guard.may_resume(4.0, in_flight=3)
    assert guard.may_resume(7.0, in_flight=0) and not guard.may_resume(7.5, in_flight=0)  # or one step


def test_the_launch_rule_by_hand() -> None:
    guard = BudgetGuard(10.0)
    assert guard.may_launch(0.0, in_flight=0)  # the next step's own batch: always
    assert not guard.may_launch(0.0, in_flight=1)  # a step's cost unknown: nothing ahead
    guard.record_step(3.0)
    assert guard.may_launch(2.0, in_flight=1)  # 2 + (1 + 1) * 3 = 8 <= 10
    assert not guard.may_launch(2.0, in_flight=2)  # 2 + (2 + 1) * 3 = 11 > 10
    assert guard.may_launch(50.0, in_flight=0)  # whether to go on at all is the stop rule's
    assert BudgetGuard(None).may_launch(1e9, in_flight=5)


def test_the_cause_names_the_budget_and_what_finishing_needs() -> None:
    guard = BudgetGuard(10.0, 3.0)
    cause = guard.cause(7.5, steps_left=4)
    # finishing: 7.5 spent + 4 steps x 3 = 19.5
    assert cause.startswith("judge budget reached: $7.5000 spent of judge.budget_usd=10")
    assert cause.endswith("judge.budget_usd=19.5)") and "\n" not in cause
    assert guard.counters(7.5) == {TOTAL: 7.5, STEP_COST: 3.0}


def test_pipelined_batches_stop_within_one_step_of_the_budget() -> None:
    """The training loop's use of the rules (max_staleness 2), with a judge so fast that a batch is paid
    for when launched: budget 20, every batch 3. Step 0 launches batch 0 alone (spent 3); step 1 batches
    1, 2, 3 (6, 9, 12: 9 + 3 x 3 <= 20); step 2 none (12 + 3 x 3 > 20); step 3 batch 4 (15: 12 + 2 x 3
    <= 20), not 5 (15 + 3 x 3 > 20); step 4 none (15 + 2 x 3 > 20); step 5 batch 5, the step's own
    (18). After step 5 nothing is in flight and 18 + 3 > 20: stop at 18, within one step (3) of 20,
    not past it, every batch paid for trained."""
    guard, spent, launched, trained = BudgetGuard(20.0), 0.0, 0, 0
    for step in range(100):
        while launched < step + 3 and guard.may_launch(spent, launched - step):
            spent, launched = spent + 3.0, launched + 1
        guard.record_step(3.0)
        trained += 1
        if guard.reached(spent, in_flight=launched - trained):
            break
    assert (trained, launched, spent) == (6, 6, 18.0)


def test_the_run_total_survives_pool_restarts_and_resumes() -> None:
    tracker = SpendTracker({TOTAL: 5.0, "faults/calls_resent": 1.0})  # resumed: 5 spent before
    assert tracker.observe(("pool-a", 1.0)) == 6.0
    assert tracker.observe(None) == 6.0  # the pool did not answer: the last total stands
    assert tracker.observe(("pool-a", 2.5)) == 7.5
    assert tracker.observe(("pool-b", 0.5)) == 8.0  # restarted pool from 0: 5 + 2.5 + 0.5
    assert tracker.observe(("pool-b", 0.25)) == 8.0  # never decreases
    assert SpendTracker().total == 0.0


def test_a_resumed_run_at_its_budget_stops_before_anything_starts() -> None:
    saved = {TOTAL: 9.0, STEP_COST: 2.0}
    cause = budget_stop_cause(PRICED, {}, saved, steps_left=3)
    assert cause is not None and "judge.budget_usd=10" in cause and "judge.budget_usd=15" in cause  # 9 + 3 x 2
    higher = PRICED.model_copy(update={"budget_usd": 11.5})
    assert budget_stop_cause(higher, {}, saved, steps_left=3) is None  # 9 + 2 <= 11.5: resumes
    assert budget_stop_cause(higher, {}, saved, steps_left=3, in_flight=2) is not None  # 9 + 2 x 2 > 11.5
    assert budget_stop_cause(PRICED, {}, saved, steps_left=0) is None  # nothing left to pay for
    assert budget_stop_cause(PRICED, {}, None, steps_left=3) is None  # a new run
    assert budget_stop_cause(JudgeConfig(), {}, saved, steps_left=3) is None  # no budget


def test_a_budget_without_prices_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="judge.budget_usd is set but no token has a price"):
        budget_stop_cause(JudgeConfig(budget_usd=5.0), {}, None, steps_left=3)
    endpoint = JudgeConfig(endpoints=[EndpointConfig(base_url="http://a/v1", price_per_million_output_tokens=0.1)])
    engine = EngineConfig(base_url="http://e/v1", model="m", api_key_env="K", price_per_million_input_tokens=2.0)
    assert is_priced(endpoint, {}) and is_priced(JudgeConfig(), {"e": engine})
    assert not is_priced(JudgeConfig(), {"e": engine.model_copy(update={"price_per_million_input_tokens": 0.0})})


def test_run_budget_asks_the_pool_after_each_step_and_for_the_checkpoint() -> None:
    answers = iter([("p", 4.0), ("p", 6.0), ("p", 7.0)])
    budget = RunBudget(10.0, True, lambda: next(answers), {TOTAL: 1.0})
    assert budget.may_launch(0) and not budget.may_launch(1)  # step cost not known yet
    assert budget.after_step({"judge/cost_usd": 2.0}) == {TOTAL: 5.0}  # 1 before + 4 now
    assert budget.stop_cause(steps_left=5, in_flight=0) is None  # 5 + 2 <= 10
    assert budget.may_launch(1) and not budget.may_launch(2)  # 5 + 2 x 2 <= 10 < 5 + 3 x 2
    assert budget.after_step({"judge/cost_usd": 3.5}) == {TOTAL: 7.0}
    assert budget.stop_cause(steps_left=5, in_flight=1) is None  # its batch in flight is paid for
    assert budget.stop_cause(steps_left=5, in_flight=0) is not None  # 7 + 3.5 > 10
    assert budget.stop_cause(steps_left=0, in_flight=0) is None  # the last step: the run finishes
    assert budget.counters() == {TOTAL: 8.0, STEP_COST: 3.5}  # asked afresh: work in flight kept spending


def test_an_unpriced_run_reports_no_spending_and_never_asks_the_pool() -> None:
    def refuse() -> tuple[str, float]:
        raise AssertionError("asked the pool")

    budget = RunBudget(None, False, refuse)
    assert budget.after_step({"judge/cost_usd": 0.0}) == {} and budget.counters() == {}
    assert budget.stop_cause(steps_left=3, in_flight=0) is None and budget.may_launch(7)
    assert RunBudget.disabled().counters() == {}


def test_a_stop_with_a_cause_prints_it_then_the_resume_line(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = SimpleNamespace(run=SimpleNamespace(directory="/runs/x"))

    def job(_cfg: object) -> None:
        raise StopRequested("judge budget reached: $9.5000 spent of judge.budget_usd=10")

    assert command_exit_code(lambda: cfg, job, ()) == 143
    assert capsys.readouterr().out.splitlines() == [
        "stopped: judge budget reached: $9.5000 spent of judge.budget_usd=10",
        "stopped: checkpoint written; re-run the same command to resume (/runs/x)",
    ]
    assert command_exit_code(lambda: cfg, lambda c: (_ for _ in ()).throw(StopRequested()), ()) == 143
    assert capsys.readouterr().out.splitlines() == [
        "stopped: checkpoint written; re-run the same command to resume (/runs/x)"
    ]


def test_the_run_asks_itself_to_stop_with_a_cause() -> None:
    stop = GracefulStop()
    try:
        assert not stop() and stop.cause is None
        stop.request("budget")
        stop.request("another")  # the first request's cause stands
        assert stop() and stop.cause == "budget"
    finally:
        stop.restore()


def test_fault_counters_ignore_the_other_saved_counters() -> None:
    faults = FaultCounters()
    faults.load({"faults/calls_resent": 2.0, TOTAL: 12.5, STEP_COST: 1.0})
    assert faults.metrics() == {
        "faults/rollout_restarts": 0.0,
        "faults/judge_restarts": 0.0,
        "faults/calls_resent": 2.0,
    }
    assert dict(faults.counts) == {"calls_resent": 2}


def test_the_console_shows_the_spending_when_a_token_has_a_price() -> None:
    m = {
        "reward/mean": 0.5,
        "reward/std": 0.1,
        "staleness/mean": 0.0,
        "staleness/max": 0.0,
        "throughput/samples_per_s": 10.0,
        "judge/requests": 32.0,
        "judge/failures": 0.0,
        "time/step_s": 1.0,
    }
    assert "$" not in _console_line(0, 3, m)
    assert "| judge 32 req 0 failed $0.0123 |" in _console_line(0, 3, {**m, TOTAL: 0.0123})
