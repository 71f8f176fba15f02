"""Per-endpoint limits (concurrency, requests/min, tokens/min) in virtual time."""

from __future__ import annotations

import asyncio
import random

import pytest
from judge_fakes import fake_judge, ok

from rewards.client.clock import VirtualClock
from rewards.client.limits import EndpointLimiter, LimiterRegistry, Limits, TokenBucket, estimate_tokens

EPS = 1e-9


def max_in_any_window(times: list[float], weights: list[float], window: float) -> float:
    """The largest total weight of events within any closed interval of length ``window``."""
    events = sorted(zip(times, weights))
    best = 0.0
    for i, (start, _) in enumerate(events):
        best = max(best, sum(w for t, w in events[i:] if t <= start + window + EPS))
    return best


def run(clock: VirtualClock, coro):
    async def main():
        return await clock.run(coro)

    return asyncio.run(main())


def test_concurrency_never_exceeds_the_cap() -> None:
    clock = VirtualClock()
    rng = random.Random(1)
    durations = [rng.uniform(0.1, 2.0) for _ in range(60)]
    seen: list[int] = []

    async def main() -> EndpointLimiter:
        limiter = EndpointLimiter(Limits(max_concurrency=4), clock)

        async def one(duration: float) -> None:
            async with limiter.slot(10):
                seen.append(limiter.in_flight)
                await clock.sleep(duration)

        await asyncio.gather(*(one(d) for d in durations))
        return limiter

    limiter = run(clock, main())
    assert len(seen) == 60 and max(seen) <= 4
    assert limiter.peak_in_flight == 4 and limiter.in_flight == 0


@pytest.mark.parametrize(("rpm", "burst_s", "n"), [(120, 1.0, 40), (600, 0.5, 50), (30, 4.0, 12)])
def test_request_rate_bound_holds_in_every_window(rpm: float, burst_s: float, n: int) -> None:
    clock = VirtualClock()
    admitted: list[float] = []

    async def main() -> None:
        limiter = EndpointLimiter(Limits(max_concurrency=1000, requests_per_minute=rpm, burst_s=burst_s), clock)

        async def one() -> None:
            async with limiter.slot(1):
                admitted.append(clock.now())

        await asyncio.gather(*(one() for _ in range(n)))

    run(clock, main())
    rate, capacity = rpm / 60, max(1.0, rpm / 60 * burst_s)
    assert len(admitted) == n
    for window in (0.5, 1.0, 3.0, 10.0):
        assert max_in_any_window(admitted, [1.0] * n, window) <= capacity + rate * window + EPS
    # and the limiter does not throttle more than it must: the last one goes as early as allowed
    assert admitted[-1] == pytest.approx((n - capacity) / rate)


def test_token_rate_bound_and_usage_correction() -> None:
    clock = VirtualClock()
    admitted: list[tuple[float, int]] = []

    async def main() -> None:
        limiter = EndpointLimiter(Limits(max_concurrency=100, tokens_per_minute=600, burst_s=2.0), clock)
        sizes = [random.Random(i).randint(2, 20) for i in range(30)]

        async def one(size: int) -> None:
            async with limiter.slot(size) as permit:
                admitted.append((clock.now(), size))
                permit.correct(size)  # usage equal to the estimate: no change

        await asyncio.gather(*(one(s) for s in sizes))

    run(clock, main())
    times, sizes = [t for t, _ in admitted], [float(s) for _, s in admitted]
    for window in (1.0, 2.0, 5.0):
        assert max_in_any_window(times, sizes, window) <= 20 + 10 * window + EPS


def test_usage_above_the_estimate_puts_the_bucket_in_debt() -> None:
    clock = VirtualClock()

    async def main() -> list[float]:
        limiter = EndpointLimiter(Limits(max_concurrency=10, tokens_per_minute=600), clock)  # 10/s, holds 10
        starts = []
        async with limiter.slot(10) as permit:
            starts.append(clock.now())
            permit.correct(40)  # the reply used 30 more than estimated
        assert limiter._tokens.tokens == pytest.approx(-30)  # type: ignore[union-attr]
        async with limiter.slot(10):
            starts.append(clock.now())
        return starts

    starts = run(clock, main())
    assert starts == [0.0, pytest.approx(4.0)]  # 40 tokens at 10/s to refill from -30 to +10


def test_usage_below_the_estimate_refunds() -> None:
    clock = VirtualClock()

    async def main() -> float:
        bucket = TokenBucket(rate_per_s=1.0, capacity=100.0, clock=clock)
        await bucket.take(100)
        bucket.adjust(-60)  # charged 100, used 40
        return bucket.tokens

    assert run(clock, main()) == pytest.approx(60)


def test_a_request_larger_than_the_bucket_waits_for_a_full_bucket_then_goes_into_debt() -> None:
    clock = VirtualClock()

    async def main() -> list[float]:
        bucket = TokenBucket(rate_per_s=10.0, capacity=20.0, clock=clock)
        times = []
        await bucket.take(15)
        times.append(clock.now())
        await bucket.take(50)  # waits until full (20), then owes 30
        times.append(clock.now())
        await bucket.take(1)
        times.append(clock.now())
        return times

    t0, t1, t2 = run(clock, main())
    assert t0 == 0.0 and t1 == pytest.approx(1.5) and t2 == pytest.approx(1.5 + 3.1)


def test_waiters_are_served_first_come_first_served() -> None:
    clock = VirtualClock()
    order: list[int] = []

    async def main() -> None:
        bucket = TokenBucket(rate_per_s=1.0, capacity=1.0, clock=clock)

        async def one(i: int) -> None:
            await bucket.take(1)
            order.append(i)

        await asyncio.gather(*(one(i) for i in range(8)))

    run(clock, main())
    assert order == list(range(8))


def test_registry_shares_one_limiter_per_endpoint() -> None:
    clock = VirtualClock()
    registry = LimiterRegistry(clock)
    a = registry.get("a", Limits(max_concurrency=2))
    assert registry.get("a", Limits(max_concurrency=99)) is a
    assert registry.get("b", Limits(max_concurrency=2)) is not a


def test_estimate_tokens() -> None:
    messages = [{"role": "system", "content": "x" * 400}, {"role": "user", "content": "y" * 101}]
    assert estimate_tokens(messages, 512) == 100 + 26 + 512


@pytest.mark.parametrize(
    "limits",
    [dict(max_concurrency=0), dict(max_concurrency=1, burst_s=0), dict(max_concurrency=1, requests_per_minute=0)],
)
def test_bad_limits_are_rejected(limits: dict) -> None:
    with pytest.raises(ValueError):
        Limits(**limits)


# ---------------------------------------------------------------- through the judge


def test_judge_requests_share_the_endpoint_limits() -> None:
    """All concurrent samples of one JudgeReward share its endpoint's concurrency and rate."""
    judge, transport, clock = fake_judge(
        ok, latency_s=0.5, max_concurrency=3, requests_per_minute=240, burst_s=1.0, rule_gate=False, cache_size=0
    )

    async def main() -> None:
        await asyncio.gather(*(judge.score("A bakery", f"bake{i}.com") for i in range(40)))

    run(clock, main())
    assert len(transport.calls) == 40
    assert max(transport.peak.values()) <= 3
    times = [c.sent_at for c in transport.calls]
    for window in (0.5, 1.0, 5.0):
        assert max_in_any_window(times, [1.0] * 40, window) <= 4 + 4 * window + EPS
