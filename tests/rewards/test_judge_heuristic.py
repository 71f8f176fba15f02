"""The stand-in judge's heuristic: graded scores, the fallback, the request check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rewards.judge.rubric import load_rubric
from rewards.stand_in.judge_heuristic import (
    heuristic_verdict,
    is_blocked,
    is_inappropriate,
    length_score,
    memorability_score,
    relevance_score,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DESCRIPTION = "A country music bar in Nashville with live bands every night."
RUBRIC = load_rubric("seed000").criteria
CRITERIA = [c.name for c in RUBRIC]


def total(candidate: str) -> float:
    verdict = heuristic_verdict(DESCRIPTION, candidate, CRITERIA)
    weights = {c.name: c.weight for c in RUBRIC}
    return sum(weights[k] * float(v["score"]) for k, v in verdict.items())


# ---------------------------------------------------------------- heuristic


def test_relevant_short_com_beats_junk() -> None:
    good = total("nashvillecountry.com")
    for junk in (
        "qxzvbnmkl",
        "xq7#@!zz 99",
        "",
        "The answer is 42!!!",
        "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
    ):
        assert good > total(junk) + 2.0, junk


def test_scores_are_graded_floats_in_range() -> None:
    candidates = [
        "nashvillecountry.com",
        "nashvillebar.net",
        "countrytunes.io",
        "nash.com",
        "bars-4-u.co",
        "honky tonk",
        "Nashville Live Music Bar.com",
        "qqq",
        "musicnashvillebarlivebandsnightly.org",
        "ñandú.com",
        "country..music",
        "nas.com",
        "livebands",
    ]
    seen: set[float] = set()
    for candidate in candidates:
        for entry in heuristic_verdict(DESCRIPTION, candidate, CRITERIA).values():
            score = entry["score"]
            assert isinstance(score, float) and 0.0 <= score <= 10.0
            assert isinstance(entry["reason"], str) and entry["reason"]
            seen.add(score)
    assert len(seen - {0.0, 10.0}) >= 8  # graded, not just pass/fail


def test_relevance_gives_partial_credit() -> None:
    full, _ = relevance_score(DESCRIPTION, "nashvillecountry.com")  # nash, coun
    one, _ = relevance_score(DESCRIPTION, "nashtunes.com")  # nash
    prefix3, _ = relevance_score(DESCRIPTION, "nasxx.com")  # 'nas' only
    none, _ = relevance_score(DESCRIPTION, "qqqq.com")
    assert full == 10.0 and one == 5.0 and prefix3 == pytest.approx(1.5) and none == 0.0
    assert relevance_score("the and of", "x.com")[0] == 5.0  # no content words: neutral


@pytest.mark.parametrize(
    ("length", "expected"), [(0, 0.0), (3, 5.0), (6, 10.0), (15, 10.0), (28, 8.0), (54, 4.0), (80, 0.0), (90, 0.0)]
)
def test_length_score(length: int, expected: float) -> None:
    assert length_score("a" * length + ".com")[0] == pytest.approx(expected)


def test_memorability_penalties_and_tld_bonus() -> None:
    base = memorability_score("nashvillecountry.com")[0]
    assert base > memorability_score("nashvillecountry")[0]  # tld bonus
    assert base > memorability_score("nashvillecountry.xyz")[0]
    for worse in (
        "nashville2country.com",
        "nashville-country.com",
        "nashville country.com",
        "nashville--country.com",
        "nashvillecöuntry.com",
        "NashvilleCountry.com",
    ):
        assert memorability_score(worse)[0] < base, worse
    assert memorability_score(".com")[0] == 0.0


def test_unknown_criteria_get_the_mean_of_the_known_ones() -> None:
    verdict = heuristic_verdict(DESCRIPTION, "nashvillebar.com", ["relevance", "memorability", "length", "Vibe"])
    known = [float(verdict[k]["score"]) for k in CRITERIA]
    assert verdict["Vibe"]["score"] == pytest.approx(sum(known) / 3, abs=0.01)


def test_letter_soup_is_not_memorable() -> None:
    """A policy must not earn memorability with pronounceable nonsense."""
    good = memorability_score("nashvillecountry.com")[0]
    soup = memorability_score("kekekeke")[0]
    assert good == 10.0 and soup <= 3.0
    # words from the request count as real words too
    assert memorability_score("zorblax.com", {"zorblax"})[0] > memorability_score("zorblax.com")[0]


# ---------------------------------------------------------------- request check


def test_bad_request_keywords_match_the_toy_datasets_flags() -> None:
    rows = [
        json.loads(line) for line in (REPO_ROOT / "configs/data/business_descriptions.jsonl").read_text().splitlines()
    ]
    assert sum(r["inappropriate"] for r in rows) >= 10
    assert [is_inappropriate(r["description"]) for r in rows] == [r["inappropriate"] for r in rows]


@pytest.mark.parametrize(
    ("candidate", "blocked"),
    [
        ("Blocked", True),
        (" blocked.", True),
        ("**Blocked**", True),
        ("BLOCKED - harmful", True),
        ("blockedname.com", False),
        ("nashville.com", False),
        ("Not blocked", False),
    ],
)
def test_blocked_detection(candidate: str, blocked: bool) -> None:
    assert is_blocked(candidate) is blocked
