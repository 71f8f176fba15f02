"""The refiner terms inside RewardComposer, on the real engine client (scripted transport, virtual
time) answered by the stand-in verifier's rule: totals, and failures left unscored with their cause."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping

import pytest
from judge_fakes import ScriptedTransport
from pydantic import SecretStr

from rewards.client.clock import VirtualClock
from rewards.client.endpoint import Endpoint
from rewards.client.transport import Reply, TransportError
from rewards.composer import RewardComposer, ScoredParts
from rewards.config import EngineConfig, RewardConfig, RewardTermConfig
from rewards.stand_in.refiner_verifier import MODEL, respond

VERIFY, CITE = "rewards.recipes.refiner:verification", "rewards.recipes.refiner:citations"
ROW = {
    "question": "What powers the city buses in Austin?",
    "facts": ["The city buses in Austin run on electric motors."],
    "key_terms": ["electric"],
    "false_claims": ["diesel", "coffee"],
    "allowed_papers": ["electric2018", "transit2021"],
}
Handler = Callable[[Endpoint, Mapping[str, object], int], "Reply | Exception"]


def verifier(endpoint: Endpoint, body: Mapping[str, object], n: int) -> Reply:
    return Reply(respond(body["messages"], MODEL), 10)  # type: ignore[arg-type]


def _score(
    completion: str, handler: Handler = verifier, row: Mapping[str, object] = ROW, malformed_retries: int = 1
) -> tuple[ScoredParts, ScriptedTransport]:
    clock = VirtualClock()
    transport = ScriptedTransport(clock, handler, 0.1)
    engine = EngineConfig(
        base_url="http://verifier.test/v1", model=MODEL, api_key_env="V_KEY", malformed_retries=malformed_retries
    )
    reward = RewardConfig(
        terms=[
            RewardTermConfig(name=VERIFY, weight=10.0, options={"engine": "verifier"}),
            RewardTermConfig(name=CITE, weight=0.5),
        ],
        engines={"verifier": engine},
    )
    comp = RewardComposer(
        reward, None, {"V_KEY": SecretStr("k")}, transport=transport, clock=clock, rng=random.Random(0)
    )

    async def main() -> ScoredParts:
        try:
            return await clock.run(comp.score("prompt", completion, row))
        finally:
            await comp.aclose()

    return asyncio.run(main()), transport


@pytest.mark.parametrize(
    ("completion", "verified", "cited", "reward"),
    [
        ("<think>the draft says diesel</think>Final answer: electric [electric2018]", 1.0, 1.0, 10.5),
        ("electric motors [made1999]", 1.0, -1.0, 9.5),
        ("diesel [electric2018]", 0.0, 1.0, 0.5),
        ("electric or coffee", 0.0, 0.0, 0.0),  # a genuine verdict of 0, not a failure
    ],
)
def test_totals(completion: str, verified: float, cited: float, reward: float) -> None:
    parts, transport = _score(completion)
    assert parts.error is None and parts.terms == {VERIFY: verified, CITE: cited}
    assert parts.reward == pytest.approx(reward) and len(transport.calls) == 1
    assert transport.calls[0].body["response_format"]["type"] == "json_schema"  # type: ignore[index]


def test_a_failed_call_leaves_the_sample_unscored() -> None:
    parts, transport = _score("electric", handler=lambda e, b, n: TransportError("judge_http_503", "HTTP 503"))
    assert parts.reward is None and parts.error == "engine verifier: HTTP 503 after 4 attempts"
    assert parts.terms == {VERIFY: None, CITE: 0.0} and len(transport.calls) == 4


def test_a_malformed_verdict_leaves_the_sample_unscored() -> None:
    parts, _ = _score("electric", handler=lambda e, b, n: Reply('{"verified": "maybe"}', 5), malformed_retries=0)
    assert parts.reward is None and parts.error is not None and parts.error.startswith("engine verifier: ")
    assert parts.terms[VERIFY] is None


def test_a_row_without_facts_is_no_score_without_a_request() -> None:
    parts, transport = _score("electric", row={k: v for k, v in ROW.items() if k != "facts"})
    assert parts.reward is None and parts.error == "refiner_bad_row:facts" and transport.calls == []
