"""Seed 001's reward: how much more a generative engine cites a rewritten source (GEO).

The policy rewrites one web source of a dataset row (``query``: the user's
question; ``sources``: a list of source texts; ``target``: the 0-based index
of the source to rewrite). The term ``visibility_gain(prompt, completion,
ctx)`` asks a RAG engine (``ctx.llm(engine)``, default ``geo``) to answer the
query from the numbered sources twice, once with the original target source
and once with the completion (``<think>…</think>`` stripped) in its place, and
returns the target's visibility in the second answer minus that in the
first. The original's answer is the same request for every sample of a row:
the engine's reply cache answers it once per row (identical requests in
flight share one), not once per sample.

**The engine prompt** (``engine_messages``): a system message asking for an
answer citing sources as ``[n]``, and ``Query: <query>`` then ``Sources:`` and
one line ``[n] <text>`` per source, numbered from 1. Whitespace in a source
is collapsed to single spaces and bracketed numbers such as ``[3]`` become
``(3)``, so no source can fake a line or a citation.

**Visibility** (the GEO paper's objective impression metrics, Aggarwal et al.
2023), for source i of an answer split into sentences s_0 … s_{N-1}:

* sentences: the answer is split after ``.``, ``!`` or ``?`` followed by
  whitespace, and at line breaks; citation markers at the start of a
  sentence belong to the sentence before (``Text. [2] Next.`` cites 2 in
  ``Text.``);
* citations of a sentence: the numbers in its ``[n]``, ``[n, m]`` or
  ``[n][m]`` markers that name a source (1 … number of sources);
* |s|: the words of the sentence (whitespace-separated tokens with a letter
  or digit, markers removed);
  c(s): how many distinct sources it cites; w_k = exp(-k / N), so earlier
  sentences weigh more (1 for the first, e^-1 ≈ 0.37 towards the last);
* ``word``    = Σ_{s_k cites i} |s_k| / c(s_k)        / Σ_k |s_k|
* ``pos``     = Σ_{s_k cites i} w_k / c(s_k)           / Σ_k w_k
* ``wordpos`` = Σ_{s_k cites i} |s_k| · w_k / c(s_k)   / Σ_k |s_k| · w_k
  (the position-adjusted word count, the paper's main metric). Each is in
  [0, 1] and they sum to at most 1 over the sources; all are 0 for an answer
  without words;
* ``score = a·wordpos + b·pos + c·word`` with ``weights = (a, b, c)``,
  default ``(0.6, 0.2, 0.2)``: seed 001's ``0.6*new_score +
  0.2*new_pos_score + 0.2*new_word_score``.

The reward is ``score(rewritten) - score(original)``, in [-1, 1]. A row
without usable ``query`` / ``sources`` / ``target`` fails the term (no score),
as does a failed engine call (``LLMCallError``); neither is ever 0.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rewards.context import RewardContext
from rewards.errors import RewardError
from rewards.judge.prompt import strip_think

__all__ = [
    "DEFAULT_WEIGHTS",
    "ENGINE_SYSTEM_PROMPT",
    "Visibility",
    "citations",
    "engine_messages",
    "query_terms",
    "split_sentences",
    "visibility",
    "visibility_gain",
    "words",
]

DEFAULT_WEIGHTS = (0.6, 0.2, 0.2)
"""(wordpos, pos, word): seed 001's weights of new_score, new_pos_score, new_word_score."""
ENGINE_SYSTEM_PROMPT = (
    "You are a search engine. Answer the user's query in a few sentences using only the numbered sources. "
    "End every sentence that uses a source with its number in brackets, e.g. [2]."
)
_MARKER_RE = re.compile(r"\[\s*\d+(?:\s*,\s*\d+)*\s*\]")
_LEADING_MARKERS_RE = re.compile(r"^(?:\s*\[\s*\d+(?:\s*,\s*\d+)*\s*\])+")
_SPLIT_RE = re.compile(r"(?<=[.!?])\s+|\s*\n\s*")
_TERM_RE = re.compile(r"[a-z]{3,}")
QUERY_STOPWORDS = frozenset(
    "the and for with that this from what which where who how are our your you best top near about into "
    "some any can does good get find most more very one".split()
)


def split_sentences(answer: str) -> list[str]:
    """The answer's sentences (module docstring), without empty ones; leading markers move back."""
    sentences: list[str] = []
    for piece in _SPLIT_RE.split(answer.strip()):
        leading = _LEADING_MARKERS_RE.match(piece)
        if leading and sentences:
            sentences[-1] = f"{sentences[-1]} {leading.group(0).strip()}"
            piece = piece[leading.end() :]
        if piece.strip():
            sentences.append(piece.strip())
    return sentences


