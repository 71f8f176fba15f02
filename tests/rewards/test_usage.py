"""Tokens and dollars per request: the cost arithmetic, ``usage`` parsing (with and without it), the
prices each endpoint gets from the config, and the judge client's traces over two priced endpoints."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from types import SimpleNamespace

import pytest
from judge_fakes import SECRET, ScriptedTransport, verdict_json
from pydantic import SecretStr

from rewards.client.chat_client import JudgeClient
from rewards.client.clock import VirtualClock
from rewards.client.config import CircuitBreakerConfig, EndpointConfig, RetryConfig
from rewards.client.endpoint import Endpoint
from rewards.client.limits import Limits
from rewards.client.transport import Reply, TransportError, completion_content
from rewards.client.usage import Prices, RequestUsage, request_cost, request_usage
from rewards.config import EngineConfig
from rewards.judge.config import JudgeConfig
from rewards.judge.endpoints import resolve_endpoints
from rewards.judge.llm_judge import JudgeReward
from rewards.metrics import JudgeTrace

ASK = [{"role": "user", "content": "x" * 40}]  # 40 characters: 10 estimated prompt tokens


def run(clock: VirtualClock, coro):
    async def main():
        return await clock.run(coro)

    return asyncio.run(main())


# ---------------------------------------------------------------- arithmetic


def test_request_cost_by_hand() -> None:
    # 1500 prompt tokens at $2 per million = $0.003; 300 completion tokens at $10 per million = $0.003
    assert request_cost(1500, 300, Prices(2.0, 10.0)) == pytest.approx(0.006, abs=1e-15)
    assert request_cost(1_000_000, 0, Prices(0.6, 99.0)) == pytest.approx(0.6)
    assert request_cost(0, 2_000_000, Prices(99.0, 0.25)) == pytest.approx(0.5)
    assert request_cost(123, 456, Prices()) == 0.0
    assert not Prices().priced and Prices(0, 0.1).priced
    with pytest.raises(ValueError, match=">= 0"):
        Prices(-1.0, 0.0)


def test_reported_usage_is_taken_as_it_is() -> None:
    assert request_usage(120, 30, 150, ASK, "reply") == RequestUsage(120, 30, estimated=False)


def test_usage_left_out_is_estimated_and_marked() -> None:
    # no usage: prompt 40 chars / 4 = 10 tokens; reply 9 chars -> ceil(9 / 4) = 3 tokens
    assert request_usage(None, None, None, ASK, "123456789") == RequestUsage(10, 3, estimated=True)
    # only total_tokens: completion = total - estimated prompt = 25 - 10
    assert request_usage(None, None, 25, ASK, "ignored") == RequestUsage(10, 15, estimated=True)
    # a total below the prompt estimate cannot be split: the reply's text is estimated instead
    assert request_usage(None, None, 4, ASK, "abcd") == RequestUsage(10, 1, estimated=True)
    # one of the two reported: the other estimated
    assert request_usage(7, None, None, ASK, "abcdefgh") == RequestUsage(7, 2, estimated=True)
    assert request_usage(None, 5, None, ASK, "") == RequestUsage(10, 5, estimated=True)


# ---------------------------------------------------------------- transport parsing


def _body(usage: object) -> dict[str, object]:
    body: dict[str, object] = {"choices": [{"message": {"content": "ok"}}]}
    if usage is not None:
        body["usage"] = usage
    return body


def test_completion_content_reads_usage_and_survives_its_absence() -> None:
    full = completion_content(_body({"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}))
    assert (full.content, full.prompt_tokens, full.completion_tokens, full.total_tokens) == ("ok", 11, 4, 15)
    assert completion_content(_body(None)) == Reply("ok", None, None, None)
    assert completion_content(_body({})) == Reply("ok", None, None, None)
    # odd usage never fails the reply: what is not a count is left out
    assert completion_content(_body("lots")) == Reply("ok", None, None, None)
    assert completion_content(_body({"prompt_tokens": "3", "completion_tokens": True, "total_tokens": -1})) == Reply(
        "ok"
    )
    sdk = SimpleNamespace(
        choices=[SimpleNamespace(message=SimpleNamespace(content="hi"))],
        usage=SimpleNamespace(prompt_tokens=5, completion_tokens=2, total_tokens=7),
    )
    assert completion_content(sdk) == Reply("hi", 7, 5, 2)
    assert completion_content(SimpleNamespace(choices=sdk.choices, usage=None)) == Reply("hi")


# ---------------------------------------------------------------- prices from the config


def test_each_endpoint_gets_its_own_prices_else_the_services() -> None:
    judge = JudgeConfig(
        endpoints=[
            EndpointConfig(base_url="http://a.test/v1", price_per_million_input_tokens=1.0),
            EndpointConfig(
                base_url="http://b.test/v1", price_per_million_input_tokens=0.0, price_per_million_output_tokens=8.0
            ),
        ],
        price_per_million_input_tokens=3.0,
        price_per_million_output_tokens=4.0,
    )
    a, b = resolve_endpoints(judge, {judge.api_key_env: SecretStr(SECRET)})
    assert a.prices == Prices(1.0, 4.0)  # its own input price, the judge's output price
    assert b.prices == Prices(0.0, 8.0)  # 0 is a price (free), not "unset"
    engine = EngineConfig(
        base_url="http://e.test/v1", model="m", api_key_env="E_KEY", price_per_million_output_tokens=2.5
    )
    (e,) = resolve_endpoints(engine, {engine.api_key_env: SecretStr(SECRET)}, "reward.engines.e")
    assert e.prices == Prices(0.0, 2.5)


# ---------------------------------------------------------------- the client's traces


def _endpoint(index: int, prices: Prices) -> Endpoint:
    return Endpoint(index, f"http://{index}.test/v1", "m", "KEY", Limits(max_concurrency=1), SecretStr(SECRET), prices)


CHEAP, DEAR = Prices(1.0, 2.0), Prices(10.0, 20.0)


def _client(handler, retry: RetryConfig | None = None) -> tuple[JudgeClient, ScriptedTransport, VirtualClock]:
    clock = VirtualClock()
    transport = ScriptedTransport(clock, handler)
    client = JudgeClient(
        [_endpoint(0, CHEAP), _endpoint(1, DEAR)],
        5.0,
        retry or RetryConfig(initial_backoff_s=0.01),
        CircuitBreakerConfig(),
        transport,
        clock,
        random.Random(0),
    )
    return client, transport, clock


def _reply(endpoint: Endpoint, body: Mapping[str, object], n: int) -> Reply:
    return Reply("verdict", 1100, prompt_tokens=1000, completion_tokens=100)


def test_each_request_is_priced_at_the_endpoint_that_served_it() -> None:
    client, transport, clock = _client(_reply)
    traces = [JudgeTrace(), JudgeTrace()]

    async def both():  # one slot per endpoint: the two requests go one to each
        return await asyncio.gather(*(client.complete({"messages": ASK}, 50, t) for t in traces))

    run(clock, both())
    assert sorted(c.endpoint[0] for c in transport.calls) == ["0", "1"]
    # cheap: 1000 / 1e6 * $1 + 100 / 1e6 * $2 = $0.0012; dear: 1000 / 1e6 * $10 + 100 / 1e6 * $20 = $0.012
    assert sorted(t.cost_usd for t in traces) == [pytest.approx(0.0012), pytest.approx(0.012)]
    assert all((t.input_tokens, t.output_tokens, t.usage_estimated) == (1000, 100, 0) for t in traces)
    assert client.spent.cost_usd == pytest.approx(0.0132)
    assert (client.spent.input_tokens, client.spent.output_tokens) == (2000, 200)


def test_a_failed_request_costs_nothing_and_a_reply_without_usage_is_estimated() -> None:
    def handler(endpoint: Endpoint, body: Mapping[str, object], n: int) -> Reply | Exception:
        if n == 0:
            return TransportError("judge_http_503", "HTTP 503")
        return Reply("12345678")  # no usage at all

    client, _, clock = _client(handler)
    trace = JudgeTrace()
    run(clock, client.complete({"messages": ASK}, 50, trace))
    assert trace.requests == 2 and trace.usage_estimated == 1
    # the retry went to the cheap endpoint: 10 estimated prompt tokens at $1/M + 2 output tokens at $2/M
    assert (trace.input_tokens, trace.output_tokens) == (10, 2)
    assert trace.cost_usd == pytest.approx(10 / 1e6 * 1.0 + 2 / 1e6 * 2.0)


def test_a_judge_reply_asked_again_is_paid_for_too() -> None:
    """A malformed verdict is a reply the endpoint charged for: its tokens count as well as the retry's."""
    clock = VirtualClock()
    judge = JudgeConfig(
        base_url="http://judge.test/v1",
        malformed_retries=1,
        rule_gate=False,
        cache_size=0,
        price_per_million_input_tokens=1.0,
        price_per_million_output_tokens=1.0,
    )
    verdict = verdict_json(judge.rubric_spec())

    def handler(endpoint, body, n):
        return Reply("not a verdict" if n == 0 else verdict, None, prompt_tokens=500, completion_tokens=500)

    transport = ScriptedTransport(clock, handler)
    reward = JudgeReward(judge, SecretStr(SECRET), transport=transport, clock=clock, rng=random.Random(0))
    score = run(clock, reward.score("a request", "a completion"))
    assert score.trace.requests == 2
    assert (score.trace.input_tokens, score.trace.output_tokens) == (1000, 1000)
    assert score.trace.cost_usd == pytest.approx(2000 / 1e6)
