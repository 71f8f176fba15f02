"""Test doubles for the judge client: scripted transports in virtual time."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pydantic import SecretStr

from rewards.client.clock import VirtualClock
from rewards.client.endpoint import Endpoint
from rewards.client.transport import Reply, TransportError
from rewards.judge.config import JudgeConfig
from rewards.judge.llm_judge import JudgeReward
from rewards.judge.rubric import Rubric

SECRET = "sk-fake-judge-KEY-7f3a9"
HANG = "hang"


def verdict_json(rubric: Rubric, score: float = 7.0, inappropriate: bool = False, blocked: bool = False) -> str:
    """A valid verdict for ``rubric`` with every criterion at ``score``."""
    verdict: dict[str, object] = {}
    if rubric.request_check is not None:
        verdict["request_check"] = {"reason": "r", "inappropriate": inappropriate, "blocked": blocked}
    for c in rubric.criteria:
        verdict[c.name] = {"reason": "fine", "score": score}
    return json.dumps(verdict)


@dataclass
class Call:
    """One request the fake transport received."""

    endpoint: str
    body: Mapping[str, object]
    sent_at: float
    timeout_s: float


Outcome = Reply | Exception | str
Handler = Callable[[Endpoint, Mapping[str, object], int], Outcome]


@dataclass
class ScriptedTransport:
    """Answers each request after ``latency_s`` of virtual time with ``handler(endpoint,
    body, n)`` (n = 0-based index of the request): a Reply, an exception to raise,
    or ``HANG`` (wait out the timeout, then ``judge_timeout``)."""

    clock: VirtualClock
    handler: Handler
    latency_s: float = 0.1
    calls: list[Call] = field(default_factory=list)
    in_flight: dict[str, int] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)
    closed: bool = False

    async def send(self, endpoint: Endpoint, body: Mapping[str, object], timeout_s: float) -> Reply:
        n = len(self.calls)
        self.calls.append(Call(endpoint.key, body, self.clock.now(), timeout_s))
        key = endpoint.key
        self.in_flight[key] = self.in_flight.get(key, 0) + 1
        self.peak[key] = max(self.peak.get(key, 0), self.in_flight[key])
        try:
            outcome = self.handler(endpoint, body, n)
            if outcome == HANG:
                await self.clock.sleep(timeout_s)
                raise TransportError("judge_timeout", f"no reply within {timeout_s:g} s")
            await self.clock.sleep(self.latency_s)
            if isinstance(outcome, Exception):
                raise outcome
            return outcome  # type: ignore[return-value]
        finally:
            self.in_flight[key] -= 1

    async def aclose(self) -> None:
        self.closed = True


def ok(rubric: Rubric, score: float = 7.0) -> Handler:
    """A handler that always answers a valid verdict."""
    return lambda endpoint, body, n: Reply(verdict_json(rubric, score), 100)


def fake_judge(
    handler_for: Callable[[Rubric], Handler], latency_s: float = 0.1, seed: int = 0, **overrides: object
) -> tuple[JudgeReward, ScriptedTransport, VirtualClock]:
    """A JudgeReward on a scripted transport and a virtual clock."""
    import random

    clock = VirtualClock()
    judge = JudgeConfig(base_url="http://judge.test/v1", **overrides)
    transport = ScriptedTransport(clock, handler_for(judge.rubric_spec()), latency_s)
    reward = JudgeReward(judge, SecretStr(SECRET), transport=transport, clock=clock, rng=random.Random(seed))
    return reward, transport, clock
