"""The HTTP plumbing every stand-in chat server shares (``scripts/stand_in_server.py``,
``scripts/judge_server.py``, and the engines built on the former).

What is here: HTTP/1.1 keep-alive with Content-Length bodies (``ChatHandler``),
bearer-key auth (``--api-key-env``; the key is never printed), OpenAI-style
JSON and error bodies, the routes ``GET /v1/models`` and ``GET /stats``
(``{"requests": n, "peak_inflight": m, "faults": {...}}``: chat-completion
requests accepted so far, after auth and parsing, and the most of them being
answered at once, so tests measure limits at the server), an in-flight gauge
and connection tracking (``ChatHTTPServer``), in-process start/stop
(``ServerThread``), and the command line's ready line, signals and parent
watch (``serve``). A server answers ``POST /v1/chat/completions`` in its
handler's ``answer(raw_body)``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

from pydantic import SecretStr

__all__ = [
    "BadRequest",
    "ChatHTTPServer",
    "ChatHandler",
    "ServerThread",
    "api_key_from_env",
    "chat_completion",
    "error_body",
    "fault_bucket",
    "message_text",
    "parse_status_rates",
    "serve",
    "watch_parent",
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
        ``scripts/stand_in_server.py``'s); the base class only routes and authenticates."""
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


class ServerThread:
    """A ``ChatHTTPServer`` run in a background thread (``start``/``stop`` or ``with``).

    Invariant: between ``start`` and ``stop`` it listens on ``host:port``
    (``port`` is the real port, also when 0 was asked for).
    """

    name = "stand-in server"

    def __init__(
        self,
        host: str,
        port: int,
        settings: Any,
        handler: type[ChatHandler],
        server_class: type[ChatHTTPServer] = ChatHTTPServer,
    ) -> None:
        self._host, self._requested_port = host, port
        self.settings, self._handler, self._server_class = settings, handler, server_class
        self._server: ChatHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        state = f"port={self._server.server_address[1]}" if self._server else "stopped"
        return f"{type(self).__name__}(host={self._host!r}, {state})"

    @property
    def server(self) -> ChatHTTPServer:
        if self._server is None:
            raise RuntimeError(f"the {self.name} is not started")
        return self._server

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://<host>:<port>/v1``, the OpenAI client's base_url."""
        return f"http://{self._host}:{self.port}/v1"

    @property
    def completions_served(self) -> int:
        """Chat-completion requests accepted so far (after auth and parsing)."""
        return self._server.completions_served if self._server else 0

    @property
    def peak_in_flight(self) -> int:
        """Most chat-completion requests being answered at once so far."""
        return self._server.peak_in_flight if self._server else 0

    @property
    def faults(self) -> dict[str, int]:
        """Faults injected so far, by kind ("status:429", "malformed", ...)."""
        return dict(self._server.faults) if self._server else {}

    def start(self) -> ServerThread:
        if self._server is not None:
            raise RuntimeError(f"the {self.name} is already started")
        self._server = self._server_class((self._host, self._requested_port), self._handler, self.settings)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=self.name, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.stopping.set()  # releases held requests
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def watch_parent(parent_pid: int, stop: threading.Event, every_s: float = 1.0) -> None:
    """Set ``stop`` once ``parent_pid`` is no longer this process's parent (it died: a
    SIGKILLed driver runs no cleanup, and the server must not outlive it)."""

    def poll() -> None:
        while not stop.wait(every_s):
            if os.getppid() != parent_pid:
                stop.set()

    threading.Thread(target=poll, name="parent-watch", daemon=True).start()


def serve(
    server: ServerThread,
    ready: str,
    name: str,
    api_key_env: str | None,
    parent_pid: int | None,
    final_stats: Callable[[], dict[str, object]],
) -> int:
    """Run ``server`` until SIGINT/SIGTERM (or the parent is gone): print ``<ready> port=<port>``
    on stdout once listening, and ``<name>: stats <json of final_stats()>`` on stderr at the end."""
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    if parent_pid is not None:
        watch_parent(parent_pid, stop)
    server.start()
    if server.settings.api_key:
        auth = f"required (${api_key_env})"
    else:
        auth = f"none (${api_key_env} is not set)" if api_key_env else "none"
    print(f"{ready} port={server.port}", flush=True)
    print(f"{name}: serving {server.base_url}, auth {auth}", file=sys.stderr, flush=True)
    try:
        stop.wait()
    finally:
        stats = final_stats()
        server.stop()
        print(f"{name}: stats {json.dumps(stats)}", file=sys.stderr, flush=True)
    return 0


def api_key_from_env(api_key_env: str | None) -> SecretStr | None:
    """The key in ``$api_key_env`` (None when no variable is named or it is empty)."""
    value = os.environ.get(api_key_env, "") if api_key_env else ""
    return SecretStr(value) if value else None
