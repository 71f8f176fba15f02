"""Judge outages: the detector by hand on a virtual clock, the shared probe loop, and the
judge client feeding both."""

from __future__ import annotations

import asyncio

import pytest
from judge_fakes import fake_judge, ok

from rewards.client.clock import VirtualClock
from rewards.client.outage import (
    JudgeOutage,
    JudgeOutageError,
    OutageDetector,
    OutageWaiter,
    is_outage_cause,
)
from rewards.client.transport import Reply, TransportError


@pytest.mark.parametrize(
    ("cause", "outage"),
    [
        ("judge_http_503", True),
        ("judge_http_500", True),
        ("judge_http_429", True),
        ("judge_http_408", True),
        ("judge_http_409", True),
        ("judge_timeout", True),
        ("judge_connection_error", True),
        ("judge_circuit_open", True),
        ("judge_deadline", True),
        ("judge_http_400", False),
        ("judge_http_401", False),
        ("judge_malformed", False),
        ("judge_error:ValueError", False),
    ],
)
def test_outage_causes(cause: str, outage: bool) -> None:
    assert is_outage_cause(cause) is outage


def test_down_when_every_circuit_is_open_back_at_the_first_reply() -> None:
    clock = VirtualClock()
    detector = OutageDetector(clock, min_failures=5, min_span_s=10.0)
    detector.record_failure("judge_http_503", all_circuits_open=False)
    assert detector.state() == JudgeOutage()  # one failure with a circuit still closed: up
    clock.advance(1.0)
    detector.record_failure("judge_http_503", all_circuits_open=True)  # down from t=1
    clock.advance(30.0)
    assert detector.state() == JudgeOutage(down=True, current_s=30.0, total_s=30.0, count=1, stalled_s=30.0)
    detector.record_reply()  # back at t=31: 30 s of outage
    assert detector.state() == JudgeOutage(down=False, current_s=0.0, total_s=30.0, count=1, last_s=30.0)
    clock.advance(100.0)
    detector.record_failure("judge_timeout", all_circuits_open=True)  # a second outage from t=131
    clock.advance(4.0)
    assert detector.state() == JudgeOutage(down=True, current_s=4.0, total_s=34.0, count=2, last_s=30.0, stalled_s=4.0)


def test_a_probes_answer_ends_an_outage_but_not_the_stall() -> None:
    """A server that answers probes while every judge request fails: each outage is short, the
    stall (what judge.max_outage_s limits) runs on until a request completes."""
    clock = VirtualClock()
    detector = OutageDetector(clock, min_failures=5, min_span_s=10.0)
    detector.record_failure("judge_timeout", all_circuits_open=True)  # down at t=0
    clock.advance(5.0)
    detector.record_reply(probe=True)  # the probe is answered at t=5: back
    assert detector.state() == JudgeOutage(down=False, total_s=5.0, count=1, last_s=5.0)
    clock.advance(1.0)
    detector.record_failure("judge_timeout", all_circuits_open=True)  # the samples fail again: down at t=6
    clock.advance(14.0)
    assert detector.state() == JudgeOutage(down=True, current_s=14.0, total_s=19.0, count=2, last_s=5.0, stalled_s=20.0)
    detector.record_reply()  # a sample's request completes at t=20: the stall is over
    detector.record_failure("judge_timeout", all_circuits_open=True)
    clock.advance(2.0)
    assert detector.state().stalled_s == 2.0 and detector.state().current_s == 2.0


def test_down_after_a_streak_of_failures_long_enough_in_count_and_time() -> None:
    clock = VirtualClock()
    detector = OutageDetector(clock, min_failures=3, min_span_s=10.0)
    for _ in range(3):  # three in a row within 2 s: a blip, not an outage
        detector.record_failure("judge_http_500", all_circuits_open=False)
        clock.advance(1.0)
    assert not detector.down
    detector.record_reply()  # the streak ends
    clock.advance(9.0)  # t = 12
    detector.record_failure("judge_http_500", all_circuits_open=False)  # streak starts again at t=12
    detector.record_failure("judge_http_400", all_circuits_open=False)  # not an outage cause: ignored
    clock.advance(10.0)
    detector.record_failure("judge_http_429", all_circuits_open=False)  # 2 failures over 10 s: too few
    assert not detector.down
    detector.record_failure("judge_http_500", all_circuits_open=False)  # 3 over 10 s: down from t=22
    assert detector.state() == JudgeOutage(down=True, current_s=0.0, total_s=0.0, count=1, stalled_s=0.0)


def test_a_reply_to_a_request_sent_before_the_outage_does_not_end_it() -> None:
    clock = VirtualClock()
    detector = OutageDetector(clock, min_failures=5, min_span_s=10.0)
    clock.advance(10.0)
    detector.record_failure("judge_http_503", all_circuits_open=True)  # down at t=10
    clock.advance(1.0)
    detector.record_reply(sent_at=9.5)  # its request left before the circuit opened
    assert detector.down
    detector.record_reply(sent_at=10.5)
    assert detector.state() == JudgeOutage(down=False, total_s=1.0, count=1, last_s=1.0)


def test_overlaps_tells_whether_the_judge_was_down_since_a_mark() -> None:
    clock = VirtualClock()
    detector = OutageDetector(clock, min_failures=1, min_span_s=0.0)
    up = detector.mark()
    assert not detector.overlaps(up)
    detector.record_failure("judge_http_503", all_circuits_open=False)
    detector.record_reply()  # an outage began and ended since ``up``
    assert detector.overlaps(up)
    after = detector.mark()
    assert not detector.overlaps(after)
    detector.record_failure("judge_http_503", all_circuits_open=False)
    during = detector.mark()
    detector.record_reply()
    assert detector.overlaps(during)  # taken while down


