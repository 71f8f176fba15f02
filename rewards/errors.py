"""Errors of the reward layer.

A reward term that cannot produce a score raises ``RewardError`` with a short,
stable ``cause`` string (``judge_timeout``, ``judge_http_500``, ...), suitable
for counting failures by cause. A failed term means "no score", never 0.

No message built here or by the callers may contain an API key.
"""

from __future__ import annotations


class RewardError(Exception):
    """A reward term could not score one sample.

    ``cause`` is a short machine-friendly token (no spaces, no secrets);
    ``detail`` is an optional human-readable explanation for logs.
    """

    def __init__(self, cause: str, detail: str = "") -> None:
        self.cause = cause
        self.detail = detail
        super().__init__(f"{cause}: {detail}" if detail else cause)


class JudgeError(RewardError):
    """The judge could not score one sample.

    ``requests`` is how many HTTP requests were sent to the judge while trying
    (0 when the failure happened before any request was sent); ``trace`` (a
    ``rewards.metrics.JudgeTrace``, when known) holds the retries and latencies.
    """

    def __init__(self, cause: str, detail: str = "", *, requests: int = 1, trace: object | None = None) -> None:
        super().__init__(cause, detail)
        self.requests = requests
        self.trace = trace


class MissingApiKeyError(RuntimeError):
    """The environment variable that should hold the judge API key is unset or empty."""


class JudgeUnreachableError(RuntimeError):
    """The judge endpoint did not answer the start-up check."""


class LLMCallError(RewardError):
    """A call a reward term made to an LLM engine (``ctx.llm(name).chat``) failed.

    ``cause`` is one key-free line naming the engine, e.g. ``engine geo: HTTP
    503 after 4 attempts`` or ``engine geo: malformed reply after 2 attempts``;
    the composer makes the term's sample unscored with it as ``reward_error``.
    """

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
