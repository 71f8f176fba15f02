"""The evaluation job's config: the embedded default, condition overrides, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from ray_jobs import evaluate
from ray_jobs.config.experiment import ConfigError
from ray_jobs.evaluate import load_eval_config


def test_the_default_compares_the_base_with_the_cpu_default_run() -> None:
    cfg = load_eval_config(None, [])
    assert list(cfg.conditions) == ["base", "trained", "trained_best_of_4"]
    assert cfg.conditions["trained"].policy == "runs/cpu-default/final"
    best = cfg.conditions["trained_best_of_4"]
    assert (best.k, best.select, best.critic.beta) == (4, "critic", 2.0)
    assert cfg.statistics.baseline is None and cfg.statistics.resamples == 10_000  # every pair


def test_a_condition_override_patches_the_default_conditions() -> None:
    cfg = load_eval_config(None, ["conditions.trained.policy=runs/other/final", "conditions.base.system_prompt=Hi."])
    assert list(cfg.conditions) == ["base", "trained", "trained_best_of_4"]
    assert cfg.conditions["trained"].policy == "runs/other/final"
    assert cfg.conditions["base"].system_prompt == "Hi."
    assert cfg.conditions["trained_best_of_4"].policy == "runs/cpu-default/final"


@pytest.mark.parametrize(
    "override, message",
    [
        ("statistics.baseline=nope", "statistics.baseline 'nope' is not a condition"),
        ("conditions.trained.k=3", "select 'single' scores one completion"),
        ("conditions.trained.judge=1", "unknown config key 'conditions.trained.judge'"),
    ],
)
def test_bad_settings_are_one_line_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_eval_config(None, [override])


def test_an_evaluation_before_training_is_a_one_line_error(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)  # no runs/cpu-default here
    assert evaluate.main([]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: conditions.trained.policy: runs/cpu-default/final does not exist "
        "(train it first: python -m ray_jobs.train)"
    )
