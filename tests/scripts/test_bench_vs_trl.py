"""The pure parts of scripts/bench/vs_trl.py (step times, the window mean, the tables), and
the TRL side's judge reward against relay's own judge client on the stand-in server."""

from __future__ import annotations

import asyncio
import math

import pytest
from pydantic import SecretStr

from scripts.bench.vs_trl_report import (
    Stats,
    console_step,
    durations_from_ends,
    format_markdown,
    format_repeats,
    format_spread,
    format_table,
    relay_step_s,
    repeat_ratios,
    stage_means,
    window_stats,
)


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
        "relay": {0: Stats(1.5, 0.05, 1.4, 1.6, 10), 2: Stats(0.6, 0.3, 0.2, 1.0, 10)},
    }
}


def test_tables_show_means_and_trl_over_relay() -> None:
    # ratios by hand: 1.2 / 1.5 = 0.80, 1.2 / 0.6 = 2.00; k=4 was not run: an empty cell
    md = format_markdown(SUMMARY, [0, 2, 4]).splitlines()
    assert md == [
        "| model | TRL | relay k=0 | relay k=2 | relay k=4 |",
        "|---|---|---|---|---|",
        "| tiny (0.14M params) | 1.20 | 1.50 (0.80x) | 0.60 (2.00x) |  |",
    ]
    plain = format_table(SUMMARY, [0, 2]).splitlines()
    assert plain[0].split() == ["model", "TRL", "relay", "k=0", "relay", "k=2"]
    assert plain[1].split() == ["tiny", "(0.14M", "params)", "1.20", "1.50", "(0.80x)", "0.60", "(2.00x)"]
    spread = format_spread(SUMMARY, [0, 2]).splitlines()
    assert spread[2] == "| tiny | TRL | 1.200 | 0.100 | 1.000 | 1.400 | 10 |"
    assert spread[4] == "| tiny | relay k=2 | 0.600 | 0.300 | 0.200 | 1.000 | 10 |"


def test_repeats_give_each_ratio_then_their_mean_and_range() -> None:
    # repeat 1: 4.0 / 2.0 = 2.00 at k=2; repeat 2: 3.0 / 2.5 = 1.20; mean (2.0 + 1.2) / 2 = 1.60.
    # k=0 ran in repeat 1 only: 4.0 / 5.0 = 0.80, its own mean and range.
    summary = {
        "26M #1": {
            "model": "26M",
            "trl": Stats(4.0, 0, 4, 4, 10),
            "relay": {0: Stats(5.0, 0, 5, 5, 10), 2: Stats(2.0, 0, 2, 2, 10)},
        },
        "26M #2": {"model": "26M", "trl": Stats(3.0, 0, 3, 3, 10), "relay": {2: Stats(2.5, 0, 2.5, 2.5, 10)}},
    }
    assert repeat_ratios(summary, [0, 2]) == {"26M": {0: pytest.approx([0.8]), 2: pytest.approx([2.0, 1.2])}}
    assert format_repeats(summary, [0, 2]).splitlines() == [
        "26M relay k=0: 0.80x mean over 1 repeats (range 0.80-0.80; each: 0.80)",
        "26M relay k=2: 1.60x mean over 2 repeats (range 1.20-2.00; each: 2.00, 1.20)",
    ]


def test_trl_reward_asks_what_relays_judge_asks() -> None:
    """The TRL side's async reward and relay's JudgeReward get the same verdict from the stand-in
    (which parses the fenced request and the rubric's criteria out of the messages), one request each."""
    from rewards.judge.config import JudgeConfig
    from rewards.judge.llm_judge import JudgeReward
    from rewards.stand_in.judge_server import JudgeServer, ServerSettings
    from scripts.bench.vs_trl_runner import make_judge_reward

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
