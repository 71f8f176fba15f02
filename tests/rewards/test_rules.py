"""Rule-based reward terms."""

from __future__ import annotations

import pytest

from rewards.rules import RULE_TERMS, completion_length_penalty, domain_format


@pytest.mark.parametrize(
    "completion",
    ["nashvillecountry.com", "  Nashville-Country.COM \n", "a1.io", "best-bbq-2024.net", "x.dev", "shop.app"],
)
def test_valid_domains_score_one(completion: str) -> None:
    assert domain_format("any prompt", completion) == 1.0


@pytest.mark.parametrize(
    "completion",
    [
        "",
        "Blocked",
        "nashvillecountry",
        "nashville country.com",
        "-nash.com",
        "nash-.com",
        "nash--ville.com",
        "www.nashville.com",
        "nashville.xyz",
        "nashville.com.",
        "café.com",
        "nashvillecountry.com is my answer",
        "nashville_country.com",
    ],
)
def test_invalid_domains_score_zero(completion: str) -> None:
    assert domain_format("any prompt", completion) == 0.0


@pytest.mark.parametrize(
    ("length", "expected"),
    [(0, 0.0), (40, 0.0), (120, -0.5), (200, -1.0), (1000, -1.0)],
)
def test_completion_length_penalty(length: int, expected: float) -> None:
    assert completion_length_penalty("p", "  " + "x" * length + "\n") == pytest.approx(expected)


def test_registry_names() -> None:
    assert RULE_TERMS == {
        "domain_format": domain_format,
        "completion_length_penalty": completion_length_penalty,
    }
