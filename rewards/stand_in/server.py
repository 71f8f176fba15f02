"""A generic OpenAI-compatible stand-in chat server answering with a
``respond(messages, model) -> str`` function, on ``rewards/stand_in/http.py``'s plumbing.

Stand-in engines (``rewards/stand_in/geo_engine.py``) are a ``respond`` function
and ``main(respond, ...)``. Routes (behind the key check when a key is set;
unknown paths get 404): ``GET /v1/models``; ``GET /stats`` (``{"requests",
"peak_inflight", "faults"}``, so tests measure limits at the server); ``POST
/v1/chat/completions``, answered with a standard chat completion whose
content is ``respond(messages, model)`` (400 when the body is not a chat
request or ``respond`` raises ``BadRequest``; 500 when it raises anything else).

Faults, drawn per (``--seed``, attempt, messages), where the attempt counts how
often this server has seen the same messages, so a retry draws again and can
succeed: ``--status-rate 429=0.1,503=0.1`` (answered at once with that status;
429 and 503 carry ``Retry-After: --retry-after-s`` when given), ``--empty-rate``
(content ``""``) and ``--malformed-rate`` (content that is not JSON). One
uniform draw picks at most one fault, in that order (rates must sum to <= 1).
``--latency-s`` is slept before each answer, counted as in flight.

Auth: with ``--api-key-env NAME`` and NAME set (non-empty), every request must
carry ``Authorization: Bearer <value>``, else 401; the key is never printed.

Command line (``main``): ``--port 0`` picks a free port; once listening it
prints one line ``STAND_IN_SERVER_READY port=<port>`` (flushed) on stdout,
serves until SIGINT/SIGTERM or until ``--parent-pid`` is gone, then writes its
counts to stderr (one line ``<name>: stats {json}``). ``python -m
rewards.stand_in.server`` runs it with a ``respond`` that echoes the last user
message.

The plumbing was factored out of ``rewards/stand_in/judge_server.py`` into
``rewards/stand_in/http.py`` and ``rewards/stand_in/serve.py``, which both import;
each keeps only how it answers and which faults it injects.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from rewards.stand_in.http import (
    BadRequest,
    ChatHandler,
    ChatHTTPServer,
    chat_completion,
    check_fault_settings,
    error_body,
    fault_bucket,
    message_text,
    parse_status_rates,
    pick_fault,
)
from rewards.stand_in.serve import ServerThread, api_key_from_env, serve

__all__ = [
    "READY",
    "BadRequest",
    "Respond",
    "StandInServer",
    "StandInSettings",
    "main",
    "message_text",
    "parse_chat_request",
]

logger = logging.getLogger(__name__)

Respond = Callable[[list[dict[str, Any]], str], str]
READY = "STAND_IN_SERVER_READY"
MALFORMED_CONTENT = "I am sorry, I cannot answer in JSON today."


@dataclass(frozen=True)
class StandInSettings:
    """Behaviour of a ``StandInServer`` (module docstring); ``api_key`` None means no auth."""

    model: str = "relay-stand-in"
    api_key: SecretStr | None = None
    latency_s: float = 0.0
    status_rates: Mapping[int, float] = field(default_factory=dict)
    retry_after_s: float | None = None
    empty_rate: float = 0.0
    malformed_rate: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.latency_s < 0:
            raise ValueError("latency_s must be >= 0")
        check_fault_settings(self.status_rates, self.retry_after_s, self.api_key)
        if not all(0.0 <= r <= 1.0 for r in (self.empty_rate, self.malformed_rate)):
            raise ValueError("empty_rate and malformed_rate must be in [0, 1]")
        if sum(rate for _, rate in self.fault_plan()) > 1.0 + 1e-9:
            raise ValueError("the fault rates add up to more than 1")

    def fault_plan(self) -> list[tuple[str, float]]:
        """The faults and their rates, in draw order."""
        plan = [(f"status:{status}", rate) for status, rate in sorted(self.status_rates.items())]
        return plan + [("empty", self.empty_rate), ("malformed", self.malformed_rate)]

    def fault(self, key: str, attempt: int) -> str | None:
        """The fault of this (request, attempt), or None."""
        return pick_fault(fault_bucket(f"{self.seed}\0{attempt}\0{key}", "stand-in"), self.fault_plan())


def parse_chat_request(raw: bytes) -> tuple[list[dict[str, Any]], str | None]:
    """``(messages, model)`` of a chat-completion body; ``BadRequest`` if it is not one."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadRequest(f"the body is not JSON ({type(err).__name__})") from None
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise BadRequest("'messages' must be a non-empty list of message objects")
    model = body.get("model")
    return messages, model if isinstance(model, str) and model else None


