"""Circuit breaker per endpoint, and least-outstanding balancing over several endpoints."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest
from judge_fakes import SECRET, ScriptedTransport, verdict_json
from pydantic import SecretStr

from rewards.client.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from rewards.client.clock import VirtualClock
from rewards.client.config import CircuitBreakerConfig, EndpointConfig, RetryConfig
from rewards.client.transport import Reply, TransportError
from rewards.errors import JudgeError
from rewards.judge.config import JudgeConfig
from rewards.judge.llm_judge import JudgeReward

# ---------------------------------------------------------------- the state machine


def test_opens_after_n_consecutive_failures_only() -> None:
    clock = VirtualClock()
    breaker = CircuitBreaker("ep", failure_threshold=3, cooldown_s=10, clock=clock)
    for _ in range(2):
        breaker.record_failure("judge_timeout")
    breaker.record_success()  # resets the count
    breaker.record_failure("judge_timeout")
    breaker.record_neutral()  # neither counts nor resets
    breaker.record_failure("judge_timeout")
    assert breaker.state == CLOSED and breaker.available()
    breaker.record_failure("judge_http_503")
    assert breaker.state == OPEN and not breaker.available() and breaker.opened_count == 1
    assert breaker.seconds_until_available() == pytest.approx(10)


def test_half_open_lets_one_probe_through_and_closes_on_success() -> None:
    clock = VirtualClock()
    breaker = CircuitBreaker("ep", failure_threshold=1, cooldown_s=5, clock=clock)
    breaker.record_failure("judge_timeout")
    clock.advance(4.9)
    assert breaker.state == OPEN and breaker.seconds_until_available() == pytest.approx(0.1)
    clock.advance(0.1)
    assert breaker.state == HALF_OPEN and breaker.available()
    breaker.on_send()  # the probe
    assert not breaker.available() and breaker.seconds_until_available() is None
    with pytest.raises(RuntimeError):
        breaker.on_send()
    breaker.record_success()
    assert breaker.state == CLOSED and breaker.available()


def test_a_failed_probe_reopens_for_another_cooldown() -> None:
    clock = VirtualClock()
    breaker = CircuitBreaker("ep", failure_threshold=4, cooldown_s=5, clock=clock)
    for _ in range(4):
        breaker.record_failure("judge_connection_error")
    clock.advance(5)
    breaker.on_send()
    breaker.record_failure("judge_timeout")
    assert breaker.state == OPEN and breaker.opened_count == 2
    clock.advance(4)
    assert breaker.state == OPEN
    clock.advance(1)
    assert breaker.state == HALF_OPEN


def test_a_neutral_probe_outcome_frees_the_probe_slot() -> None:
    clock = VirtualClock()
    breaker = CircuitBreaker("ep", failure_threshold=1, cooldown_s=1, clock=clock)
    breaker.record_failure("judge_timeout")
    clock.advance(1)
    breaker.on_send()
    breaker.record_neutral()  # e.g. a 429 or a malformed reply
    assert breaker.state == HALF_OPEN and breaker.available()


# ---------------------------------------------------------------- through the client


def two_endpoint_judge(handler, latency_s: float = 0.1, **overrides):
    clock = VirtualClock()
    judge = JudgeConfig(
        endpoints=[
            EndpointConfig(base_url="http://a.test/v1"),
            EndpointConfig(base_url="http://b.test/v1", model="other-model"),
        ],
        rule_gate=False,
        cache_size=0,
        **overrides,
    )
    transport = ScriptedTransport(clock, handler(judge.rubric_spec()), latency_s)
    reward = JudgeReward(judge, SecretStr(SECRET), transport=transport, clock=clock, rng=random.Random(0))
    return reward, transport, clock


def run_all(judge, clock, n: int, sequential: bool = False):
    async def main():
        async def one(i):
            try:
                return await judge.score("A bakery", f"bake{i}.com")
            except JudgeError as err:
                return err

        if sequential:
            return [await one(i) for i in range(n)]
        return await asyncio.gather(*(one(i) for i in range(n)))

    async def driver():
        return await clock.run(main())

    return asyncio.run(driver())


def always_ok(rubric):
    return lambda endpoint, body, n: Reply(verdict_json(rubric), 50)


def test_least_outstanding_balancing_splits_evenly_and_breaks_ties_by_order() -> None:
    judge, transport, clock = two_endpoint_judge(always_ok)
    results = run_all(judge, clock, 20)
    assert all(not isinstance(r, JudgeError) for r in results)
    per_endpoint = [sum(c.endpoint.startswith(f"{i}|") for c in transport.calls) for i in (0, 1)]
    assert per_endpoint == [10, 10]
    judge, transport, clock = two_endpoint_judge(always_ok)
    run_all(judge, clock, 3, sequential=True)
    assert all(c.endpoint.startswith("0|") for c in transport.calls)  # ties: the first endpoint


def test_a_slow_endpoint_gets_fewer_requests() -> None:
    clock = VirtualClock()
    judge = JudgeConfig(
        endpoints=[EndpointConfig(base_url="http://slow.test/v1"), EndpointConfig(base_url="http://fast.test/v1")],
        max_concurrency=2,
        rule_gate=False,
        cache_size=0,
    )

    class TwoSpeeds(ScriptedTransport):
        async def send(self, endpoint, body, timeout_s):
            self.latency_s = 2.0 if endpoint.index == 0 else 0.2
            return await super().send(endpoint, body, timeout_s)

    transport = TwoSpeeds(clock, always_ok(judge.rubric_spec()), 0.1)
    reward = JudgeReward(judge, SecretStr(SECRET), transport=transport, clock=clock)
    run_all(reward, clock, 40)
    slow = sum(c.endpoint.startswith("0|") for c in transport.calls)
    assert slow < 40 / 4 and max(transport.peak.values()) <= 2


def test_failing_endpoint_is_cut_off_then_probed_after_the_cooldown(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)

    def handler(rubric):
        def reply(endpoint, body, n):
            if endpoint.index == 0:
                return TransportError("judge_http_503")
            return Reply(verdict_json(rubric), 50)

        return reply

    judge, transport, clock = two_endpoint_judge(
        handler,
        circuit_breaker=CircuitBreakerConfig(failure_threshold=3, cooldown_s=5.0),
        retry=RetryConfig(initial_backoff_s=0.01, max_attempts=4),
    )
    results = run_all(judge, clock, 60, sequential=True)  # ~0.1 s each: 6 s of virtual time
    assert all(not isinstance(r, JudgeError) for r in results)  # every sample scored, via b
    a_calls = [c.sent_at for c in transport.calls if c.endpoint.startswith("0|")]
    assert len(a_calls) == 4  # 3 failures open the circuit, one probe after the cooldown
    assert a_calls[3] - a_calls[2] >= 5.0
    assert judge.client.breakers[judge.client.endpoints[0].key].opened_count == 2
    opened = [r for r in caplog.records if "circuit opened" in r.getMessage()]
    assert len(opened) == 2 and "http://a.test/v1 (relay-heuristic-judge)" in opened[0].getMessage()
    assert SECRET not in caplog.text


def test_all_circuits_open_waits_for_the_cooldown_then_probes() -> None:
    def handler(rubric):
        return lambda e, b, n: TransportError("judge_http_503") if n < 2 else Reply(verdict_json(rubric), 50)

    clock = VirtualClock()
    judge = JudgeConfig(
        base_url="http://one.test/v1",
        rule_gate=False,
        circuit_breaker=CircuitBreakerConfig(failure_threshold=2, cooldown_s=5.0),
        retry=RetryConfig(initial_backoff_s=0.1, jitter=0, deadline_s=100),
    )
    transport = ScriptedTransport(clock, handler(judge.rubric_spec()), 0.1)
    reward = JudgeReward(judge, SecretStr(SECRET), transport=transport, clock=clock)
    [result] = run_all(reward, clock, 1)
    assert not isinstance(result, JudgeError) and result.requests == 3
    opened_at = transport.calls[1].sent_at + 0.1
    assert transport.calls[2].sent_at == pytest.approx(opened_at + 5.0)
    assert reward.client.breakers[reward.client.endpoints[0].key].state == CLOSED


def test_open_circuit_past_the_deadline_fails_with_circuit_open() -> None:
    clock = VirtualClock()
    judge = JudgeConfig(
        base_url="http://one.test/v1",
        rule_gate=False,
        circuit_breaker=CircuitBreakerConfig(failure_threshold=2, cooldown_s=50.0),
        retry=RetryConfig(initial_backoff_s=0.1, deadline_s=5.0),
    )
    transport = ScriptedTransport(clock, lambda e, b, n: TransportError("judge_timeout"), 0.1)
    reward = JudgeReward(judge, SecretStr(SECRET), transport=transport, clock=clock)
    [result] = run_all(reward, clock, 1)
    assert isinstance(result, JudgeError) and result.cause == "judge_circuit_open"
    assert len(transport.calls) == 2 and clock.now() < 5.0
