"""The HTTP policy of the judge and of every reward engine: endpoint balancing,
circuit breakers, per-endpoint limits and retries around one ``Transport``.
One ``JudgeClient`` serves one judge or engine (``label`` names it in logs).

``JudgeClient.complete`` sends one chat-completion request for one sample:

1. **Pick an endpoint**: among those whose circuit lets a request through and
   that have a free concurrency slot, the one with the fewest outstanding
   requests (in flight or waiting for its rate buckets), lowest config index
   on ties. When all such endpoints are busy, queue (first come, first
   served) until a request finishes: a fast endpoint frees slots sooner and
   so gets more of the work. If every circuit is open, wait for the first to
   cool down (or for a probe's outcome); once the sample's deadline runs,
   give up with ``judge_circuit_open`` if none frees in time.
2. **Take a slot** of that endpoint's ``EndpointLimiter`` (concurrency,
   requests/min, tokens/min); waiting for a slot is queueing, not failure,
   and is not cut short.
3. **Send** with timeout ``min(judge.timeout_s, time left to the deadline)``.
   The deadline (``retry.deadline_s``) starts when the sample's first request
   is sent; a retry whose slot comes after it fails with ``judge_deadline``.
4. On a ``TransportError``: the endpoint's breaker records it (if its cause
   counts, see ``rewards.client.retry.trips_breaker``); a retryable failure is
   retried after ``RetryPolicy.delay`` (exponential backoff with jitter, or
   Retry-After when longer), unless the sample already had
   ``retry.max_attempts`` failed requests or the wait would end past the
   deadline. The last failure is raised.

Every retry is counted in the sample's ``JudgeTrace`` by cause, and every
request's latency recorded; every reply's tokens (as reported in ``usage``,
else estimated: ``rewards/client/usage.py``) and their cost at the serving
endpoint's prices are added to the trace and to the client's running total
``spent``. ``gauge`` counts requests in flight (all endpoints). ``outage``
(``rewards/client/outage.py``) is told every reply and transport failure;
``probe`` sends its probes. Logs name endpoints by their key-free ``display``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

from rewards.client.breaker import OPEN, CircuitBreaker
from rewards.client.clock import Clock, SystemClock
from rewards.client.config import CircuitBreakerConfig, RetryConfig
from rewards.client.endpoint import Endpoint
from rewards.client.limits import EndpointLimiter, LimiterRegistry
from rewards.client.outage import OutageDetector
from rewards.client.retry import RetryPolicy, trips_breaker
from rewards.client.transport import Reply, Transport, TransportError
from rewards.client.usage import request_usage
from rewards.errors import RewardError
from rewards.metrics import InflightGauge, JudgeTrace, Spend

__all__ = ["JudgeClient"]

logger = logging.getLogger(__name__)


@dataclass
class _LoopState:
    """Asyncio objects bound to one event loop."""

    loop: asyncio.AbstractEventLoop
    limiters: LimiterRegistry
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)
    waking: int = 0  # waiters woken for a free slot that have not run yet


class JudgeClient:
    """Balanced, limited, retried requests to the judge's endpoints (module docstring).

    Invariants: ``outstanding[key]`` = requests picked for that endpoint and
    not yet finished; per endpoint, at most ``limits.max_concurrency``
    requests are in flight; a sample never sends more than
    ``retry.max_attempts`` requests that fail in transit.
    """

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        timeout_s: float,
        retry: RetryConfig,
        breaker: CircuitBreakerConfig,
        transport: Transport,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        label: str = "judge",
    ) -> None:
        if not endpoints:
            raise ValueError(f"the {label} needs at least one endpoint")
        self.endpoints, self.label = list(endpoints), label
        self._timeout_s, self._retry, self._transport = timeout_s, retry, transport
        self._clock = clock or SystemClock()
        self._policy = RetryPolicy(retry, rng)
        self.breakers = {
            e.key: CircuitBreaker(
                f"{label} endpoint {e.display}", breaker.failure_threshold, breaker.cooldown_s, self._clock
            )
            for e in self.endpoints
        }
        self.outstanding = {e.key: 0 for e in self.endpoints}
        self._probe_poll_s = max(0.05, min(1.0, breaker.cooldown_s))
        self.gauge = InflightGauge()
        self.spent = Spend()
        self._state: _LoopState | None = None
        span = max(breaker.cooldown_s, timeout_s)  # failures in a row for this long: down
        self.outage = OutageDetector(self._clock, breaker.failure_threshold, span, label)
        self._probes = 0

    def __repr__(self) -> str:
        return f"JudgeClient({self.label!r}, {[e.display for e in self.endpoints]})"

    def _loop_state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        if self._state is None or self._state.loop is not loop:
            self._state = _LoopState(loop, LimiterRegistry(self._clock))
        return self._state

    def limiter_of(self, endpoint: Endpoint) -> EndpointLimiter:
        """The running loop's limiter of ``endpoint`` (shared by every request to it)."""
        return self._loop_state().limiters.get(endpoint.key, endpoint.limits)

    async def complete(self, body: Mapping[str, object], tokens: int, trace: JudgeTrace) -> Reply:
        """Send ``body`` until a reply comes back; raise the last ``TransportError``
        when retries are exhausted, or ``RewardError`` for a non-completion reply."""
        while True:
            endpoint = await self._pick(trace)
            breaker = self.breakers[endpoint.key]
            picked_at = self._clock.now()
            try:
                reply = await self._send(endpoint, body, tokens, trace)
            except TransportError as err:
                self._record_failure(endpoint, err)
                self._release(endpoint)
                delay = self._retry_delay(err, trace)
                if delay is None:
                    raise
                trace.retries[err.cause] += 1
                logger.debug(
                    "%s request via %s failed (%s); retry %d in %.3fs",
                    self.label,
                    endpoint.display,
                    err.cause,
                    trace.transport_failures,
                    delay,
                )
                await self._clock.sleep(delay)
                continue
            except BaseException:  # malformed reply, cancellation: says nothing about health
                breaker.record_neutral()
                self._release(endpoint)
                raise
            breaker.record_success()
            self.outage.record_reply(sent_at=picked_at)  # one sent before an outage began does not end it
            self._release(endpoint)
            return reply

    def _free(self, endpoint: Endpoint) -> int:
        """Free concurrency slots of ``endpoint`` if its circuit lets a request through, else 0."""
        if not self.breakers[endpoint.key].available():
            return 0
        return max(0, endpoint.limits.max_concurrency - self.outstanding[endpoint.key])

    async def _pick(self, trace: JudgeTrace) -> Endpoint:
        requeued = False
        while True:
            free = [e for e in self.endpoints if self._free(e) > 0]
            if free:
                endpoint = min(free, key=lambda e: (self.outstanding[e.key], e.index))
                self.breakers[endpoint.key].on_send()
                self.outstanding[endpoint.key] += 1
                self._wake_free()  # more slots free (e.g. a circuit closed): pass it on
                return endpoint
            if any(self.breakers[e.key].available() for e in self.endpoints):
                await self._queue(None, front=requeued)  # all busy: a finishing request wakes us
                requeued = True
                continue
            waits = [w for w in (b.seconds_until_available() for b in self.breakers.values()) if w is not None]
            wait = min(waits) if waits else self._probe_poll_s  # probes out: look again later
            if trace.deadline is not None:
                left = trace.deadline - self._clock.now()
                if left <= 0 or wait > left:
                    raise TransportError("judge_circuit_open", "every judge endpoint's circuit is open")
            await self._queue(wait, front=requeued)
            requeued = True

    async def _queue(self, timeout: float | None, front: bool = False) -> None:
        """Wait, first come first served, until woken for a free slot (or ``timeout`` passes).

        A waiter that was woken but found the slot taken waits again at the front.
        """
        state = self._loop_state()
        woken: asyncio.Future[None] = state.loop.create_future()
        (state.waiters.appendleft if front else state.waiters.append)(woken)
        tasks: set[asyncio.Future] = {woken}
        if timeout is not None:
            tasks.add(asyncio.ensure_future(self._clock.sleep(timeout)))
        cancelled = False
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            for task in tasks:
                task.cancel()  # a still-pending ``woken`` stays queued, done, and is skipped
            if woken.done() and not woken.cancelled():
                state.waking -= 1
                if cancelled:
                    self._wake_free()  # woken, then cancelled: pass the wake-up on

    def _wake_free(self) -> None:
        """Wake as many waiters as there are free slots not yet promised to a woken waiter."""
        state = self._loop_state()
        count = sum(self._free(e) for e in self.endpoints) - state.waking
        while count > 0 and state.waiters:
            waiter = state.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                state.waking += 1
                count -= 1

    def _release(self, endpoint: Endpoint) -> None:
        """A picked request is over: free its slot and wake a waiter for it."""
        self.outstanding[endpoint.key] -= 1
        self._wake_free()

    async def _send(self, endpoint: Endpoint, body: Mapping[str, object], tokens: int, trace: JudgeTrace) -> Reply:
        async with self.limiter_of(endpoint).slot(tokens) as permit:
            now = self._clock.now()
            if trace.deadline is None:
                trace.deadline = now + self._retry.deadline_s
            timeout = min(self._timeout_s, trace.deadline - now)
            if timeout <= 0:
                raise TransportError("judge_deadline", "the sample's deadline passed before this request")
            trace.requests += 1
            self.gauge.inc()
            try:
                reply = await self._transport.send(endpoint, body, timeout)
            except TransportError:
                trace.transport_failures += 1
                raise
            finally:
                self.gauge.dec()
                trace.latencies_s.append(self._clock.now() - now)
            permit.correct(reply.total_tokens)
            self._record_usage(endpoint, body, reply, trace)
            return reply

    def _record_usage(self, endpoint: Endpoint, body: Mapping[str, object], reply: Reply, trace: JudgeTrace) -> None:
        """Add the reply's tokens and their cost at ``endpoint``'s prices to ``trace`` and ``spent``."""
        messages = cast(Sequence[dict[str, str]], body.get("messages") or [])
        usage = request_usage(reply.prompt_tokens, reply.completion_tokens, reply.total_tokens, messages, reply.content)
        cost = usage.cost(endpoint.prices)
        for spend in (trace, self.spent):
            spend.add_request(usage.input_tokens, usage.output_tokens, cost, usage.estimated)

    def _record_failure(self, endpoint: Endpoint, err: TransportError) -> None:
        breaker = self.breakers[endpoint.key]
        if trips_breaker(err.cause):
            breaker.record_failure(err.cause)
        else:
            breaker.record_neutral()
        self.outage.record_failure(err.cause, all(b.state == OPEN for b in self.breakers.values()))

    def _retry_delay(self, err: TransportError, trace: JudgeTrace) -> float | None:
        """Seconds to wait before retrying, or None to give up."""
        if not err.retryable or trace.transport_failures >= self._retry.max_attempts:
            return None
        delay = self._policy.delay(trace.transport_failures, err.retry_after)
        if trace.deadline is not None and self._clock.now() + delay >= trace.deadline:
            return None
        return delay

    async def probe(self, body: Mapping[str, object]) -> bool:
        """One request to the next endpoint in turn, outside the limits and retries (the outage
        waiter's, one at a time): True if the server answered, which ends an outage (an HTTP
        error other than a retryable one counts: the server is there). Breakers and the outage
        detector see its outcome."""
        endpoint = self.endpoints[self._probes % len(self.endpoints)]
        self._probes += 1
        try:
            await self._transport.send(endpoint, body, self._timeout_s)
        except TransportError as err:
            if err.retryable:
                self._record_failure(endpoint, err)
                return False
        except RewardError:  # an answer that is not a completion: still an answer
            pass
        self.breakers[endpoint.key].record_success()
        self.outage.record_reply(probe=True)
        return True

    async def aclose(self) -> None:
        await self._transport.aclose()
