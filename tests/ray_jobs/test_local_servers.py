"""The driver's stand-in servers for a run: the judge's and each engine's local_server (no Ray)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from ray_jobs.runtime.local_servers import LocalJudgeError, rewards_for_run
from rewards.composer import RewardComposer
from rewards.config import EngineConfig, RewardConfig, RewardTermConfig
from rewards.errors import MissingApiKeyError
from rewards.judge.config import JudgeConfig

GEO_TERM = RewardTermConfig(name="rewards.recipes.geo:visibility_gain")
ROW = {"query": "coffee in town", "sources": ["Fresh coffee downtown.", "Tea only."], "target": 1}


def test_engine_local_server_is_started_checked_used_and_stopped(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("RELAY_GEO_TEST_KEY", raising=False)
    engine = EngineConfig(
        local_server="rewards.stand_in.geo_engine",
        model="geo-m",
        api_key_env="RELAY_GEO_TEST_KEY",
        local_server_args=["--latency-s", "0.01"],
    )
    reward = RewardConfig(terms=[GEO_TERM], engines={"geo": engine})
    with rewards_for_run(JudgeConfig(), reward, tmp_path) as (judge, run_reward, keys):
        url = run_reward.engines["geo"].base_url
        assert (
            url is not None and url.startswith("http://127.0.0.1:") and not run_reward.engines["geo"].uses_local_server
        )
        assert judge.base_url is not None and set(keys) == {"RELAY_JUDGE_API_KEY", "RELAY_GEO_TEST_KEY"}
        assert os.environ["RELAY_GEO_TEST_KEY"]  # a per-run key was generated
        composer = RewardComposer(run_reward, judge, keys)

        async def score():
            try:
                return await composer.score("p", "Coffee in town, fresh coffee.", ROW)
            finally:
                await composer.aclose()

        parts = asyncio.run(score())
    assert parts.error is None and parts.reward is not None and parts.reward > 0
    log = (tmp_path / "engine_geo_server.log").read_text()
    assert 'geo_engine_server: stats {"requests": 2' in log and keys["RELAY_GEO_TEST_KEY"].get_secret_value() not in log


def test_a_local_server_that_does_not_start_is_one_line(tmp_path: Path) -> None:
    engine = EngineConfig(local_server="scripts.no_such_server", model="m", api_key_env="RELAY_X_KEY")
    reward = RewardConfig(terms=[GEO_TERM], engines={"x": engine})
    with pytest.raises(LocalJudgeError) as info:
        with rewards_for_run(JudgeConfig(), reward, tmp_path):
            pass
    message = str(info.value)
    assert message.startswith("local server of reward.engines.x (scripts.no_such_server) did not start: ")
    assert "No module named scripts.no_such_server" in message and "\n" not in message


def test_a_remote_engines_missing_key_is_named(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("REMOTE_GEO_KEY", raising=False)
    engine = EngineConfig(base_url="http://127.0.0.1:9/v1", model="m", api_key_env="REMOTE_GEO_KEY")
    reward = RewardConfig(terms=[GEO_TERM], engines={"geo": engine})
    with pytest.raises(
        MissingApiKeyError, match="^reward.engines.geo.api_key_env names REMOTE_GEO_KEY, which is not set"
    ):
        with rewards_for_run(JudgeConfig(), reward, tmp_path):
            pass
