"""Running a stand-in chat server: in process (``ServerThread``, for tests and
benchmarks) or as a command (``serve``: the ready line on stdout, SIGINT/SIGTERM,
and the parent watch that stops a server whose driver died).

The request handling is ``rewards/stand_in/http.py``'s; the stand-ins
(``rewards/stand_in/server.py``, ``rewards/stand_in/judge_server.py``) use both.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from pydantic import SecretStr

from rewards.stand_in.http import ChatHandler, ChatHTTPServer

__all__ = ["ServerThread", "api_key_from_env", "serve", "watch_parent"]


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
