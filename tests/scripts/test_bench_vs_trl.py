"""The pure parts of scripts/bench/vs_trl.py (step times, the window mean, the tables), and
the TRL side's judge reward against relay's own judge client on the stand-in server."""

from __future__ import annotations

import asyncio
import math

import pytest
from pydantic import SecretStr

from scripts.bench.trl.report import (
    Stats,
    column,
    columns,
    console_step,
    durations_from_ends,
    format_cross_check,
    format_load,
    format_loads,
    format_markdown,
    format_repeats,
    format_spread,
    format_stages,
    format_table,
    relay_step_s,
    repeat_ratios,
    stage_means,
    summarise,
    summary_json,
    window_stats,
)

SEPARATE = ["relay k=0", "relay k=2", "relay k=4"]


def test_durations_are_the_gaps_between_step_completions() -> None:
    ends = [10.0, 11.5, 12.0, 14.0]
    assert durations_from_ends(ends, start=9.0) == {1: 1.0, 2: 1.5, 3: 0.5, 4: 2.0}
    assert durations_from_ends(ends) == {2: 1.5, 3: 0.5, 4: 2.0}  # no start: step 1 unknown
    assert durations_from_ends([]) == {}


def test_window_mean_sd_min_max_by_hand() -> None:
    # steps 2..4 hold 1, 2, 4: mean 7/3; squared deviations 16/9 + 1/9 + 25/9 = 42/9, / (n-1) = 7/3
    st = window_stats({1: 9.0, 2: 1.0, 3: 2.0, 4: 4.0, 5: 100.0}, 2, 4)
    assert st.mean == pytest.approx(7 / 3)
    assert st.sd == pytest.approx(math.sqrt(7 / 3))
    assert (st.min, st.max, st.n) == (1.0, 4.0, 3)
    assert window_stats({3: 2.5}, 3, 3) == Stats(2.5, 0.0, 2.5, 2.5, 1)
    with pytest.raises(ValueError, match=r"no time for steps \[3\]"):
        window_stats({2: 1.0, 4: 1.0}, 2, 4)


def test_relay_console_lines_and_metrics_rows() -> None:
    assert console_step("step    3/12 | reward 0.1 ± 0.2 | loss -0.0000 | 1.2 s\n") == 3
    assert console_step("step  111/120 | reward 0.557") == 111
    assert console_step("(RolloutWorker pid=7) step    3/12 | x") is None
    assert console_step("2026-12-01 INFO relay.train: step 3") is None
    rows = [{"step": 0, "time/step_s": 1.5}, {"step": 1, "time/step_s": 0.5}]
    assert relay_step_s(rows) == {1: 1.5, 2: 0.5}  # metrics.jsonl counts from 0


def test_stage_means_over_the_window_leave_nones_out() -> None:
    means = stage_means({"time/judge_s": [9.0, None, 3.0, 5.0], "x": [None, None, None, None]}, 2, 4)
    assert means["time/judge_s"] == 4.0
    assert math.isnan(means["x"])


SUMMARY = {
    "tiny": {
        "params": 139_840,
        "trl": Stats(1.2, 0.1, 1.0, 1.4, 10),
        "relay": {"relay k=0": Stats(1.5, 0.05, 1.4, 1.6, 10), "relay k=2": Stats(0.6, 0.3, 0.2, 1.0, 10)},
    }
}


def test_tables_show_means_and_trl_over_relay() -> None:
    # ratios by hand: 1.2 / 1.5 = 0.80, 1.2 / 0.6 = 2.00; k=4 was not run: an empty cell
    md = format_markdown(SUMMARY, SEPARATE).splitlines()
    assert md == [
        "| model | TRL | relay k=0 | relay k=2 | relay k=4 |",
        "|---|---|---|---|---|",
        "| tiny (0.14M params) | 1.20 | 1.50 (0.80x) | 0.60 (2.00x) |  |",
    ]
    plain = format_table(SUMMARY, SEPARATE[:2]).splitlines()
    assert plain[0].split() == ["model", "TRL", "relay", "k=0", "relay", "k=2"]
    assert plain[1].split() == ["tiny", "(0.14M", "params)", "1.20", "1.50", "(0.80x)", "0.60", "(2.00x)"]
    spread = format_spread(SUMMARY, SEPARATE[:2]).splitlines()
    assert spread[2] == "| tiny | TRL | 1.200 | 0.100 | 1.000 | 1.400 | 10 |"
    assert spread[4] == "| tiny | relay k=2 | 0.600 | 0.300 | 0.200 | 1.000 | 10 |"


