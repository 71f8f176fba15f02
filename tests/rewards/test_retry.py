"""Retries: which failures, backoff with jitter, Retry-After, attempt and deadline
bounds, malformed-reply retries (virtual time, scripted transport)."""

from __future__ import annotations

import asyncio
import email.utils
import random

import pytest
from judge_fakes import HANG, ScriptedTransport, fake_judge, verdict_json

from rewards.client.config import RetryConfig
from rewards.client.retry import RetryPolicy, is_retryable, parse_retry_after, trips_breaker
from rewards.client.transport import Reply, TransportError
from rewards.errors import JudgeError, RewardError

NOW = 1_700_000_000.0


# ---------------------------------------------------------------- pure rules


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "3"}, 3.0),
        ({"retry-after": "0.25"}, 0.25),
        ({"RETRY-AFTER": " 7 "}, 7.0),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"Retry-After": email.utils.formatdate(NOW + 12, usegmt=True)}, 12.0),
        ({"Retry-After": email.utils.formatdate(NOW - 5, usegmt=True)}, None),  # in the past
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "-3"}, None),
        ({"Retry-After": "nan"}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    got = parse_retry_after(headers, NOW)
    assert got == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize(
    "cause",
    [
        "judge_timeout",
        "judge_connection_error",
        "judge_http_408",
        "judge_http_409",
        "judge_http_429",
        "judge_http_500",
        "judge_http_503",
        "judge_http_599",
    ],
)
def test_retryable_causes(cause: str) -> None:
    assert is_retryable(cause)


@pytest.mark.parametrize(
    "cause",
    [
        "judge_http_400",
        "judge_http_401",
        "judge_http_403",
        "judge_http_404",
        "judge_http_422",
        "judge_malformed",
        "judge_error:KeyError",
        "judge_circuit_open",
        "judge_deadline",
    ],
)
def test_not_retryable_causes(cause: str) -> None:
    assert not is_retryable(cause)


def test_breaker_counts_only_health_failures() -> None:
    assert all(
        trips_breaker(c)
        for c in ("judge_timeout", "judge_connection_error", "judge_http_502", "judge_http_503", "judge_http_504")
    )
    assert not any(trips_breaker(c) for c in ("judge_http_429", "judge_http_500", "judge_http_400", "judge_malformed"))


def test_backoff_is_exponential_capped_and_jittered() -> None:
    policy = RetryPolicy(
        RetryConfig(initial_backoff_s=0.5, backoff_multiplier=2, max_backoff_s=3, jitter=0.5), random.Random(0)
    )
    assert [policy.backoff(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    for n in range(1, 6):
        delays = [policy.delay(n) for _ in range(200)]
        b = policy.backoff(n)
        assert all(0.5 * b <= d <= b for d in delays)
        assert max(delays) - min(delays) > 0.3 * b  # really jittered
    assert RetryPolicy(RetryConfig(jitter=0)).delay(2) == 1.0
    with pytest.raises(ValueError):
        policy.backoff(0)


def test_retry_after_longer_than_backoff_wins() -> None:
    policy = RetryPolicy(RetryConfig(initial_backoff_s=0.5, jitter=0), random.Random(0))
    assert policy.delay(1, retry_after=4.0) == 4.0
    assert policy.delay(1, retry_after=0.1) == 0.5


# ---------------------------------------------------------------- through the client


def score_in_virtual_time(judge, clock, completion: str = "bakery.com"):
    async def main():
        return await clock.run(judge.score("A bakery in Portland", completion))

    return asyncio.run(main())


def script(*outcomes):
    """A handler answering the n-th request with ``outcomes[n]`` (a verdict after the last)."""

    def handler_for(rubric):
        def handler(endpoint, body, n):
            if n < len(outcomes):
                return outcomes[n]
            return Reply(verdict_json(rubric, 6.0), 100)

        return handler

    return handler_for


def gaps(transport: ScriptedTransport, latency: float) -> list[float]:
    """Waits between a request's end and the next request's start."""
    starts = [c.sent_at for c in transport.calls]
    return [b - (a + latency) for a, b in zip(starts, starts[1:])]


def test_429_with_retry_after_is_retried_after_at_least_that_long() -> None:
    judge, transport, clock = fake_judge(
        script(TransportError("judge_http_429", retry_after=3.0)),
        latency_s=0.1,
        retry=RetryConfig(initial_backoff_s=0.2),
    )
    result = score_in_virtual_time(judge, clock)
    assert result.score == pytest.approx(0.6) and result.requests == 2
    assert dict(result.trace.retries) == {"judge_http_429": 1}
    assert gaps(transport, 0.1)[0] == pytest.approx(3.0)


def test_backoff_between_attempts_grows() -> None:
    failures = [TransportError("judge_http_500")] * 3
    judge, transport, clock = fake_judge(
        script(*failures), latency_s=0.1, retry=RetryConfig(initial_backoff_s=1.0, jitter=0.5, max_attempts=4)
    )
    result = score_in_virtual_time(judge, clock)
    assert result.requests == 4 and dict(result.trace.retries) == {"judge_http_500": 3}
    for gap, b in zip(gaps(transport, 0.1), [1.0, 2.0, 4.0]):
        assert 0.5 * b - 1e-9 <= gap <= b + 1e-9


@pytest.mark.parametrize(
    "failure",
    [TransportError("judge_http_503"), TransportError("judge_timeout"), TransportError("judge_connection_error"), HANG],
)
def test_transient_failures_are_retried(failure) -> None:
    judge, transport, clock = fake_judge(script(failure, failure), retry=RetryConfig(initial_backoff_s=0.1))
    result = score_in_virtual_time(judge, clock)
    assert result.requests == 3 and sum(result.trace.retries.values()) == 2


def test_attempts_are_bounded_and_the_last_cause_is_reported() -> None:
    judge, transport, clock = fake_judge(
        script(*[TransportError("judge_http_503")] * 10), retry=RetryConfig(max_attempts=3, initial_backoff_s=0.1)
    )
    with pytest.raises(JudgeError) as info:
        score_in_virtual_time(judge, clock)
    assert info.value.cause == "judge_http_503" and info.value.requests == 3 and len(transport.calls) == 3
    assert dict(info.value.trace.retries) == {"judge_http_503": 2}


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_are_not_retried(status: int) -> None:
    judge, transport, clock = fake_judge(script(TransportError(f"judge_http_{status}")))
    with pytest.raises(JudgeError) as info:
        score_in_virtual_time(judge, clock)
    assert info.value.cause == f"judge_http_{status}" and len(transport.calls) == 1


def test_retry_after_past_the_deadline_gives_up_at_once() -> None:
    judge, transport, clock = fake_judge(
        script(TransportError("judge_http_429", retry_after=100.0)), retry=RetryConfig(deadline_s=30.0)
    )
    with pytest.raises(JudgeError) as info:
        score_in_virtual_time(judge, clock)
    assert info.value.cause == "judge_http_429" and len(transport.calls) == 1
    assert clock.now() < 1.0  # did not sit out the Retry-After


def test_request_timeouts_shrink_to_the_deadline() -> None:
    judge, transport, clock = fake_judge(
        script(HANG, HANG, HANG, HANG),
        timeout_s=4.0,
        retry=RetryConfig(deadline_s=10.0, initial_backoff_s=0.5, jitter=0, max_attempts=10),
    )
    with pytest.raises(JudgeError) as info:
        score_in_virtual_time(judge, clock)
    timeouts = [c.timeout_s for c in transport.calls]
    assert timeouts[:2] == [4.0, 4.0] and timeouts[2] == pytest.approx(10 - 4 - 0.5 - 4 - 1.0)
    assert info.value.cause == "judge_timeout" and clock.now() <= 10.0 + 1e-9


@pytest.mark.parametrize(
    ("content", "cause"),
    [
        ("", "judge_empty"),
        ("no json here", "judge_malformed"),
        ('{"relevance": {"score": 11}}', "judge_invalid_verdict"),
    ],
)
def test_a_bad_reply_is_asked_again_then_scored(content: str, cause: str) -> None:
    judge, transport, clock = fake_judge(script(Reply(content)), malformed_retries=1)
    result = score_in_virtual_time(judge, clock)
    assert result.requests == 2 and dict(result.trace.retries) == {cause: 1}


def test_persistently_bad_replies_leave_the_sample_unscored() -> None:
    judge, transport, clock = fake_judge(lambda rubric: lambda e, b, n: Reply("nope"), malformed_retries=2)
    with pytest.raises(JudgeError) as info:
        score_in_virtual_time(judge, clock)
    assert info.value.cause == "judge_malformed" and info.value.requests == 3
    assert not isinstance(info.value, TransportError) and isinstance(info.value, RewardError)


def test_malformed_retries_zero_means_one_request() -> None:
    judge, transport, clock = fake_judge(script(Reply("")), malformed_retries=0)
    with pytest.raises(JudgeError, match="judge_empty"):
        score_in_virtual_time(judge, clock)
    assert len(transport.calls) == 1
