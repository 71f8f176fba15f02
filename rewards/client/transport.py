"""Sending one chat-completion request to one endpoint.

``Transport`` is the seam between the judge client's policy (limits,
retries, breaker) and the network: ``OpenAITransport`` talks to a real
endpoint; tests substitute scripted transports. A transport either returns a
``Reply``, raises ``TransportError`` (the request failed in transit: a
key-free cause, whether it may be retried, and the server's Retry-After), or
raises ``RewardError('judge_malformed')`` (the endpoint answered with
something that is not a chat completion).

No message built here contains the API key or any text the endpoint sent
back with an error (providers may echo parts of a key); exceptions from the
HTTP client are never chained.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import httpx2
import openai
from pydantic import SecretStr

from rewards.client.clock import Clock, SystemClock
from rewards.client.endpoint import Endpoint
from rewards.client.retry import is_retryable, parse_retry_after
from rewards.errors import RewardError

__all__ = [
    "OpenAITransport",
    "Reply",
    "Transport",
    "TransportError",
    "completion_content",
    "make_client",
    "transport_error",
]


@dataclass(frozen=True)
class Reply:
    """The content of a chat completion and its ``usage`` counts (each None if not reported):
    ``total_tokens`` (the token limiter's), ``prompt_tokens`` and ``completion_tokens`` (the cost's)."""

    content: str
    total_tokens: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class TransportError(Exception):
    """A request that failed in transit. ``cause`` is key-free (``judge_timeout``,
    ``judge_http_429``, ...); ``retry_after`` the server's Retry-After in seconds."""

    def __init__(self, cause: str, detail: str = "", retry_after: float | None = None) -> None:
        super().__init__(f"{cause}: {detail}" if detail else cause)
        self.cause, self.detail, self.retry_after = cause, detail, retry_after

    @property
    def retryable(self) -> bool:
        return is_retryable(self.cause)


class Transport(Protocol):
    """Sends one request to one endpoint."""

    async def send(self, endpoint: Endpoint, body: Mapping[str, object], timeout_s: float) -> Reply:
        """``body`` holds the chat-completion fields other than ``model``."""

    async def aclose(self) -> None:
        """Release connections."""


def make_client(base_url: str, api_key: SecretStr, timeout_s: float) -> openai.AsyncOpenAI:
    """An OpenAI client with the SDK's own retries off (ours apply)."""
    if not isinstance(api_key, SecretStr):
        raise TypeError("the judge API key must be passed as a pydantic.SecretStr")
    return openai.AsyncOpenAI(base_url=base_url, api_key=api_key.get_secret_value(), timeout=timeout_s, max_retries=0)


def transport_error(err: Exception, timeout_s: float, now_wall: float) -> TransportError | RewardError:
    """Map a client exception to a key-free error."""
    if isinstance(err, (TimeoutError, asyncio.TimeoutError, openai.APITimeoutError)):
        return TransportError("judge_timeout", f"no reply within {timeout_s:g} s")
    if isinstance(err, openai.APIStatusError):
        headers = getattr(err.response, "headers", None) or {}
        retry_after = parse_retry_after(dict(headers.items()), now_wall)
        return TransportError(f"judge_http_{err.status_code}", f"HTTP {err.status_code}", retry_after)
    if isinstance(err, openai.APIConnectionError):
        return TransportError("judge_connection_error", "could not reach the judge endpoint")
    if isinstance(err, ValueError):  # e.g. a JSON content type with a non-JSON body
        return RewardError("judge_malformed", "the reply body is not valid JSON")
    return TransportError(f"judge_error:{type(err).__name__}", "unexpected client error")


_USAGE_FIELDS = ("total_tokens", "prompt_tokens", "completion_tokens")


def _count(value: object) -> int | None:
    """A token count as reported, or None when it is missing or not a count (never an error)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def completion_content(response: object) -> Reply:
    """``choices[0].message.content`` and the ``usage`` counts of a chat completion
    (a decoded JSON body, or an SDK ``ChatCompletion`` object); a missing or odd ``usage``
    leaves the counts None."""
    try:
        if isinstance(response, Mapping):
            content = response["choices"][0]["message"]["content"]
            usage = response.get("usage")
            counts = [usage.get(k) if isinstance(usage, Mapping) else None for k in _USAGE_FIELDS]
        else:
            content = response.choices[0].message.content  # type: ignore[attr-defined]
            usage = getattr(response, "usage", None)
            counts = [getattr(usage, k, None) for k in _USAGE_FIELDS]
    except (AttributeError, IndexError, KeyError, TypeError):
        raise RewardError("judge_malformed", "the reply is not a chat completion") from None
    if content is not None and not isinstance(content, str):
        raise RewardError("judge_malformed", "the reply content is not text")
    total, prompt, completion = (_count(c) for c in counts)
    return Reply(content or "", total, prompt, completion)


class OpenAITransport:
    """``openai.AsyncOpenAI`` clients, one per endpoint and event loop (HTTP
    connection pools must not cross loops)."""

    def __init__(self, default_timeout_s: float, clock: Clock | None = None) -> None:
        self._timeout_s = default_timeout_s
        self._clock = clock or SystemClock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clients: dict[str, openai.AsyncOpenAI] = {}

    def __repr__(self) -> str:
        return f"OpenAITransport(endpoints={len(self._clients)})"

    def _client(self, endpoint: Endpoint) -> openai.AsyncOpenAI:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._clients = loop, {}  # the old loop's clients die with it
        client = self._clients.get(endpoint.key)
        if client is None:
            client = self._clients[endpoint.key] = make_client(endpoint.base_url, endpoint.api_key, self._timeout_s)
        return client

    async def send(self, endpoint: Endpoint, body: Mapping[str, object], timeout_s: float) -> Reply:
        """POST ``/chat/completions`` through the SDK's low-level ``post`` (auth, error
        types and timeouts of the SDK, without its per-call parameter transformation,
        which costs milliseconds of CPU per request with a JSON schema)."""
        client = self._client(endpoint)
        try:
            # wait_for, not asyncio.timeout: the package supports Python 3.10.
            response = await asyncio.wait_for(
                client.post(
                    "/chat/completions",
                    cast_to=httpx2.Response,
                    body={"model": endpoint.model, **body},
                    options={"timeout": timeout_s},
                ),
                timeout=timeout_s,
            )
            data = response.json()
        except Exception as err:  # noqa: BLE001 - mapped to a key-free cause
            raise transport_error(err, timeout_s, self._clock.wall()) from None
        return completion_content(data)

    async def aclose(self) -> None:
        clients, self._clients, self._loop = list(self._clients.values()), {}, None
        for client in clients:
            await client.close()
