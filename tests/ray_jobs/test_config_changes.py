"""Which config keys may differ when a job continues a run directory (``ray_jobs/config/changes.py``)."""

from ray_jobs.config.changes import changed_keys
from ray_jobs.evaluate import MAY_CHANGE


def test_engine_transport_and_eval_cadence_may_change_on_resume_but_not_what_they_measure() -> None:
    gen = {"model": "gen-7b", "base_url": "http://a/v1", "retry": {"max_attempts": 3}, "temperature": 0.0}
    saved = {"reward": {"engines": {"gen": gen}}, "eval": {"every_steps": 5, "data": "held.jsonl"}}
    moved = {**gen, "base_url": "http://b/v1", "retry": {"max_attempts": 6}, "max_concurrency": 64}
    assert (
        changed_keys(saved, {"reward": {"engines": {"gen": moved}}, "eval": {"every_steps": 10, "data": "held.jsonl"}})
        == []
    )
    other = {
        "reward": {"engines": {"gen": {**gen, "model": "gen-70b", "temperature": 0.7}}},
        "eval": {"every_steps": 5},
    }
    assert changed_keys(saved, other) == ["eval.data", "reward.engines.gen.model", "reward.engines.gen.temperature"]
    added = {
        "reward": {"engines": {"gen": gen, "critic": {"model": "m", "base_url": "http://c/v1"}}},
        "eval": saved["eval"],
    }
    assert changed_keys(saved, added) == ["reward.engines.critic.model"]  # a new engine: a new reward


def test_an_evaluation_may_change_only_its_statistics_wandb_and_name() -> None:
    saved = {"statistics": {"resamples": 1000}, "run": {"name": "a", "seed": 0}, "conditions": {"base": {"n": 1}}}
    current = {"statistics": {"resamples": 5000}, "run": {"name": "b", "seed": 1}, "conditions": {"base": {"n": 4}}}
    assert changed_keys(saved, current, MAY_CHANGE) == ["conditions.base.n", "run.seed"]


def test_the_judges_waiting_spending_and_alarms_may_change_on_resume_but_not_how_it_scores() -> None:
    saved = {"judge": {"max_outage_s": 1800, "budget_usd": 10, "alarms": {"window_steps": 10}, "mode": "pointwise"}}
    raised = {"judge": {"max_outage_s": 7200, "budget_usd": 50, "alarms": {"window_steps": 20}, "mode": "pointwise"}}
    assert changed_keys(saved, raised) == []
    grouped = {"judge": {**saved["judge"], "mode": "group", "group_passes": 2}}
    assert changed_keys(saved, grouped) == ["judge.group_passes", "judge.mode"]
