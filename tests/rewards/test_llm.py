"""LLM calls from reward terms: ChatEngine, LLMClient and RewardContext on scripted transports, in virtual time."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import threading
from collections.abc import Mapping

import pytest
from judge_fakes import ScriptedTransport
from pydantic import BaseModel, SecretStr

from rewards.client.clock import VirtualClock
from rewards.client.config import RetryConfig
from rewards.client.endpoint import Endpoint
from rewards.client.transport import Reply, TransportError
from rewards.config import EngineConfig
from rewards.context import RewardContext, TermUsage
from rewards.errors import LLMCallError, RewardError
from rewards.llm import ChatEngine, EngineUsage, LLMClient, describe_cause

SECRET = "sk-engine-test-NEVER-PRINT-31"
ASK = [{"role": "user", "content": "What is 2 + 2?"}]


class Answer(BaseModel):
    value: int


def engine(handler, latency_s: float = 0.1, **overrides: object) -> tuple[ChatEngine, ScriptedTransport, VirtualClock]:
    clock = VirtualClock()
    config = EngineConfig(
        base_url="http://engine.test/v1",
        model="m",
        api_key_env="ENGINE_KEY",
        retry=RetryConfig(initial_backoff_s=0.01, max_backoff_s=0.05),
        **overrides,
    )
    transport = ScriptedTransport(clock, handler, latency_s)
    eng = ChatEngine(
        "e", config, {"ENGINE_KEY": SecretStr(SECRET)}, transport=transport, clock=clock, rng=random.Random(0)
    )
    return eng, transport, clock


def run(clock: VirtualClock, coro):
    async def main():
        return await clock.run(coro)

    return asyncio.run(main())


def counted(usage: EngineUsage) -> EngineUsage:
    """``usage`` without its tokens and dollars (those are tested in test_usage.py)."""
    return dataclasses.replace(usage, input_tokens=0, output_tokens=0, cost_usd=0.0, usage_estimated=0)


def client(eng: ChatEngine, usage: EngineUsage | None = None) -> LLMClient:
    return LLMClient(eng, usage or EngineUsage(), None)


def replies(*contents: str | Exception):
    """A handler answering request n with ``contents[min(n, last)]``."""

    def handler(endpoint: Endpoint, body: Mapping[str, object], n: int):
        item = contents[min(n, len(contents) - 1)]
        return item if isinstance(item, Exception) else Reply(item, 10)

    return handler


# ---------------------------------------------------------------- chat


def test_chat_sends_the_engine_defaults_and_returns_the_content() -> None:
    eng, transport, clock = engine(replies("four"), temperature=0.3, max_tokens=64)
    usage = EngineUsage()
    assert run(clock, client(eng, usage).chat(ASK)) == "four"
    (call,) = transport.calls
    assert call.body == {"messages": ASK, "max_tokens": 64, "temperature": 0.3}
    assert "response_format" not in call.body
    assert counted(usage) == EngineUsage(calls=1, requests=1)
    run(clock, client(eng).chat(ASK, max_tokens=5, temperature=0))
    assert transport.calls[-1].body["max_tokens"] == 5 and transport.calls[-1].body["temperature"] == 0.0


def test_the_reply_cache_keys_on_messages_and_parameters() -> None:
    eng, transport, clock = engine(replies("four"))
    usage = EngineUsage()
    llm = client(eng, usage)

    async def calls():
        await llm.chat(ASK)
        await llm.chat(ASK)  # cached
        await llm.chat(ASK, temperature=0.5)  # another parameter: sent
        await llm.chat([{"role": "user", "content": "And 3 + 3?"}])  # other messages: sent
        await llm.chat(ASK, cache=False)  # sent, whatever the cache holds

    run(clock, calls())
    assert len(transport.calls) == 4
    assert counted(usage) == EngineUsage(calls=5, requests=4, cache_hits=1)


def test_identical_calls_in_flight_share_one_request() -> None:
    eng, transport, clock = engine(replies("four"), cache_size=0)  # no cache: sharing still applies
    usages = [EngineUsage() for _ in range(3)]

    async def calls():
        return await asyncio.gather(*(client(eng, u).chat(ASK) for u in usages))

    assert run(clock, calls()) == ["four"] * 3
    assert len(transport.calls) == 1
    assert [u.requests for u in usages] == [1, 0, 0] and [u.cache_hits for u in usages] == [0, 1, 1]
    run(clock, client(eng).chat(ASK))  # nothing cached: sent again
    assert len(transport.calls) == 2


def test_an_empty_reply_is_asked_again_then_fails_and_is_never_cached() -> None:
    eng, transport, clock = engine(replies("", "  ", "four"), malformed_retries=1)
    usage = EngineUsage()
    with pytest.raises(LLMCallError) as info:
        run(clock, client(eng, usage).chat(ASK))
    assert info.value.cause == "engine e: empty reply after 2 attempts"
    assert counted(usage) == EngineUsage(calls=1, requests=2, failures=1, retries=1)
    assert run(clock, client(eng).chat(ASK)) == "four"  # the failure was not cached
    assert len(transport.calls) == 3


@pytest.mark.parametrize(("status", "attempts"), [(503, 4), (429, 4), (400, 1)])
def test_http_failures_are_retried_as_the_judge_does(status: int, attempts: int) -> None:
    eng, transport, clock = engine(replies(TransportError(f"judge_http_{status}", f"HTTP {status}")))
    with pytest.raises(LLMCallError) as info:
        run(clock, client(eng).chat(ASK))
    plural = "s" if attempts > 1 else ""
    assert info.value.cause == f"engine e: HTTP {status} after {attempts} attempt{plural}"
    assert len(transport.calls) == attempts
    assert eng.totals.failures == 1 and eng.totals.requests == attempts


def test_a_transient_failure_then_success() -> None:
    eng, transport, clock = engine(replies(TransportError("judge_http_503", "HTTP 503"), "four"))
    usage = EngineUsage()
    assert run(clock, client(eng, usage).chat(ASK)) == "four"
    assert counted(usage) == EngineUsage(calls=1, requests=2, retries=1)


def test_concurrency_limit_holds_across_clients() -> None:
    eng, transport, clock = engine(replies("four"), max_concurrency=3)

    async def calls():
        return await asyncio.gather(*(client(eng).chat([{"role": "user", "content": f"q{i}"}]) for i in range(12)))

    run(clock, calls())
    assert transport.peak == {eng.client.endpoints[0].key: 3}
    assert clock.now() == pytest.approx(4 * 0.1)  # 12 calls, 3 at a time, 0.1 s each (virtual time)


# ---------------------------------------------------------------- chat_json


def test_chat_json_asks_for_the_schema_and_validates() -> None:
    eng, transport, clock = engine(replies('{"value": 4}'))
    answer = run(clock, client(eng).chat_json(ASK, Answer))
    assert answer == Answer(value=4)
    fmt = transport.calls[0].body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "Answer"
    assert fmt["json_schema"]["schema"] == Answer.model_json_schema()


@pytest.mark.parametrize(("kind", "expected"), [("json_object", {"type": "json_object"}), ("none", None)])
def test_chat_json_response_formats(kind: str, expected: object) -> None:
    eng, transport, clock = engine(replies('Sure! ```json\n{"value": 4}\n```'), response_format=kind)
    assert run(clock, client(eng).chat_json(ASK, Answer)) == Answer(value=4)
    assert transport.calls[0].body.get("response_format") == expected


@pytest.mark.parametrize(
    ("bad", "cause"),
    [
        ("no json here", "malformed reply"),
        ('{"value": "four"}', "reply does not match Answer"),
        ("", "empty reply"),
    ],
)
def test_chat_json_bad_replies_are_asked_again_then_fail(bad: str, cause: str) -> None:
    eng, transport, clock = engine(replies(bad), malformed_retries=2)
    with pytest.raises(LLMCallError) as info:
        run(clock, client(eng).chat_json(ASK, Answer))
    assert info.value.cause == f"engine e: {cause} after 3 attempts"
    assert "\n" not in info.value.cause
    eng2, transport2, clock2 = engine(replies(bad, '{"value": 4}'), malformed_retries=1)
    assert run(clock2, client(eng2).chat_json(ASK, Answer)) == Answer(value=4)
    assert len(transport2.calls) == 2


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda c: c.chat([]), "messages must be a non-empty list"),
        (lambda c: c.chat([{"role": "robot", "content": "x"}]), "messages must be a non-empty list"),
        (lambda c: c.chat([{"role": "user", "content": 3}]), "messages must be a non-empty list"),
        (lambda c: c.chat(ASK, max_tokens=0), "max_tokens must be a positive integer"),
        (lambda c: c.chat(ASK, temperature=-1), "temperature must be a number >= 0"),
        (lambda c: c.chat_json(ASK, dict), "chat_json needs a pydantic BaseModel class"),
    ],
)
def test_bad_arguments_are_one_line_errors(call, fragment: str) -> None:
    eng, transport, clock = engine(replies("x"))
    with pytest.raises(LLMCallError) as info:
        run(clock, call(client(eng)))
    assert info.value.cause.startswith("engine e: ") and fragment in info.value.cause
    assert transport.calls == []


def test_describe_cause() -> None:
    assert describe_cause("judge_http_503") == "HTTP 503"
    assert describe_cause("judge_timeout") == "timeout"
    assert describe_cause("judge_circuit_open") == "every endpoint's circuit is open"
    assert describe_cause("llm_invalid:Answer") == "reply does not match Answer"


# ---------------------------------------------------------------- RewardContext


def test_context_hands_out_the_engines_and_counts_per_engine() -> None:
    eng, transport, clock = engine(replies("four"))
    usage = TermUsage()
    ctx = RewardContext({"query": "q"}, {"e": eng}, usage)
    assert ctx.row == {"query": "q"}
    run(clock, ctx.llm("e").chat(ASK))
    run(clock, ctx.llm("e").chat(ASK))
    assert {k: counted(u) for k, u in usage.engines.items()} == {
        "e": EngineUsage(calls=2, requests=1, cache_hits=1)
    } and usage.llm_calls == 1
    with pytest.raises(RewardError) as info:
        ctx.llm("geo")
    assert info.value.cause == "ctx.llm('geo'): unknown engine; reward.engines has ['e'] (no judge is configured)"
    with pytest.raises(RewardError, match=r"ctx.llm\('judge'\): unknown engine"):
        ctx.llm()


def test_built_context_row_is_read_only() -> None:
    ctx = RewardContext.build({"a": 1}, {}, TermUsage())
    with pytest.raises(TypeError):
        ctx.row["a"] = 2  # type: ignore[index]


def test_sync_calls_from_a_worker_thread() -> None:
    eng, transport, _ = engine(replies('{"value": 4}'), latency_s=0.0)
    results: list[object] = []

    async def main():
        llm = LLMClient(eng, EngineUsage(), asyncio.get_running_loop())
        with pytest.raises(LLMCallError, match="only in a sync term running in a worker thread"):
            llm.chat_sync(ASK)  # on the loop itself it would deadlock
        thread = threading.Thread(target=lambda: results.append(llm.chat_json_sync(ASK, Answer)))
        thread.start()
        while thread.is_alive():
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert results == [Answer(value=4)]


def test_the_key_never_appears_in_errors_or_reprs() -> None:
    eng, _, clock = engine(replies(TransportError("judge_http_401", "HTTP 401")))
    with pytest.raises(LLMCallError) as info:
        run(clock, client(eng).chat(ASK))
    assert SECRET not in str(info.value) and SECRET not in repr(eng) and SECRET not in json.dumps(vars(eng.totals))
