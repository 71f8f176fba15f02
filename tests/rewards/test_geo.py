"""Seed 001's GEO reward: the visibility metrics by hand, and the term on a scripted engine."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Mapping

import pytest
from judge_fakes import ScriptedTransport
from pydantic import SecretStr

from rewards.client.clock import VirtualClock
from rewards.client.endpoint import Endpoint
from rewards.client.transport import Reply
from rewards.config import EngineConfig
from rewards.context import RewardContext, TermUsage
from rewards.errors import RewardError
from rewards.llm import ChatEngine
from rewards.recipes.geo import (
    Visibility,
    citations,
    engine_messages,
    query_terms,
    split_sentences,
    visibility,
    visibility_gain,
    words,
)
from rewards.stand_in.geo_engine import respond

# ---------------------------------------------------------------- pure metrics


def test_sentences_citations_and_words() -> None:
    answer = "Alpha beta gamma [1]. Delta epsilon! [2] Zeta [1][2].\nEta? [0] [3] [1, 2]"
    assert split_sentences(answer) == [
        "Alpha beta gamma [1].",
        "Delta epsilon! [2]",
        "Zeta [1][2].",
        "Eta? [0] [3] [1, 2]",
    ]
    assert [citations(s, 2) for s in split_sentences(answer)] == [{1}, {2}, {1, 2}, {1, 2}]
    assert [words(s) for s in split_sentences(answer)] == [3, 2, 1, 1]
    assert split_sentences("  ") == []
    assert split_sentences("coffeeshop.com is here [1].") == ["coffeeshop.com is here [1]."]


def test_visibility_by_hand() -> None:
    answer = "Alpha beta gamma [1]. Delta epsilon [2]. Zeta [1][2]."
    w1, w2 = math.exp(-1 / 3), math.exp(-2 / 3)  # sentence weights exp(-k/N), N = 3
    # source 1: all of sentence 0 (3 words), half of sentence 2 (1 word shared with source 2)
    expected = Visibility(
        word=(3 + 1 / 2) / 6, pos=(1 + w2 / 2) / (1 + w1 + w2), wordpos=(3 + w2 / 2) / (3 + 2 * w1 + w2)
    )
    got = visibility(answer, 1, 2)
    assert got.word == pytest.approx(expected.word) and got.pos == pytest.approx(expected.pos)
    assert got.wordpos == pytest.approx(expected.wordpos)
    assert got.score() == pytest.approx(0.6 * expected.wordpos + 0.2 * expected.pos + 0.2 * expected.word)
    assert got.score((1, 0, 0)) == pytest.approx(expected.wordpos)
    two = visibility(answer, 2, 2)
    assert got.word + two.word == pytest.approx(1.0) and got.pos + two.pos == pytest.approx(1.0)
    assert visibility(answer, 3, 2) == Visibility(0.0, 0.0, 0.0)  # cited nowhere (out of range)
    assert visibility("", 1, 2) == Visibility(0.0, 0.0, 0.0)
    assert visibility("No citation at all.", 1, 2) == Visibility(0.0, 0.0, 0.0)


def test_engine_messages_neutralise_fake_lines_and_citations() -> None:
    messages = engine_messages("  best  coffee\nin town ", ["One [2] two.", "Line\n[1] fake"])
    assert messages[0]["role"] == "system" and "[2]" in messages[0]["content"]
    assert messages[1]["content"] == "Query: best coffee in town\n\nSources:\n[1] One (2) two.\n[2] Line (1) fake"


def test_query_terms() -> None:
    assert query_terms("The best affordable Bakery in Nashville, best bakery") == ["affordable", "bakery", "nashville"]


# ---------------------------------------------------------------- the term on a scripted engine

ROW = {
    "query": "affordable bakery in nashville",
    "sources": ["Oakline is an affordable bakery in nashville.", "Riverside sells bread."],
    "target": 1,
}


def geo_engine() -> tuple[ChatEngine, ScriptedTransport, VirtualClock]:
    """A ChatEngine whose transport answers with the stand-in engine's rule, in virtual time."""
    clock = VirtualClock()

    def handler(endpoint: Endpoint, body: Mapping[str, object], n: int) -> Reply:
        return Reply(respond(body["messages"], "m"), 10)  # type: ignore[arg-type]

    transport = ScriptedTransport(clock, handler, 0.1)
    config = EngineConfig(base_url="http://geo.test/v1", model="m", api_key_env="GEO_KEY")
    return (
        ChatEngine("geo", config, {"GEO_KEY": SecretStr("k")}, transport=transport, clock=clock, rng=random.Random(0)),
        transport,
        clock,
    )


def gains(row: Mapping[str, object], completions: list[str], **options: object) -> tuple[list[float], int]:
    engine, transport, clock = geo_engine()

    async def main():
        async def one(text: str) -> float:
            return await visibility_gain("p", text, RewardContext.build(row, {"geo": engine}, TermUsage()), **options)

        return await clock.run(asyncio.gather(*(one(c) for c in completions)))

    return asyncio.run(main()), len(transport.calls)


def test_gain_by_hand() -> None:
    (gain,), _ = gains(ROW, ["<think>say the query</think>Affordable bakery in nashville."])
    # before: source 2 names no query term, so it is not cited: score 0.
    # after: "Affordable bakery in nashville [2]." (4 words) first, then source 1's sentence
    # "Oakline is an affordable bakery in nashville [1]." (7 words); weights 1 and exp(-1/2).
    w1 = math.exp(-1 / 2)
    expected = 0.6 * 4 / (4 + 7 * w1) + 0.2 * 1 / (1 + w1) + 0.2 * 4 / 11
    assert gain == pytest.approx(expected)
    (zero,), _ = gains(ROW, ["Riverside sells bread."])
    assert zero == 0.0


def test_the_original_is_asked_once_per_row() -> None:
    completions = ["Affordable bakery.", "Nashville bakery.", "Affordable bakery.", "bread", "bread", "x", "x", "x"]
    values, requests = gains(ROW, completions, weights=[1, 0, 0])
    assert requests == 1 + 4  # the original's answer once, then one per distinct rewrite
    assert values[0] == values[2] and values[3] == values[4] == 0.0


def test_bad_rows_and_options_fail_the_term() -> None:
    for row, fragment in [
        ({**ROW, "query": ""}, "no 'query'"),
        ({**ROW, "sources": "x"}, "'sources'"),
        ({**ROW, "target": 2}, "'target' 2"),
        ({**ROW, "target": True}, "'target' True"),
    ]:
        with pytest.raises(RewardError, match=fragment):
            gains(row, ["x"])
    with pytest.raises(RewardError, match="weights must be three numbers"):
        gains(ROW, ["x"], weights=[1, 2])
    with pytest.raises(RewardError, match=r"ctx.llm\('other'\): unknown engine"):
        gains(ROW, ["x"], engine="other")
