"""Development stand-in judge: an OpenAI-compatible HTTP server that scores
domain-name answers by a transparent heuristic.

This is NOT a real judge. It exists so that the whole pipeline (prompt format,
HTTP client, concurrency, failure handling, training) can run offline and
deterministically. The HTTP plumbing (keep-alive, auth, JSON bodies, the
in-flight gauge, ``GET /stats``, the ready line and parent watch) is
``rewards/stand_in/http.py``'s and ``rewards/stand_in/serve.py``'s, shared with the
stand-in engines. Endpoints
(HTTP/1.1 keep-alive, JSON bodies with Content-Length):

* ``GET /v1/models`` lists one model (``--model``).
* ``POST /v1/chat/completions`` reads the *last user message*, takes the
  business description between ``<<<REQUEST`` / ``REQUEST>>>`` and the candidate
  between ``<<<CANDIDATE`` / ``CANDIDATE>>>`` (the fences of
  ``rewards/judge/llm_judge.py``), reads the rubric's criterion names from the system
  message (lines matching ``rewards.judge.llm_judge.CRITERION_LINE_RE``), and answers a
  standard chat completion whose ``choices[0].message.content`` is the JSON
  verdict ``{"<criterion>": {"reason": ..., "score": ...}}`` plus ``usage``
  (token counts approximated as whitespace-separated words). Bad requests get
  400 with a JSON error body; unknown paths 404.

Verdicts: ``rewards/stand_in/judge_heuristic.py``'s scores (relevance, memorability,
length; any other criterion their mean) and, when the system message asks for
one, its request check, plus its known biases (``--length-bias``, ``--position-bias``).
A group request (labelled blocks ``<<<CANDIDATE A`` ... ``CANDIDATE A>>>``,
``rewards/judge/group.py``) gets ``{"A": <verdict>, ...}``; its transient faults are
keyed by the whole group, its persistent ones by each candidate (a failing one fails
the request, a malformed one's label gets a non-object: a partial answer).

Latency (``--latency-s`` L): fixed, or uniform in L +/- ``--latency-jitter-s``
(clipped at 0), or log-normal with mean L and ``--latency-sigma``; drawn per
(request, attempt) from ``--seed``, so runs are reproducible.

Faults, for tests. *Persistent* faults are deterministic per candidate, so a
given sample always fails or always succeeds: with ``--fail-rate F`` a request
whose candidate has ``fault_bucket(candidate, "fail") < F`` gets
``--fail-status`` (default 500) and a JSON error body; otherwise, with
``--malformed-rate M``, one whose ``fault_bucket(candidate, "malformed") < M``
gets a 200 completion whose content is not JSON. *Transient* faults are drawn
per (seed, attempt number, request), where the attempt number counts how
often this server has seen the same (description, candidate), so a retry
draws again and can succeed: ``--hang-rate`` (the request is held for
``--hang-s`` and the connection dropped without an answer), ``--status-rate
429=0.05,503=0.05`` (answered at once with that status; 429 and 503 carry
``Retry-After: --retry-after-s`` when given), ``--empty-rate`` (content
``""``) and ``--flaky-malformed-rate`` (non-JSON content). One uniform draw
picks at most one transient fault, in that order (rates must sum to <= 1).

Outage (``--outage-after-requests N --outage-s T``): after N chat requests
(counted after auth), every chat request is answered HTTP 503 (with
``--retry-after-s`` when given) for T seconds, then served normally again: one
outage per server. ``GET /v1/models`` keeps answering through it (the API's
front door is up, its model is not), so only chat requests tell.

Auth: with ``--api-key-env NAME`` and NAME set (non-empty), every request must
carry ``Authorization: Bearer <value>``, else 401. The key is never printed.

Run: ``python -m rewards.stand_in.judge_server --port 0`` prints one line
``JUDGE_SERVER_READY port=<port>`` (flushed) once listening, then serves until
SIGINT/SIGTERM, and then writes its request and fault counts to stderr
(``STATS_PREFIX``). Tests use ``JudgeServer`` in-process.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass

from rewards.judge.group import GROUP_BLOCK_RE
from rewards.judge.prompt import (
    CANDIDATE_CLOSE,
    CANDIDATE_OPEN,
    CRITERION_LINE_RE,
    REQUEST_CHECK_KEY,
    REQUEST_CLOSE,
    REQUEST_OPEN,
)
from rewards.stand_in.http import (  # the HTTP plumbing every stand-in shares
    BadRequest,
    ChatHandler,
    ChatHTTPServer,
    chat_completion,
    error_body,
    fault_bucket,
    message_text,
    parse_status_rates,
)
from rewards.stand_in.judge_heuristic import group_verdict, heuristic_verdict, length_points, with_bias
from rewards.stand_in.judge_settings import (
    DEFAULT_MODEL,
    MALFORMED_CONTENT,
    ServerSettings,
    injects_failure,
    injects_malformed,
    reply_latency,
    transient_fault,
)
from rewards.stand_in.outage import Outage
from rewards.stand_in.serve import ServerThread, api_key_from_env, serve, watch_parent

__all__ = [
    "BadRequest",
    "JudgeRequest",
    "JudgeServer",
    "ServerSettings",
    "chat_completion",
    "error_body",
    "fault_bucket",
    "heuristic_verdict",
    "main",
    "parse_judge_request",
    "parse_status_rates",
    "watch_parent",
]

logger = logging.getLogger(__name__)

STATS_PREFIX = "judge_server: stats "
"""On exit the CLI writes one stderr line ``STATS_PREFIX + {"completions_served", "faults"}`` (JSON)."""
# --------------------------------------------------------------------------
# Request parsing (pure)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgeRequest:
    """What the server needs from one chat-completion request."""

    model: str
    description: str
    candidate: str
    criteria: list[str]
    request_check: bool = False
    group: tuple[tuple[str, str], ...] = ()  # (label, text) in the shown order, for a group request

    @property
    def texts(self) -> tuple[str, ...]:
        """The candidates' texts (one for a pointwise request)."""
        return tuple(text for _, text in self.group) if self.group else (self.candidate,)


