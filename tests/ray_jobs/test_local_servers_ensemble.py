"""The driver's stand-in judges for an ensemble: one per member with local_server.enabled (no Ray)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from ray_jobs.runtime.local_servers import rewards_for_run
from rewards.composer import RewardComposer
from rewards.config import RewardConfig, RewardTermConfig
from rewards.judge.config import JudgeConfig

REWARD = RewardConfig(terms=[RewardTermConfig(name="judge", weight=1.0)])


def test_each_stand_in_member_gets_its_own_server_and_key(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("RELAY_JUDGE_API_KEY", raising=False)
    monkeypatch.delenv("RELAY_MEMBER_C_KEY", raising=False)
    judge = JudgeConfig(
        ensemble=[
            {"name": "a", "local_server": {"enabled": True}},
            {"name": "b", "local_server": {"enabled": True, "latency_s": 0.01}},
            {"name": "c", "local_server": {"enabled": True, "fail_rate": 1.0}, "api_key_env": "RELAY_MEMBER_C_KEY"},
        ]  # type: ignore[list-item]
    )
    with rewards_for_run(judge, REWARD, tmp_path) as (run_judge, reward, keys):
        urls = [m.base_url for m in run_judge.ensemble]
        assert all(u is not None and u.startswith("http://127.0.0.1:") for u in urls) and len(set(urls)) == 3
        assert all(m.local_server is None for m in run_judge.ensemble) and not run_judge.uses_local_server
        assert run_judge.base_url is None and not (tmp_path / "judge_server.log").exists()  # no stand-in of its own
        assert set(keys) == {"RELAY_JUDGE_API_KEY", "RELAY_MEMBER_C_KEY"} and os.environ["RELAY_MEMBER_C_KEY"]
        composer = RewardComposer(reward, run_judge, keys)

        async def score():
            try:
                return await composer.score("A bakery in Portland.", "portlandbread.com")
            finally:
                await composer.aclose()

        parts = asyncio.run(score())
    assert parts.error is None and parts.reward is not None  # c failed, a and b scored it
    assert set(k for k in parts.judge_flags if k.startswith("member/")) == {"member/a", "member/b"}
    for name in "abc":
        log = (tmp_path / f"judge_server_{name}.log").read_text()
        assert all(k.get_secret_value() not in log for k in keys.values())
