"""The judge-bias benchmark measures what the stand-in judge's known biases do under each control."""

from __future__ import annotations

import argparse

from rewards.judge import group as group_module
from scripts.bench.judge.bias import bias_share, length_rows, make_groups, position_rows, position_share


def test_position_share_and_bias_share_by_hand() -> None:
    # two groups of two (means 2 and 2): residuals (+1, -1) and (-2, +2); position 0 holds +1 and +2
    rewards = [[3.0, 1.0], [0.0, 4.0]]
    positions = [[0, 1], [1, 0]]
    # SS_total = 1 + 1 + 4 + 4 = 10; mean residual at 0: 1.5, at 1: -1.5; SS_position = 2 * 2.25 * 2 = 9
    assert position_share(rewards, positions) == 9 / 10
    # bias r - r0 = (1, 0) and (0, 0): residuals (0.5, -0.5), (0, 0): SS 0.5 of 10
    assert bias_share(rewards, [[2.0, 1.0], [0.0, 4.0]]) == 0.5 / 10


def test_the_controls_take_the_position_bias_out_of_the_reward() -> None:
    args = argparse.Namespace(groups=24, group_size=4, position_bias=3.0, length_bias=3.0, seed=0)
    groups = make_groups(args.groups, args.group_size, args.seed)
    assert all(len(g.candidates) == 4 for g in groups)
    rows = {name: (share, bias, corr) for name, share, bias, corr in position_rows(args, groups)}
    assert group_module.shown_order.__name__ == "shown_order"  # the fixed-order setting put the shuffle back
    fixed, shuffled, two = rows["fixed order"], rows["shuffled"], rows["shuffled, two passes"]
    assert fixed[2] < -0.3  # shown shortest first, the bias goes to the short completions
    assert abs(shuffled[2]) < abs(fixed[2])  # shuffled: the bias is tied to no property of the completion
    assert two[0] < shuffled[0] and two[1] < shuffled[1]  # the reversed pass cancels most of it
    (_, plain), (_, biased) = length_rows(args, groups)
    assert biased > plain