class _Probe:
    """A probe that fails ``failures`` times, then ends the outage; records when it ran and
    how many probes were out at once."""

    def __init__(self, detector: OutageDetector, clock: VirtualClock, failures: int) -> None:
        self.detector, self.clock, self.failures = detector, clock, failures
        self.times: list[float] = []
        self.out = self.most_out = 0

    async def __call__(self) -> bool:
        self.times.append(self.clock.now())
        self.out += 1
        self.most_out = max(self.most_out, self.out)
        await self.clock.sleep(0.0)
        self.out -= 1
        if len(self.times) > self.failures:
            self.detector.record_reply(probe=True)
            return True
        self.detector.record_failure("judge_http_503", all_circuits_open=True)
        return False


def _down(clock: VirtualClock) -> OutageDetector:
    detector = OutageDetector(clock, min_failures=1, min_span_s=0.0)
    detector.record_failure("judge_http_503", all_circuits_open=True)
    return detector


def test_waiters_share_one_probe_with_backoff_until_the_judge_answers() -> None:
    clock = VirtualClock()
    detector = _down(clock)
    probe = _Probe(detector, clock, failures=3)
    waiter = OutageWaiter(detector, probe, clock, first_s=1.0, max_s=4.0, max_outage_s=100.0)

    async def main() -> list[None]:
        return await asyncio.gather(*(waiter.until_up() for _ in range(5)))

    asyncio.run(clock.run(main()))
    # backoff 1, 2, 4, then capped at 4: probes at t = 1, 3, 7, 11; the fourth one is answered
    assert probe.times == [1.0, 3.0, 7.0, 11.0]
    assert probe.most_out == 1  # one probe at a time for all five waiters
    assert detector.state() == JudgeOutage(down=False, total_s=11.0, count=1, last_s=11.0)


def test_waiters_give_up_with_the_cause_after_max_outage_s() -> None:
    clock = VirtualClock()
    detector = _down(clock)
    probe = _Probe(detector, clock, failures=1000)
    waiter = OutageWaiter(detector, probe, clock, first_s=1.0, max_s=4.0, max_outage_s=10.0)

    async def main() -> list[BaseException | None]:
        return await asyncio.gather(*(waiter.until_up() for _ in range(3)), return_exceptions=True)

    errors = asyncio.run(clock.run(main()))
    assert probe.times == [1.0, 3.0, 7.0]  # the next would come at 11, past the limit
    assert all(isinstance(e, JudgeOutageError) for e in errors)
    assert str(errors[0]).startswith("judge unreachable for 10 s (judge.max_outage_s=10)")
    assert clock.now() == 10.0


def test_a_waiter_returns_when_another_request_ends_the_outage_without_probing() -> None:
    clock = VirtualClock()
    detector = _down(clock)
    probe = _Probe(detector, clock, failures=0)
    waiter = OutageWaiter(detector, probe, clock, first_s=8.0, max_s=8.0, max_outage_s=100.0, poll_s=0.5)

    async def reply_later() -> None:
        await clock.sleep(2.2)
        detector.record_reply()  # an in-flight sample's retry got through

    async def main() -> None:
        await asyncio.gather(waiter.until_up(), reply_later())

    asyncio.run(clock.run(main()))
    assert probe.times == [] and clock.now() == 2.5  # woke at its next look, 0.5 s slices


def test_the_judge_client_feeds_the_detector_and_probes() -> None:
    """Five 503s in a row open the one endpoint's circuit: down; the sample's retry after the
    cool-down is answered: back. A probe answered 503 keeps it down; one answered 400 (the server
    is there) ends it."""
    failing = {"left": 5}

    def handler_for(rubric):
        good = ok(rubric)

        def handle(endpoint, body, n):
            if failing["left"] > 0:
                failing["left"] -= 1
                return TransportError("judge_http_503", "HTTP 503")
            return good(endpoint, body, n)

        return handle

    reward, transport, clock = fake_judge(
        handler_for,
        retry={"max_attempts": 10, "initial_backoff_s": 0.1, "max_backoff_s": 0.1, "jitter": 0.0},
        circuit_breaker={"failure_threshold": 5, "cooldown_s": 3.0},
    )
    outage = reward.client.outage

    async def main() -> None:
        await reward.score("A bakery.", "bakery.com")

    asyncio.run(clock.run(main()))
    state = outage.state()
    assert state.count == 1 and not state.down and state.last_s > 0
    assert len(transport.calls) == 6  # 5 failures, then the answer after the cool-down

    answers: list[object] = [TransportError("judge_http_503", "HTTP 503"), TransportError("judge_http_400", "HTTP 400")]
    transport.handler = lambda endpoint, body, n: answers.pop(0)
    outage.record_failure("judge_http_503", all_circuits_open=True)

    async def probes() -> list[bool]:
        return [await reward.client.probe({"messages": []}), await reward.client.probe({"messages": []})]

    assert asyncio.run(clock.run(probes())) == [False, True]
    assert not outage.down and outage.state().count == 2


def test_a_reply_is_an_answer_for_the_probe() -> None:
    reward, transport, clock = fake_judge(ok)
    reward.client.outage.record_failure("judge_http_503", all_circuits_open=True)
    transport.handler = lambda endpoint, body, n: Reply("OK", 3)
    assert asyncio.run(clock.run(reward.client.probe({"messages": []}))) is True
    assert not reward.client.outage.down and len(transport.calls) == 1