def test_repeats_give_each_ratio_then_their_mean_and_range() -> None:
    # repeat 1: 4.0 / 2.0 = 2.00 at k=2; repeat 2: 3.0 / 2.5 = 1.20; mean (2.0 + 1.2) / 2 = 1.60.
    # k=0 ran in repeat 1 only: 4.0 / 5.0 = 0.80, its own mean and range.
    summary = {
        "26M #1": {
            "model": "26M",
            "trl": Stats(4.0, 0, 4, 4, 10),
            "relay": {"relay k=0": Stats(5.0, 0, 5, 5, 10), "relay k=2": Stats(2.0, 0, 2, 2, 10)},
        },
        "26M #2": {"model": "26M", "trl": Stats(3.0, 0, 3, 3, 10), "relay": {"relay k=2": Stats(2.5, 0, 2.5, 2.5, 10)}},
    }
    ratios = repeat_ratios(summary, SEPARATE[:2])
    assert ratios == {"26M": {"relay k=0": pytest.approx([0.8]), "relay k=2": pytest.approx([2.0, 1.2])}}
    assert format_repeats(summary, SEPARATE[:2]).splitlines() == [
        "26M relay k=0: 0.80x mean over 1 repeats (range 0.80-0.80; each: 0.80)",
        "26M relay k=2: 1.60x mean over 2 repeats (range 1.20-2.00; each: 2.00, 1.20)",
    ]


def test_columns_put_each_ks_placements_side_by_side() -> None:
    assert column("separate", 0) == "relay k=0"  # today's name for the separate placement
    assert column("colocated", 4) == "colocated k=4"
    with pytest.raises(ValueError, match="unknown placement 'auto'"):
        column("auto", 0)
    assert columns(["separate", "colocated"], [0, 2]) == [
        ("separate", 0, "relay k=0"),
        ("colocated", 0, "colocated k=0"),
        ("separate", 2, "relay k=2"),
        ("colocated", 2, "colocated k=2"),
    ]
    assert [c for _, _, c in columns(["separate"], [0, 2, 4])] == SEPARATE  # the default: today's columns


def test_table_has_one_column_per_placement_and_k() -> None:
    # TRL 2.4 s; relay: 1.2 -> 2.00x, 0.8 -> 3.00x; colocated: 3.0 -> 0.80x, 0.6 -> 4.00x
    summary = {
        "26M": {
            "params": 25_700_000,
            "trl": Stats(2.4, 0, 2.4, 2.4, 10),
            "relay": {
                "relay k=0": Stats(1.2, 0, 1.2, 1.2, 10),
                "colocated k=0": Stats(3.0, 0, 3.0, 3.0, 10),
                "relay k=2": Stats(0.8, 0, 0.8, 0.8, 10),
                "colocated k=2": Stats(0.6, 0, 0.6, 0.6, 10),
            },
        }
    }
    cols = [c for _, _, c in columns(["separate", "colocated"], [0, 2])]
    assert format_markdown(summary, cols).splitlines() == [
        "| model | TRL | relay k=0 | colocated k=0 | relay k=2 | colocated k=2 |",
        "|---|---|---|---|---|---|",
        "| 26M (25.70M params) | 2.40 | 1.20 (2.00x) | 3.00 (0.80x) | 0.80 (3.00x) | 0.60 (4.00x) |",
    ]
    spread = format_spread(summary, cols).splitlines()
    assert [line.split(" | ")[1] for line in spread[2:]] == ["TRL", *cols]


