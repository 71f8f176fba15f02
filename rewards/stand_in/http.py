"""The HTTP plumbing every stand-in chat server shares (``rewards/stand_in/server.py``,
``rewards/stand_in/judge_server.py``, and the engines built on the former).

What is here: HTTP/1.1 keep-alive with Content-Length bodies (``ChatHandler``),
bearer-key auth (``--api-key-env``; the key is never printed), OpenAI-style
JSON and error bodies, the routes ``GET /v1/models`` and ``GET /stats``
(``{"requests": n, "peak_inflight": m, "faults": {...}}``: chat-completion
requests accepted so far, after auth and parsing, and the most of them being
answered at once, so tests measure limits at the server), an in-flight gauge
and connection tracking (``ChatHTTPServer``). A server answers
``POST /v1/chat/completions`` in its handler's ``answer(raw_body)``. Starting
and stopping one, in process or as a command, is ``rewards/stand_in/serve.py``'s.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "BadRequest",
    "ChatHTTPServer",
    "ChatHandler",
    "chat_completion",
    "error_body",
    "fault_bucket",
    "message_text",
    "parse_status_rates",
]

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
MAX_TRACKED_REQUESTS = 1_000_000


class BadRequest(ValueError):
    """The request cannot be answered; the message goes back in a 400 body."""


def error_body(message: str, kind: str, code: str | None = None) -> dict[str, object]:
    """An OpenAI-style error body."""
    return {"error": {"message": message, "type": kind, "code": code}}


def chat_completion(model: str, content: str, prompt_words: int) -> dict[str, object]:
    """A standard chat-completion response body (token counts approximated as words)."""
    completion_words = len(content.split())
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_words,
            "completion_tokens": completion_words,
            "total_tokens": prompt_words + completion_words,
        },
    }


def fault_bucket(text: str, salt: str) -> float:
    """A deterministic number in [0, 1) from ``text`` (and a salt)."""
    digest = hashlib.sha256(f"{salt}\0{text}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def pick_fault(draw: float, plan: list[tuple[str, float]]) -> str | None:
    """The fault whose share of [0, 1) holds ``draw`` (the plan's shares laid end to end), or None."""
    edge = 0.0
    for kind, rate in plan:
        edge += rate
        if draw < edge:
            return kind
    return None


def parse_status_rates(text: str) -> dict[int, float]:
    """``"429=0.05,503=0.05"`` -> ``{429: 0.05, 503: 0.05}`` (ValueError if malformed)."""
    rates: dict[int, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        status, sep, rate = item.partition("=")
        if not sep:
            raise ValueError(f"--status-rate item {item!r} is not STATUS=RATE")
        rates[int(status)] = float(rate)
    return rates


def check_fault_settings(status_rates: Mapping[int, float], retry_after_s: float | None, api_key: Any) -> None:
    """The checks every stand-in's settings share: injected statuses are 4xx/5xx with rates in
    [0, 1], ``Retry-After`` is not negative, and a key (a ``SecretStr``) is not empty."""
    for status, rate in status_rates.items():
        if not 400 <= status <= 599 or not 0.0 <= rate <= 1.0:
            raise ValueError(f"status_rates: {status}={rate} needs a 4xx/5xx status and a rate in [0, 1]")
    if retry_after_s is not None and retry_after_s < 0:
        raise ValueError("retry_after_s must be >= 0")
    if api_key is not None and not api_key.get_secret_value():
        raise ValueError("api_key must not be empty (pass None for no auth)")


def message_text(message: Mapping[str, object]) -> str:
    """A message's text (a string, or the text of its content parts)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    raise BadRequest("message content must be a string or a list of text parts")


class ChatHTTPServer(ThreadingHTTPServer):
    """A threading server that counts completions in flight and remembers open
    connections so ``stop`` can close them. ``settings`` needs ``model`` and
    ``api_key`` (None: no auth)."""

    daemon_threads = True
    request_queue_size = 256  # listen backlog: many clients connect at once

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], settings: Any) -> None:
        super().__init__(address, handler)
        self.settings = settings
        self.completions_served = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.faults: dict[str, int] = {}
        self.stopping = threading.Event()
        self._attempts: dict[bytes, int] = {}
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()

    def process_request(self, request, client_address) -> None:
        with self._lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self._lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        # A client that hangs up (e.g. after its own timeout) is routine.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError, TimeoutError)):
            logger.debug("client %s went away", client_address)
            return
        logger.exception("error while serving %s", client_address)

    def begin_completion(self) -> None:
        with self._lock:
            self.completions_served += 1
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def end_completion(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def next_attempt(self, key: bytes) -> int:
        """1 for the first request with this key, then 2, 3, ..."""
        with self._lock:
            if len(self._attempts) >= MAX_TRACKED_REQUESTS:
                self._attempts.clear()  # bounded memory; attempt numbers restart
            self._attempts[key] = attempt = self._attempts.get(key, 0) + 1
            return attempt

    def count_fault(self, kind: str) -> None:
        with self._lock:
            self.faults[kind] = self.faults.get(kind, 0) + 1

    def stats(self) -> dict[str, object]:
        with self._lock:
            return {
                "requests": self.completions_served,
                "peak_inflight": self.peak_in_flight,
                "faults": dict(self.faults),
            }

    def close_connections(self) -> None:
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class ChatHandler(BaseHTTPRequestHandler):
    """One connection; serves requests until the client closes or idles out.
    Subclasses answer chat completions in ``answer(raw_body)``."""

    protocol_version = "HTTP/1.1"
    timeout = 120  # seconds an idle keep-alive connection is kept
    server: ChatHTTPServer

    def setup(self) -> None:
        super().setup()
        # Headers and body are written separately: without this, Nagle's
        # algorithm and the client's delayed ACK add ~40 ms to every reply.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        logger.debug("%s - " + format, self.address_string(), *args)

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        if self.read_body() is None or not self.authorised():
            return
        if self.route() == "/v1/models":
            model = {"id": self.server.settings.model, "object": "model", "created": 0, "owned_by": "relay"}
            self.send_json(200, {"object": "list", "data": [model]})
        elif self.route() == "/stats":
            self.send_json(200, self.server.stats())
        else:
            self.send_json(404, error_body(f"no route GET {self.route()}", "not_found"))

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        raw = self.read_body()
        if raw is None or not self.authorised():
            return
        if self.route() != "/v1/chat/completions":
            self.send_json(404, error_body(f"no route POST {self.route()}", "not_found"))
            return
        self.answer(raw)

    def answer(self, raw: bytes) -> None:
        """Answer one chat-completion body; every stand-in's handler overrides this (the judge's,
        ``rewards/stand_in/server.py``'s); the base class only routes and authenticates."""
        raise NotImplementedError(f"{type(self).__name__} must answer chat completions")

    def route(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/") or "/"

    def read_body(self) -> bytes | None:
        """The request body (b"" if none); None after answering an error."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self.send_json(411, error_body("chunked bodies are not supported", "invalid_request_error"))
            return None
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            if self.command == "POST":
                self.close_connection = True
                self.send_json(411, error_body("Content-Length required", "invalid_request_error"))
                return None
            return b""
        try:
            length = int(length_header)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self.close_connection = True
            self.send_json(400, error_body("bad Content-Length", "invalid_request_error"))
            return None
        return self.rfile.read(length)

    def authorised(self) -> bool:
        key = self.server.settings.api_key
        if key is None:
            return True
        expected = f"Bearer {key.get_secret_value()}".encode()
        given = self.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        if hmac.compare_digest(given, expected):
            return True
        self.send_json(401, error_body("missing or invalid API key", "invalid_request_error", "invalid_api_key"))
        return False

    def sent_status_fault(self, fault: str | None, retry_after_s: float | None) -> bool:
        """For an injected ``status:<code>`` fault, send that status and return True; else False."""
        if fault is None or not fault.startswith("status:"):
            return False
        self.send_status(int(fault.split(":", 1)[1]), retry_after_s)
        return True

    def send_status(self, status: int, retry_after_s: float | None) -> None:
        """An injected HTTP error (429 and 503 with ``Retry-After`` when given)."""
        headers = {"Retry-After": f"{retry_after_s:g}"} if retry_after_s is not None and status in (429, 503) else {}
        kind = "rate_limit_error" if status == 429 else "server_error"
        self.send_json(status, error_body(f"injected transient HTTP {status}", kind), headers)

    def send_json(self, status: int, body: dict[str, object], headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
