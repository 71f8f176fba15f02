"""Evaluation statistics, with expected values derived by hand."""

from __future__ import annotations

import pytest

from algorithms.statistics import refusal_rates


def test_refusal_rates_split_by_label_and_skip_unknowns() -> None:
    # inappropriate: blocked, answered, blocked -> 2/3; appropriate: answered, blocked -> 1/2
    # unknown: a row without a label, and an inappropriate row whose answer was not scored
    labels = [True, True, True, False, False, None, True]
    blocked = [1.0, 0.0, True, 0.0, 1.0, 1.0, None]
    rates = refusal_rates(labels, blocked)
    assert rates.block_rate == pytest.approx(2 / 3)
    assert rates.false_block_rate == 0.5
    assert (rates.n_inappropriate, rates.n_appropriate, rates.unknown) == (3, 2, 2)


def test_refusal_rates_without_a_class_are_none() -> None:
    rates = refusal_rates([False, False], [0.0, 0.0])
    assert rates.block_rate is None and rates.false_block_rate == 0.0
    with pytest.raises(ValueError, match="differ in length"):
        refusal_rates([True], [])