def test_summary_of_runs_by_column() -> None:
    """Hand-made raw results (durations per 1-based step, metrics columns per step) summarised over
    steps 3..4: the window's means, and the stage table from relay's own time/* columns."""
    trl = {"durations": {1: 9.0, 2: 9.0, 3: 2.0, 4: 4.0}, "step_time": {3: 1.9, 4: 3.9}, "load_1m": [1.0, 3.0]}
    colocated = {
        "durations": {2: 5.0, 3: 1.0, 4: 2.0},
        "step_s": {3: 1.1, 4: 1.9},
        "stages": {"time/generate_s": [9.0, 9.0, 0.5, 0.7], "time/weight_sync_s": [None, None, None, None]},
        "load_1m": [],
    }
    results = {"tiny": {"model": "tiny", "params": 139_840, "trl": trl, "relay": {"colocated k=0": colocated}}}
    summary = summarise(results, last=4)
    s = summary["tiny"]
    assert s["trl"].mean == 3.0  # (2 + 4) / 2
    assert s["relay"]["colocated k=0"].mean == 1.5  # (1 + 2) / 2: TRL / relay = 2.00x
    assert s["relay_step_s"]["colocated k=0"].mean == pytest.approx(1.5)
    assert s["stages"]["colocated k=0"]["time/generate_s"] == 0.6  # (0.5 + 0.7) / 2
    stages = format_stages(summary, ["relay k=0", "colocated k=0"]).splitlines()
    assert stages[0] == "| model | run | step s | generate s | judge s | forward ahead s | train s | weight sync s |"
    assert stages[2:] == ["| tiny | colocated k=0 |  | 0.60 |  |  |  |  |"]  # no separate run; no sync logged
    plain = summary_json(summary)["tiny"]
    assert plain["relay"]["colocated k=0"]["mean"] == 1.5 and plain["trl"]["n"] == 2
    assert format_cross_check(summary) == "  tiny: TRL step_time 2.900, colocated k=0 time/step_s 1.500"
    assert format_loads(results) == "  tiny: TRL load 2.0 mean, 3.0 max; colocated k=0 load nan mean, nan max"
    assert format_load([0.5]) == "load 0.5 mean, 0.5 max"


def test_placements_on_the_command_line() -> None:
    from scripts.bench.vs_trl import parse_args

    assert parse_args([]).placements == ["separate"]  # today's command, today's table
    assert parse_args(["--placements", "separate,colocated"]).placements == ["separate", "colocated"]
    with pytest.raises(SystemExit):
        parse_args(["--placements", "separate,shared"])


def test_trl_reward_asks_what_relays_judge_asks() -> None:
    """The TRL side's async reward and relay's JudgeReward get the same verdict from the stand-in
    (which parses the fenced request and the rubric's criteria out of the messages), one request each."""
    from rewards.judge.config import JudgeConfig
    from rewards.judge.llm_judge import JudgeReward
    from rewards.stand_in.judge_server import JudgeServer, ServerSettings
    from scripts.bench.trl.runner import make_judge_reward

    description = "An organic bakery in Portland baking sourdough bread."
    answers = ["portlandbakery.com", "zzqx-9 bread!!", ""]  # the empty one is scored by rule, no request
    with JudgeServer(settings=ServerSettings(api_key=SecretStr("k"))) as srv:
        counts = {"requests": 0}
        reward = make_judge_reward(srv.base_url, "k", counts)
        prompts = [[{"role": "user", "content": description}]] * len(answers)
        completions = [[{"role": "assistant", "content": a}] for a in answers]
        ours = asyncio.run(reward(prompts=prompts, completions=completions))
        relay = JudgeReward(JudgeConfig(base_url=srv.base_url), SecretStr("k"))

        async def relay_scores() -> list[float]:
            try:
                return [(await relay.score(description, a)).score for a in answers]
            finally:
                await relay.aclose()

        expected = asyncio.run(relay_scores())
        assert srv.completions_served == 4
    assert counts["requests"] == 2
    assert ours == pytest.approx(expected)
    assert ours[0] > ours[1] > ours[2]  # a real verdict, not a constant


@pytest.mark.parametrize("placement", ["separate", "colocated"])
def test_relay_overrides_make_a_valid_config_asking_what_trl_asks(placement: str, tmp_path) -> None:
    """relay's run config on the benchmark's prompts file (a copy of the demo's rows, so 'own data'
    to relay): the demo's prompt field and rubric named as TRL's side uses them, the placement and k set."""
    from actors.model.loading import BUILTIN_TINY
    from ray_jobs.config.experiment import load_config
    from scripts.bench.vs_trl import relay_overrides, write_prompts

    prompts = write_prompts(tmp_path, 4)
    run_dir = tmp_path / "relay-k2"
    overrides = relay_overrides(BUILTIN_TINY, prompts, "http://127.0.0.1:9/v1", (placement, 2), 14, True, run_dir)
    cfg = load_config(None, overrides)
    assert (cfg.pipeline.placement, cfg.pipeline.max_staleness, cfg.run.steps) == (placement, 2, 14)
    assert (cfg.data.prompt_field, cfg.data.system_prompt, cfg.judge.rubric) == ("description", None, "seed000")
    assert (cfg.pipeline.prompts_per_step, cfg.rollout.group_size, cfg.rollout.max_new_tokens) == (2, 8, 32)
    assert cfg.learner.lora.enabled