class _StandInHandler(ChatHandler):
    server: ChatHTTPServer
    respond: Respond

    def answer(self, raw: bytes) -> None:
        settings: StandInSettings = self.server.settings
        try:
            messages, model = parse_chat_request(raw)
        except BadRequest as err:
            self.send_json(400, error_body(f"bad request: {err}", "invalid_request_error"))
            return
        key = json.dumps(messages, sort_keys=True, ensure_ascii=False)
        fault = settings.fault(
            key, self.server.next_attempt(hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest())
        )
        if fault is not None:
            self.server.count_fault(fault)
        failed: tuple[int, dict[str, object]] | None = None
        self.server.begin_completion()
        try:
            if self.sent_status_fault(fault, settings.retry_after_s):
                return
            if settings.latency_s > 0:
                self.server.stopping.wait(settings.latency_s)
            try:
                content = type(self).respond(messages, model or settings.model)
            except BadRequest as err:
                failed = 400, error_body(f"bad request: {err}", "invalid_request_error")
            except Exception as err:  # noqa: BLE001 - a respond bug is the server's 500
                logger.exception("respond failed")
                failed = 500, error_body(f"respond failed: {type(err).__name__}", "server_error")
        finally:
            self.server.end_completion()  # before any reply: a client's next request is never counted beside this one
        if failed is not None:
            self.send_json(*failed)
            return
        content = {"empty": "", "malformed": MALFORMED_CONTENT}.get(fault or "", content)
        self.send_json(200, chat_completion(model or settings.model, content, len(raw.split())))


class StandInServer(ServerThread):
    """A stand-in chat server answering with ``respond(messages, model)`` (module docstring)."""

    name = "stand-in server"

    def __init__(
        self, respond: Respond, host: str = "127.0.0.1", port: int = 0, settings: StandInSettings | None = None
    ) -> None:
        handler = type("StandInHandler", (_StandInHandler,), {"respond": staticmethod(respond)})
        super().__init__(host, port, settings or StandInSettings(), handler)

    def stats(self) -> dict[str, object]:
        """``{"requests", "peak_inflight", "faults"}`` so far (what ``GET /stats`` returns)."""
        return self.server.stats() if self._server else {"requests": 0, "peak_inflight": 0, "faults": {}}


def parse_args(argv: list[str] | None, description: str, default_model: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--model", default=default_model)
    parser.add_argument("--api-key-env", default=None, help="require 'Authorization: Bearer $NAME' when NAME is set")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    parser.add_argument("--latency-s", type=float, default=0.0, help="sleep before each answer")
    parser.add_argument("--status-rate", default="", help="e.g. 429=0.1,503=0.1")
    parser.add_argument("--retry-after-s", type=float, default=None, help="Retry-After of injected 429/503")
    parser.add_argument("--empty-rate", type=float, default=0.0, help="share of replies with empty content")
    parser.add_argument("--malformed-rate", type=float, default=0.0, help="share of replies with non-JSON content")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault draws")
    return parser.parse_args(argv)


def main(
    respond: Respond,
    argv: list[str] | None = None,
    *,
    name: str = "stand_in_server",
    description: str = "An OpenAI-compatible stand-in chat server.",
    default_model: str = "relay-stand-in",
    ready: str = READY,
) -> int:
    """The command line of a stand-in answering with ``respond`` (module docstring)."""
    args = parse_args(argv, description, default_model)
    try:
        settings = StandInSettings(
            model=args.model,
            api_key=api_key_from_env(args.api_key_env),
            latency_s=args.latency_s,
            status_rates=parse_status_rates(args.status_rate),
            retry_after_s=args.retry_after_s,
            empty_rate=args.empty_rate,
            malformed_rate=args.malformed_rate,
            seed=args.seed,
        )
    except ValueError as err:
        raise SystemExit(f"{name}: {err}") from None
    server = StandInServer(respond, args.host, args.port, settings)
    return serve(server, ready, name, args.api_key_env, args.parent_pid, server.stats)


def _echo(messages: list[dict[str, Any]], model: str) -> str:
    """The demo ``respond``: the last user message, as it came."""
    users = [m for m in messages if m.get("role") == "user"]
    return message_text(users[-1]) if users else ""


if __name__ == "__main__":
    raise SystemExit(main(_echo))