def _fenced(text: str, opening: str, closing: str) -> str:
    match = re.search(rf"^{re.escape(opening)}\n(.*?)\n{re.escape(closing)}$", text, re.DOTALL | re.MULTILINE)
    if match is None:
        raise BadRequest(f"the last user message has no {opening} ... {closing} block")
    return match.group(1)


def parse_judge_request(body: object) -> JudgeRequest:
    """Extract description, candidate and criterion names; BadRequest if impossible."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise BadRequest("'messages' must be a list of message objects")
    users = [m for m in messages if m.get("role") == "user"]
    if not users:
        raise BadRequest("'messages' has no user message")
    user_text = message_text(users[-1])
    system_text = "\n".join(message_text(m) for m in messages if m.get("role") == "system")
    criteria = [json.loads(m.group(1)) for m in CRITERION_LINE_RE.finditer(system_text)]
    model = body.get("model")
    group = tuple((m.group(1), m.group(2)) for m in GROUP_BLOCK_RE.finditer(user_text))
    return JudgeRequest(
        model=model if isinstance(model, str) and model else DEFAULT_MODEL,
        description=_fenced(user_text, REQUEST_OPEN, REQUEST_CLOSE),
        candidate="\0".join(t for _, t in group) if group else _fenced(user_text, CANDIDATE_OPEN, CANDIDATE_CLOSE),
        criteria=criteria,
        request_check=json.dumps(REQUEST_CHECK_KEY) in system_text,
        group=group,
    )


# --------------------------------------------------------------------------
# HTTP server
# --------------------------------------------------------------------------


def _request_key(request: JudgeRequest) -> bytes:
    return hashlib.sha256(f"{request.description}\0{request.candidate}".encode("utf-8", "surrogatepass")).digest()


class _JudgeHTTPServer(ChatHTTPServer):
    """The chat server with the simulated outage of its settings."""

    def __init__(self, address: tuple[str, int], handler: type[ChatHandler], settings: ServerSettings) -> None:
        super().__init__(address, handler, settings)
        self.outage = Outage(settings.outage_after_requests, settings.outage_s)


class _Handler(ChatHandler):
    """Answers chat completions with heuristic verdicts (module docstring)."""

    server: _JudgeHTTPServer

    def answer(self, raw: bytes) -> None:
        if self.server.outage.down():
            self.server.count_fault("outage")
            self.send_status(503, self.server.settings.retry_after_s)
            return
        try:
            request = parse_judge_request(json.loads(raw.decode("utf-8")))
        except (BadRequest, UnicodeDecodeError, json.JSONDecodeError) as err:
            self.send_json(400, error_body(f"bad request: {err}", "invalid_request_error"))
            return
        self._answer(request, prompt_words=len(raw.split()))

    def _answer(self, request: JudgeRequest, prompt_words: int) -> None:
        settings: ServerSettings = self.server.settings
        attempt = self.server.next_attempt(_request_key(request))
        fault = transient_fault(settings, request.description, request.candidate, attempt)
        if fault is not None:
            self.server.count_fault(fault)
        self.server.begin_completion()
        try:
            if self.sent_status_fault(fault, settings.retry_after_s):
                return
            if fault == "hang":
                self.server.stopping.wait(settings.hang_s)
                self.close_connection = True  # drop it unanswered; the client gave up long ago
                return
            delay = reply_latency(settings, request.description, request.candidate, attempt)
            if delay > 0:
                time.sleep(delay)
        finally:
            self.server.end_completion()
        if any(injects_failure(text, settings.fail_rate) for text in request.texts):
            self.send_json(settings.fail_status, error_body("injected failure", "server_error"))
            return
        self.send_json(200, chat_completion(request.model, self._content(request, fault), prompt_words))

    def _content(self, request: JudgeRequest, fault: str | None) -> str:
        settings: ServerSettings = self.server.settings
        if fault == "empty":
            return ""
        if fault == "malformed" or (
            injects_malformed(request.candidate, settings.malformed_rate) and not request.group
        ):
            return MALFORMED_CONTENT
        if request.group:  # a persistent malformed candidate gets a non-object: a partial answer
            bad = {label for label, text in request.group if injects_malformed(text, settings.malformed_rate)}
            args = (request.request_check, settings.position_bias, settings.length_bias, bad)
            return json.dumps(group_verdict(request.description, request.group, request.criteria, *args))
        verdict = heuristic_verdict(request.description, request.candidate, request.criteria, request.request_check)
        return json.dumps(with_bias(verdict, length_points(request.candidate, settings.length_bias)))


class JudgeServer(ServerThread):
    """The heuristic judge server, runnable in-process (``start``/``stop`` or ``with``).

    Invariant: between ``start`` and ``stop`` it listens on ``host:port``
    (``port`` is the real port, also when 0 was asked for).
    """

    name = "judge server"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        settings: ServerSettings | None = None,
        handler: type[ChatHandler] | None = None,
    ) -> None:
        """``handler``: a subclass of this server's handler (e.g. a test's, recording requests)."""
        super().__init__(host, port, settings or ServerSettings(), handler or _Handler, _JudgeHTTPServer)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--latency-s", type=float, default=0.0, help="sleep before each completion")
    parser.add_argument("--api-key-env", default=None, help="require 'Authorization: Bearer $NAME' when NAME is set")
    parser.add_argument("--latency-jitter-s", type=float, default=0.0, help="uniform latency in L +/- this")
    parser.add_argument("--latency-sigma", type=float, default=0.0, help="log-normal latency with mean L")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="persistent: share of candidates failed")
    parser.add_argument("--fail-status", type=int, default=500)
    parser.add_argument("--malformed-rate", type=float, default=0.0, help="persistent: share of candidates")
    parser.add_argument("--status-rate", default="", help="transient: e.g. 429=0.05,503=0.05")
    parser.add_argument("--retry-after-s", type=float, default=None, help="Retry-After of injected 429/503")
    parser.add_argument("--hang-rate", type=float, default=0.0, help="transient: share of requests held")
    parser.add_argument("--hang-s", type=float, default=30.0, help="how long a hung request is held")
    parser.add_argument("--empty-rate", type=float, default=0.0, help="transient: empty content")
    parser.add_argument("--flaky-malformed-rate", type=float, default=0.0, help="transient: non-JSON content")
    parser.add_argument("--seed", type=int, default=0, help="seed of transient faults and latency draws")
    parser.add_argument("--position-bias", type=float, default=0.0, help="group: points for the first shown")
    parser.add_argument("--length-bias", type=float, default=0.0, help="points times min(1, chars/100)")
    parser.add_argument("--outage-after-requests", type=int, default=None, help="outage: 503s after N requests")
    parser.add_argument("--outage-s", type=float, default=0.0, help="outage: for this many seconds")
    parser.add_argument(
        "--parent-pid",
        type=int,
        default=None,
        help="exit when this process (the training driver) is gone, however it ended",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        settings = ServerSettings(
            model=args.model,
            latency_s=args.latency_s,
            api_key=api_key_from_env(args.api_key_env),
            fail_rate=args.fail_rate,
            fail_status=args.fail_status,
            malformed_rate=args.malformed_rate,
            latency_jitter_s=args.latency_jitter_s,
            latency_sigma=args.latency_sigma,
            status_rates=parse_status_rates(args.status_rate),
            retry_after_s=args.retry_after_s,
            hang_rate=args.hang_rate,
            hang_s=args.hang_s,
            empty_rate=args.empty_rate,
            flaky_malformed_rate=args.flaky_malformed_rate,
            seed=args.seed,
            position_bias=args.position_bias,
            length_bias=args.length_bias,
            outage_after_requests=args.outage_after_requests,
            outage_s=args.outage_s,
        )
    except ValueError as err:
        raise SystemExit(f"judge_server: {err}") from None
    server = JudgeServer(args.host, args.port, settings)
    return serve(
        server,
        "JUDGE_SERVER_READY",
        "judge_server",
        args.api_key_env,
        args.parent_pid,
        lambda: {"completions_served": server.completions_served, "faults": server.faults},
    )


if __name__ == "__main__":
    raise SystemExit(main())
