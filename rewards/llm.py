"""LLM calls made by reward terms: named engines on the judge's machinery.

``ChatEngine`` is one LLM a term may call: an engine of ``reward.engines``
(``EngineConfig``) or ``judge``, the judge's own endpoints. It sends every
request through a ``JudgeClient`` (``rewards/client/chat_client.py``: endpoint balancing,
per-endpoint concurrency, request and token limits, retries with backoff and a
per-call deadline, circuit breakers; the judge engine shares the judge term's
client, so its limits too), and keeps replies in a ``TextCache`` behind
``SharedCalls`` (``rewards/judge/cache.py``: identical calls in flight share one
request; only valid replies are kept), keyed by the engine's models, the
messages and the request parameters.

``LLMClient`` is what ``RewardContext.llm(name)`` hands a term: the engine
plus the usage counters of that term and sample.

One call (``chat`` or ``chat_json``) for one term and sample:

1. its messages and parameters are checked (a bad one fails the call);
2. a cached reply, or one shared with an identical call in flight, is used
   when ``cache`` is True;
3. otherwise the request is sent; transport failures are retried by the
   client (``retry.max_attempts`` requests, ``retry.deadline_s`` from the
   first); an empty reply (both), or one that is not a JSON object or does not
   validate against the schema (``chat_json``), is asked again up to
   ``malformed_retries`` times;
4. a call that still fails raises ``LLMCallError`` with one key-free line,
   e.g. ``engine geo: HTTP 503 after 4 attempts``; the composer turns it into
   *no score* for the term and sample, never 0.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar, cast

from pydantic import BaseModel, SecretStr, ValidationError

from rewards.client.chat_client import JudgeClient
from rewards.client.clock import Clock
from rewards.client.limits import estimate_tokens
from rewards.client.transport import OpenAITransport, Transport, TransportError
from rewards.config import EngineConfig
from rewards.errors import LLMCallError, RewardError
from rewards.judge.cache import SharedCalls, TextCache, reply_key
from rewards.judge.config import JudgeConfig
from rewards.judge.endpoints import resolve_endpoints
from rewards.judge.verdict import extract_first_json_object
from rewards.metrics import InflightGauge, JudgeTrace, Spend

__all__ = ["ChatEngine", "EngineUsage", "LLMCallError", "LLMClient", "describe_cause"]

Model = TypeVar("Model", bound=BaseModel)
T = TypeVar("T")
_ROLES = frozenset({"system", "user", "assistant"})
_SCHEMA_NAME_RE = re.compile(r"[^A-Za-z0-9_-]")
_PLAIN_CAUSES = {
    "judge_timeout": "timeout",
    "judge_connection_error": "connection error",
    "judge_circuit_open": "every endpoint's circuit is open",
    "judge_deadline": "deadline passed",
    "judge_malformed": "malformed reply",
    "judge_empty": "empty reply",
    "llm_empty": "empty reply",
    "llm_malformed": "malformed reply",
}


def describe_cause(cause: str) -> str:
    """A short, key-free phrase for a client or reply failure cause (``judge_http_503`` -> ``HTTP 503``)."""
    if cause in _PLAIN_CAUSES:
        return _PLAIN_CAUSES[cause]
    if cause.startswith("judge_http_"):
        return f"HTTP {cause.removeprefix('judge_http_')}"
    if cause.startswith("llm_invalid:"):
        return f"reply does not match {cause.removeprefix('llm_invalid:')}"
    if cause.startswith("judge_error:"):
        return f"client error {cause.removeprefix('judge_error:')}"
    return cause


@dataclass
class EngineUsage(Spend):
    """What one term's calls to one engine took. ``calls``: chat/chat_json calls;
    ``requests``: HTTP requests sent (every attempt); ``failures``: calls that
    raised ``LLMCallError``; ``retries``: requests sent again; ``cache_hits``:
    calls answered from the cache or by an identical call in flight; the
    ``Spend`` fields: the tokens and US dollars of its requests."""

    calls: int = 0
    requests: int = 0
    failures: int = 0
    retries: int = 0
    cache_hits: int = 0

    def add(self, other: EngineUsage) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def _json_object(text: str) -> dict[str, object] | None:
    try:
        value = json.loads(text.strip())
    except ValueError:
        value = None
    return value if isinstance(value, dict) else extract_first_json_object(text)


def _messages(body: Mapping[str, object]) -> list[dict[str, str]]:
    """The checked messages of a body that ``ChatEngine.body`` built."""
    return cast(list[dict[str, str]], body["messages"])


class ChatEngine:
    """One LLM reward terms may call (module docstring).

    Invariants: a failed call raises ``LLMCallError`` and caches nothing;
    ``totals`` only grow; the keys stay in the client's endpoints (never in a
    message). ``transport``, ``clock`` and ``rng`` are injectable for tests.
    """

    def __init__(
        self,
        name: str,
        config: EngineConfig | JudgeConfig,
        keys: Mapping[str, SecretStr],
        *,
        where: str | None = None,
        client: JudgeClient | None = None,
        transport: Transport | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self._config = config
        if client is None:
            endpoints = resolve_endpoints(config, keys, where or f"reward.engines.{name}")
            client = JudgeClient(
                endpoints,
                config.timeout_s,
                config.retry,
                config.circuit_breaker,
                transport or OpenAITransport(config.timeout_s, clock),
                clock,
                rng,
                label=f"engine {name}",
            )
        self.client = client
        self.models = sorted({e.model for e in client.endpoints})
        self._shared: SharedCalls[str] = SharedCalls(TextCache(config.cache_size))
        self.totals = EngineUsage()

    def __repr__(self) -> str:
        return f"ChatEngine({self.name!r}, endpoints={[e.display for e in self.client.endpoints]})"

    @property
    def timeout_s(self) -> float:
        return self._config.timeout_s

    @property
    def gauge(self) -> InflightGauge:
        """Requests of this engine's client in flight (shared with the judge term for ``judge``)."""
        return self.client.gauge

    def fail(self, detail: str) -> LLMCallError:
        """An ``LLMCallError`` for a bad call, naming this engine."""
        return LLMCallError(f"engine {self.name}: {detail}")

    def body(self, messages: object, max_tokens: int | None, temperature: float | None) -> dict[str, object]:
        """The request fields other than ``model``; a bad argument raises ``LLMCallError``."""
        if not (
            isinstance(messages, list)
            and messages
            and all(
                isinstance(m, dict) and m.get("role") in _ROLES and isinstance(m.get("content"), str) for m in messages
            )
        ):
            raise self.fail("messages must be a non-empty list of {role: system|user|assistant, content: str}")
        max_tokens = self._config.max_tokens if max_tokens is None else max_tokens
        temperature = self._config.temperature if temperature is None else temperature
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise self.fail(f"max_tokens must be a positive integer, got {max_tokens!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
            raise self.fail(f"temperature must be a number >= 0, got {temperature!r}")
        return {
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "max_tokens": max_tokens,
            "temperature": float(temperature),
        }

    def json_format(self, schema: type[BaseModel]) -> dict[str, object] | None:
        """The ``response_format`` of a ``chat_json`` call (per the engine's ``response_format``)."""
        kind = self._config.response_format
        if kind == "json_schema":
            name = _SCHEMA_NAME_RE.sub("_", schema.__name__)[:64] or "reply"
            return {
                "type": "json_schema",
                "json_schema": {"name": name, "strict": False, "schema": schema.model_json_schema()},
            }
        return {"type": "json_object"} if kind == "json_object" else None

    async def ask(self, body: dict[str, object], parse: Callable[[str], T], cache: bool, usage: EngineUsage) -> T:
        """Send one call (module docstring, steps 2-4) and return ``parse(reply)``.

        ``parse`` raises ``RewardError`` for a reply to ask again about."""
        usage.calls += 1
        self.totals.calls += 1
        if not cache:
            return parse(await self._fresh(body, parse, usage))
        params = {k: v for k, v in body.items() if k != "messages"}
        key = reply_key(self.models, _messages(body), params)
        text, hit = await self._shared.run(key, lambda: self._fresh(body, parse, usage))
        if hit:
            usage.cache_hits += 1
            self.totals.cache_hits += 1
        return parse(text)

    async def _fresh(self, body: dict[str, object], parse: Callable[[str], object], usage: EngineUsage) -> str:
        """Ask until a reply parses: the client retries transport failures, this re-asks
        after bad replies; raise ``LLMCallError`` once both are spent."""
        trace = JudgeTrace()
        tokens = estimate_tokens(_messages(body), cast(int, body["max_tokens"]))
        left = self._config.malformed_retries
        try:
            while True:
                try:
                    reply = await self.client.complete(body, tokens, trace)
                    parse(reply.content)
                    return reply.content
                except RewardError as err:  # a bad reply: ask again while allowed
                    if left == 0:
                        raise
                    left -= 1
                    trace.retries[err.cause] += 1
        except (RewardError, TransportError) as err:
            usage.failures += 1
            self.totals.failures += 1
            raise self.fail(_with_attempts(describe_cause(err.cause), trace.requests)) from None
        finally:
            retries = sum(trace.retries.values())
            usage.requests += trace.requests
            usage.retries += retries
            usage.add_spend(trace)
            self.totals.requests += trace.requests
            self.totals.retries += retries
            self.totals.add_spend(trace)

    async def aclose(self) -> None:
        await self.client.aclose()


def _with_attempts(what: str, requests: int) -> str:
    if requests == 0:
        return what
    return f"{what} after {requests} attempt{'s' if requests != 1 else ''}"


def _text_reply(content: str) -> str:
    if not content.strip():
        raise RewardError("llm_empty")
    return content


def _model_reply(schema: type[Model]) -> Callable[[str], Model]:
    def parse(content: str) -> Model:
        if not content.strip():
            raise RewardError("llm_empty")
        value = _json_object(content)
        if value is None:
            raise RewardError("llm_malformed")
        try:
            return schema.model_validate(value)
        except ValidationError:
            raise RewardError(f"llm_invalid:{schema.__name__}") from None

    return parse


class LLMClient:
    """One term's handle on one engine for one sample (``RewardContext.llm``).

    Every call shares the engine's limits, retries, breaker and cache with
    every other term and sample; its requests count towards this term's
    ``term/<name>/llm_calls`` and the engine's ``engine/<name>/*`` metrics.
    """

    def __init__(self, engine: ChatEngine, usage: EngineUsage, loop: asyncio.AbstractEventLoop | None) -> None:
        self._engine, self._usage, self._loop = engine, usage, loop

    def __repr__(self) -> str:
        return f"LLMClient({self._engine.name!r})"

    @property
    def name(self) -> str:
        return self._engine.name

    @property
    def models(self) -> list[str]:
        return list(self._engine.models)

    async def chat(
        self,
        messages: list[dict],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        cache: bool = True,
    ) -> str:
        """The reply's content (never empty); ``LLMCallError`` when the call fails.
        ``max_tokens`` / ``temperature`` default to the engine's; ``cache=False`` always sends."""
        body = self._engine.body(messages, max_tokens, temperature)
        return await self._engine.ask(body, _text_reply, cache, self._usage)

    async def chat_json(
        self,
        messages: list[dict],
        schema: type[Model],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        cache: bool = True,
    ) -> Model:
        """The reply as a validated ``schema`` instance, asked for as JSON (``response_format``
        per the engine); ``LLMCallError`` when the call fails."""
        if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
            raise self._engine.fail(f"chat_json needs a pydantic BaseModel class as schema, got {schema!r}")
        body = self._engine.body(messages, max_tokens, temperature)
        response_format = self._engine.json_format(schema)
        if response_format is not None:
            body["response_format"] = response_format
        return await self._engine.ask(body, _model_reply(schema), cache, self._usage)

    def chat_sync(self, messages: list[dict], **options: Any) -> str:
        """``chat`` for a sync term (it runs in a worker thread): waits for the call on the pool's loop."""
        return self._blocking(self.chat(messages, **options))

    def chat_json_sync(self, messages: list[dict], schema: type[Model], **options: Any) -> Model:
        """``chat_json`` for a sync term (see ``chat_sync``)."""
        return self._blocking(self.chat_json(messages, schema, **options))

    def _blocking(self, call: Any) -> Any:
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or running is loop or not loop.is_running():
            call.close()
            raise self._engine.fail(
                "chat_sync / chat_json_sync work only in a sync term running in a worker "
                "thread; an async term must await chat / chat_json"
            )
        return asyncio.run_coroutine_threadsafe(call, loop).result()


def engines_for(
    reward_engines: Mapping[str, EngineConfig], keys: Mapping[str, SecretStr], **inject: Any
) -> dict[str, ChatEngine]:
    """A ``ChatEngine`` per configured engine (``inject``: transport, clock, rng for tests)."""
    return {name: ChatEngine(name, config, keys, **inject) for name, config in reward_engines.items()}
