"""Rule gate: empty or degenerate answers are scored without calling the judge.

A judge can be fooled by answers that say nothing ("one token to fool the
judge": strings like ``Thought process:`` earn false rewards), and calling it
on them wastes requests. ``gate_reason`` looks at the candidate *after*
``<think>`` stripping and returns why it is degenerate, or None:

* ``empty``: nothing left after stripping whitespace;
* ``no_content``: not a single letter or digit (any script): only
  whitespace, punctuation or symbols, e.g. ``...``, ``!!!``, ``{}``;
* ``judge_bait``: only a known prefix that fools judges, with nothing else
  but punctuation and markup around it (case-insensitive, after NFKC), from
  ``JUDGE_BAIT_PHRASES``: ``Thought process:``, ``**Final answer:**``,
  ``Reasoning -``, ...;
* ``repetitive``: at least ``REPEAT_MIN_WORDS`` words of which one makes up
  ``REPEAT_WORD_SHARE`` or more, or at least ``REPEAT_MIN_CHARS`` characters
  that zlib compresses to under ``REPEAT_COMPRESSION`` of their size
  (``"ha" * 50``, ``"best.com " * 10``).

A gated sample is not sent to the judge; its judge term gets the rubric's
minimum reward (``Rubric.min_reward``, -0.5 for seed000: the same as wrongly
blocking a good request, below any genuine attempt), no criterion scores, and
is counted as ``judge/rule_gated`` (and ``judge/rule_gated/<reason>``).
Answers like ``Blocked`` or ``nashville.com`` are never gated.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections import Counter

__all__ = [
    "GATE_REASONS",
    "JUDGE_BAIT_PHRASES",
    "REPEAT_COMPRESSION",
    "REPEAT_MIN_CHARS",
    "REPEAT_MIN_WORDS",
    "REPEAT_WORD_SHARE",
    "gate_reason",
]

GATE_REASONS = ("empty", "no_content", "judge_bait", "repetitive")
JUDGE_BAIT_PHRASES = (
    "thought process",
    "thinking process",
    "thoughts",
    "reasoning",
    "analysis",
    "let me think",
    "let's think step by step",
    "step 1",
    "answer",
    "final answer",
    "the answer is",
    "solution",
    "response",
    "output",
    "result",
    "verdict",
    "score",
    "evaluation",
    "explanation",
)
REPEAT_MIN_WORDS = 6
REPEAT_WORD_SHARE = 0.6
REPEAT_MIN_CHARS = 64
REPEAT_COMPRESSION = 0.3

_BAIT_RE = re.compile(
    r"^[\W_]*(?:" + "|".join(re.escape(p).replace(r"\ ", r"\s+") for p in JUDGE_BAIT_PHRASES) + r")[\W_]*$",
    re.IGNORECASE,
)


def _has_content(text: str) -> bool:
    return any(unicodedata.category(c)[0] in "LN" for c in text)


def _is_repetitive(text: str) -> bool:
    words = text.casefold().split()
    if len(words) >= REPEAT_MIN_WORDS:
        _, top = Counter(words).most_common(1)[0]
        if top / len(words) >= REPEAT_WORD_SHARE:
            return True
    data = text.encode("utf-8", "surrogatepass")
    return len(data) >= REPEAT_MIN_CHARS and len(zlib.compress(data, 9)) < REPEAT_COMPRESSION * len(data)


def gate_reason(candidate: str) -> str | None:
    """Why ``candidate`` (think-stripped) is degenerate, or None if the judge should see it."""
    text = unicodedata.normalize("NFKC", candidate).strip()
    if not text:
        return "empty"
    if not _has_content(text):
        return "no_content"
    if _BAIT_RE.match(text):
        return "judge_bait"
    if _is_repetitive(text):
        return "repetitive"
    return None
