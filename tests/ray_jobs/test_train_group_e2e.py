"""An end-to-end run of the CPU default with group-wise judging (judge.mode: group, two passes):
one judge request per prompt group and pass, counted once, by the run and by the stand-in judge."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from ray_jobs.config.experiment import load_config
from ray_jobs.train import run
from rewards.stand_in.judge_server import STATS_PREFIX

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_ray")]


def test_group_mode_sends_one_request_per_prompt_group_and_pass(tmp_path: Path, tiny_model_config, monkeypatch) -> None:
    monkeypatch.setenv("RELAY_JUDGE_API_KEY", "sk-group-e2e-key")
    config = load_config(
        None,
        [
            f"run.output_dir={tmp_path}",
            f"model.cache_dir={tiny_model_config.cache_dir}",
            "wandb.mode=disabled",
            "run.save_final=false",
            "run.steps=3",
            "pipeline.max_staleness=0",
            "judge.mode=group",
            "judge.group_passes=2",
        ],
    )
    run(config)
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    prompts, passes = config.pipeline.prompts_per_step, 2

    shown: defaultdict[str, list[dict]] = defaultdict(list)  # per group, its completions shown to the judge
    for s in samples:
        if "judge/shown_of" in s["terms"]:
            shown[s["group_id"]].append(s)
        if s["reward"] is not None and "judge/pass/1" in s["terms"]:
            mean = (s["terms"]["judge/pass/0"] + s["terms"]["judge/pass/1"]) / 2
            assert s["terms"]["judge"] == pytest.approx(mean)
    for members in shown.values():  # a group of 4 (at most judge.max_group_size) is one request
        assert sorted(m["terms"]["judge/position"] for m in members) == list(range(len(members)))
        assert all(m["terms"]["judge/shown_of"] == len(members) for m in members)
    shown_groups: defaultdict[int, set[str]] = defaultdict(set)
    for group_id, members in shown.items():
        shown_groups[members[0]["step"]].add(group_id)
    assert [len(shown_groups[m["step"]]) for m in metrics] == [prompts] * 3  # no group was gated whole
    assert [m["judge/requests"] for m in metrics] == [prompts * passes] * 3
    assert all(m["judge/failures"] == 0 for m in metrics)
    stats_lines = [x for x in (tmp_path / "judge_server.log").read_text().splitlines() if x.startswith(STATS_PREFIX)]
    assert json.loads(stats_lines[-1][len(STATS_PREFIX) :])["completions_served"] == 3 * prompts * passes
