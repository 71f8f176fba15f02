"""Configs written before the packages were regrouped still load: a moved module's old path is
read as its new one (``rewards.config.MOVED_MODULES``), with a warning naming both."""

from __future__ import annotations

import logging

import pytest

from ray_jobs.config.experiment import load_config
from rewards.config import EngineConfig, RewardTermConfig
from rewards.recipes.geo import visibility_gain
from rewards.terms import load_term_function


def test_an_old_term_path_loads_as_the_new_one_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="rewards.config"):
        term = RewardTermConfig(name="rewards.geo:visibility_gain")
    assert term.name == "rewards.recipes.geo:visibility_gain"
    assert "rewards.geo:visibility_gain has moved; loading it as rewards.recipes.geo:visibility_gain" in caplog.text


def test_an_old_stand_in_server_loads_as_the_new_one() -> None:
    engine = EngineConfig(model="m", api_key_env="GEO_KEY", local_server="scripts.geo_engine_server")
    assert engine.local_server == "rewards.stand_in.geo_engine"
    assert (
        EngineConfig(model="m", api_key_env="GEO_KEY", local_server="my_project.server").local_server
        == "my_project.server"
    )


def test_current_paths_and_registered_names_are_left_alone(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="rewards.config"):
        assert RewardTermConfig(name="rewards.recipes.refiner:citations").name == "rewards.recipes.refiner:citations"
        assert RewardTermConfig(name="judge").name == "judge"
    assert caplog.text == ""


def test_a_config_with_the_old_paths_resolves_the_moved_function() -> None:
    cfg = load_config(
        None,
        [
            "reward.terms=[{name: 'rewards.geo:visibility_gain', options: {engine: geo}}]",
            "reward.engines={geo: {model: stand-in, api_key_env: GEO_KEY, local_server: scripts.geo_engine_server}}",
        ],
    )
    assert cfg.reward.engines["geo"].local_server == "rewards.stand_in.geo_engine"
    assert load_term_function(cfg.reward.terms[0].name) is visibility_gain
