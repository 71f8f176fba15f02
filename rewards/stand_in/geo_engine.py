"""Development stand-in generative engine for seed 001's GEO reward (``rewards/recipes/geo.py``).

This is NOT a language model: an OpenAI-compatible server (``rewards/stand_in/server.py``:
auth, ``/v1/models``, ``/stats``, latency and fault injection) that answers a
query from numbered sources by a transparent, deterministic rule a rewrite can
honestly improve. It reads the last user message in ``rewards.recipes.geo.engine_messages``'
format (a ``Query: …`` line, then one ``[n] <text>`` line per source) and:

1. takes the query's terms: ``rewards.recipes.geo.query_terms`` (distinct lower-case
   words of 3+ letters that are not stopwords);
2. a source *mentions* a term when the term occurs in its lower-cased text,
   also inside a longer word (``coffeeshop.com`` mentions ``coffee`` and
   ``shop``); per source: ``hits`` = terms it mentions, ``first`` = the
   character offset of its earliest mention;
3. cites the sources with ``hits >= 1``, at most ``MAX_CITED``, ranked by more
   hits, then earlier first mention, then lower number;
4. writes one sentence per cited source, in that order: the source's sentence
   (``rewards.recipes.geo.split_sentences``) that mentions the most terms (the earliest
   on ties), cut to its first ``MAX_WORDS`` words, its final punctuation
   dropped, then `` [n].``;
5. answers ``No source answers this query.`` (no citation) when no source
   mentions a term.

So a rewrite that states more of the query's terms, and states them earlier,
is cited earlier (more position weight), and a longer on-topic sentence earns
more words, up to the cap: what the GEO metrics reward.

Run: ``python -m rewards.stand_in.geo_engine --port 0 [--latency-s 0.1]
[--status-rate 429=0.1,503=0.1] [--malformed-rate 0.05] [--api-key-env NAME]
[--parent-pid PID]``; it prints ``STAND_IN_SERVER_READY port=<port>`` once
listening (what ``ray_jobs/runtime/local_servers.py`` waits for when it starts
``reward.engines.<name>.local_server: rewards.stand_in.geo_engine``).
"""

from __future__ import annotations

import re
from typing import Any

from rewards.recipes.geo import query_terms, split_sentences
from rewards.stand_in.server import BadRequest, message_text
from rewards.stand_in.server import main as stand_in_main

DEFAULT_MODEL = "relay-geo-engine"
MAX_CITED = 5
MAX_WORDS = 30
NO_ANSWER = "No source answers this query."
_SOURCE_RE = re.compile(r"^\[(\d+)\] ?(.*)$")
_MARKER_RE = re.compile(r"\[[\d\s,]*\]")


def parse_engine_request(text: str) -> tuple[str, list[str]]:
    """``(query, sources)`` of a user message; ``BadRequest`` without a ``Query:`` line or sources."""
    query: str | None = None
    sources: list[str] = []
    for line in text.splitlines():
        if line.startswith("Query:") and query is None:
            query = line[len("Query:") :].strip()
            continue
        match = _SOURCE_RE.match(line)
        if match and int(match.group(1)) == len(sources) + 1:
            sources.append(match.group(2))
    if query is None or not sources:
        raise BadRequest("the last user message needs a 'Query:' line and numbered '[n] ...' source lines")
    return query, sources


def _mentions(text: str, terms: list[str]) -> tuple[int, int]:
    """(terms ``text`` mentions, offset of the earliest mention or len(text))."""
    lowered = text.lower()
    found = [lowered.find(t) for t in terms]
    hits = [i for i in found if i >= 0]
    return len(hits), min(hits, default=len(text))


def _sentence(source: str, terms: list[str]) -> str:
    sentences = split_sentences(_MARKER_RE.sub(" ", source)) or [source]
    best = max(sentences, key=lambda s: (_mentions(s, terms)[0], -sentences.index(s)))
    cut = " ".join(best.split()[:MAX_WORDS]).rstrip(".!?;:, ")
    return cut or best.strip()


def answer(query: str, sources: list[str]) -> str:
    """The engine's answer (module docstring)."""
    terms = query_terms(query)
    ranked = []
    for n, source in enumerate(sources, start=1):
        hits, first = _mentions(source, terms)
        if hits:
            ranked.append((-hits, first, n))
    ranked.sort()
    lines = [f"{_sentence(sources[n - 1], terms)} [{n}]." for _, _, n in ranked[:MAX_CITED]]
    return " ".join(lines) if lines else NO_ANSWER


def respond(messages: list[dict[str, Any]], model: str) -> str:
    """``stand_in_server``'s ``respond``: the answer to the last user message."""
    users = [m for m in messages if m.get("role") == "user"]
    if not users:
        raise BadRequest("'messages' has no user message")
    return answer(*parse_engine_request(message_text(users[-1])))


def main(argv: list[str] | None = None) -> int:
    return stand_in_main(
        respond,
        argv,
        name="geo_engine_server",
        default_model=DEFAULT_MODEL,
        description="Stand-in generative engine for the GEO reward (rule in the module docstring).",
    )


if __name__ == "__main__":
    raise SystemExit(main())