def citations(sentence: str, n_sources: int) -> set[int]:
    """The 1-based source numbers ``sentence`` cites (only 1 … ``n_sources``)."""
    cited = {int(n) for marker in _MARKER_RE.findall(sentence) for n in re.findall(r"\d+", marker)}
    return {n for n in cited if 1 <= n <= n_sources}


def words(sentence: str) -> int:
    """|s|: whitespace-separated words of ``sentence`` with citation markers removed (a token
    without a letter or digit, such as a lone ``.``, is not a word)."""
    return sum(1 for token in _MARKER_RE.sub(" ", sentence).split() if any(ch.isalnum() for ch in token))


@dataclass(frozen=True)
class Visibility:
    """A source's share of an answer (module docstring): each in [0, 1]."""

    word: float
    pos: float
    wordpos: float

    def score(self, weights: Sequence[float] = DEFAULT_WEIGHTS) -> float:
        """``a·wordpos + b·pos + c·word`` for ``weights = (a, b, c)``."""
        a, b, c = weights
        return a * self.wordpos + b * self.pos + c * self.word


def visibility(answer: str, source: int, n_sources: int) -> Visibility:
    """The visibility of 1-based ``source`` in ``answer`` (module docstring)."""
    sentences = split_sentences(answer)
    n = len(sentences)
    totals = [0.0, 0.0, 0.0]
    mine = [0.0, 0.0, 0.0]
    for k, sentence in enumerate(sentences):
        size, weight = words(sentence), math.exp(-k / n)
        cited = citations(sentence, n_sources)
        parts = (size, weight, size * weight)
        for j, part in enumerate(parts):
            totals[j] += part
            if source in cited:
                mine[j] += part / len(cited)
    share = [m / t if t > 0 else 0.0 for m, t in zip(mine, totals)]
    return Visibility(word=share[0], pos=share[1], wordpos=share[2])


def query_terms(query: str) -> list[str]:
    """Distinct lower-case ASCII words of 3+ letters of ``query`` that are not ``QUERY_STOPWORDS``, in order."""
    return list(dict.fromkeys(w for w in _TERM_RE.findall(query.lower()) if w not in QUERY_STOPWORDS))


def _clean_source(text: str) -> str:
    return " ".join(re.sub(r"\[(\s*\d[\d\s,]*)\]", r"(\1)", text).split())


def engine_messages(query: str, sources: Sequence[str]) -> list[dict[str, str]]:
    """The engine's chat messages for ``query`` and ``sources`` (module docstring)."""
    lines = [f"[{i}] {_clean_source(text)}" for i, text in enumerate(sources, start=1)]
    user = f"Query: {' '.join(query.split())}\n\nSources:\n" + "\n".join(lines)
    return [{"role": "system", "content": ENGINE_SYSTEM_PROMPT}, {"role": "user", "content": user}]


def _row(row: Mapping[str, Any]) -> tuple[str, list[str], int]:
    """``(query, sources, target)`` of a row; ``RewardError`` naming what is wrong."""
    query, sources, target = row.get("query"), row.get("sources"), row.get("target")
    if not isinstance(query, str) or not query.strip():
        raise RewardError("geo: the row has no 'query' string")
    if not isinstance(sources, list) or not sources or not all(isinstance(s, str) for s in sources):
        raise RewardError("geo: the row's 'sources' is not a non-empty list of strings")
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < len(sources):
        raise RewardError(f"geo: the row's 'target' {target!r} is not an index into its {len(sources)} sources")
    return query, sources, target


def _weights(weights: Sequence[float]) -> tuple[float, float, float]:
    if (
        not isinstance(weights, (list, tuple))
        or len(weights) != 3
        or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights)
    ):
        raise RewardError(f"geo: weights must be three numbers >= 0 (wordpos, pos, word), got {weights!r}")
    return float(weights[0]), float(weights[1]), float(weights[2])


async def visibility_gain(
    prompt: str, completion: str, ctx: RewardContext, *, engine: str = "geo", weights: Sequence[float] = DEFAULT_WEIGHTS
) -> float:
    """``score(rewritten) - score(original)`` of the row's target source (module docstring).

    Options (``reward.terms[*].options``): ``engine``, the ``reward.engines``
    name of the RAG engine; ``weights``, (wordpos, pos, word).
    """
    query, sources, target = _row(ctx.row)
    weights = _weights(weights)
    rewritten = [*sources[:target], strip_think(completion), *sources[target + 1 :]]
    llm = ctx.llm(engine)
    before, after = await asyncio.gather(
        llm.chat(engine_messages(query, sources)), llm.chat(engine_messages(query, rewritten))
    )
    n = len(sources)
    return visibility(after, target + 1, n).score(weights) - visibility(before, target + 1, n).score(weights)
