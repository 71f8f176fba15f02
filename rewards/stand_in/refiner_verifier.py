"""Development stand-in verifier for seed 004's refiner recipe (not a judge model).

It answers the verification requests of ``rewards.recipes.refiner.verification`` by a
transparent rule that a policy can honestly learn at toy scale, so the refiner
recipe runs offline and deterministically on CPU (configs/refiner_grpo/cpu_1_grpo.yaml).

**Request.** The last user message holds the fenced blocks
``rewards.recipes.refiner.VERIFY_BLOCKS`` (``<<<NAME`` … ``NAME>>>``): the question, the
reference facts, the key terms (one per line), the false claims (one per line)
and the answer. ``(none)`` is an empty list.

**Rule.** With the answer lower-cased, the answer is *verified* when

* it contains every key term (lower-cased) as a substring, and
* it contains no false claim (lower-cased) as a substring.

The question and the facts are read but not used: the key terms and false
claims are the facts' checkable core (the toy rows are written so: see
``scripts/data/make_refiner_dataset.py``). Substring matching is deliberate: the
built-in tiny model writes run-together words (``electricbuses``), and its
words are the toy data's key terms. The reply is the JSON object
``{"reason": ..., "verified": ...}`` naming the missing terms or the false
claims found. A request without the blocks, or with no key term (nothing to
check), is refused with HTTP 400 (``BadRequest``), so the term is left
unscored with that cause rather than scored.

The HTTP side (auth, faults, latency, the ready line) is
``rewards/stand_in/server.py``'s; its options apply::

    python -m rewards.stand_in.refiner_verifier --port 0 [--latency-s 0.1 --status-rate 503=0.1]

``reward.engines.<name>.local_server: rewards.stand_in.refiner_verifier`` makes the
training driver start it for the run (configs/refiner_grpo/cpu_1_grpo.yaml).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from rewards.recipes.refiner import VERIFY_BLOCKS
from rewards.stand_in.server import BadRequest, message_text
from rewards.stand_in.server import main as serve

__all__ = ["MODEL", "main", "parse_blocks", "respond", "verify"]

MODEL = "relay-refiner-verifier"
"""The model name the stand-in serves."""

_BLOCK_RE = re.compile(r"<<<([A-Z_]+)\n(.*?)\n\1>>>", re.DOTALL)


def parse_blocks(text: str) -> dict[str, str]:
    """The fenced blocks of ``text`` by name (the first of each name wins).

    Invariant: fenced text cannot contain ``<<<`` or ``>>>`` (the sender
    neutralises it), so a block ends at its own closing fence.
    """
    blocks: dict[str, str] = {}
    for match in _BLOCK_RE.finditer(text):
        blocks.setdefault(match.group(1), match.group(2))
    return blocks


def _items(block: str) -> list[str]:
    lines = [line.strip() for line in block.splitlines()]
    return [] if lines == ["(none)"] else [line for line in lines if line]


def verify(key_terms: Sequence[str], false_claims: Sequence[str], answer: str) -> tuple[bool, str]:
    """(verified, reason) by the module docstring's rule. Pure.

    Raises ``BadRequest`` when there is no key term: an answer cannot be
    verified against nothing.
    """
    terms = [t.lower() for t in key_terms if t.strip()]
    if not terms:
        raise BadRequest("the request has no key terms to verify against")
    text = answer.lower()
    missing = [t for t in terms if t not in text]
    contradicted = [c for c in (c.lower() for c in false_claims if c.strip()) if c in text]
    if missing or contradicted:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"states the false claim {', '.join(contradicted)}"] if contradicted else []
        )
        return False, "; ".join(parts)
    return True, f"states {', '.join(terms)} and no false claim"


def respond(messages: Sequence[Mapping[str, Any]], model: str) -> str:
    """The reply content for a chat request: the JSON verdict of the last user message.

    Raises ``BadRequest`` for a request it cannot verify (no user message, a
    missing block, no key terms).
    """
    users = [m for m in messages if m.get("role") == "user"]
    if not users:
        raise BadRequest("no user message")
    blocks = parse_blocks(message_text(users[-1]))
    missing = [name for name in VERIFY_BLOCKS if name not in blocks]
    if missing:
        raise BadRequest(f"the request lacks the blocks {missing}")
    verified, reason = verify(_items(blocks["KEY_TERMS"]), _items(blocks["FALSE_CLAIMS"]), blocks["ANSWER"])
    return json.dumps({"reason": reason, "verified": verified})


def main(argv: list[str] | None = None) -> int:
    """The command line (``rewards/stand_in/server.py``'s options, model ``MODEL``)."""
    return serve(
        respond,
        argv,
        name="refiner_verifier_server",
        default_model=MODEL,
        description="Stand-in verifier of seed 004's refiner recipe (not a judge model).",
    )


if __name__ == "__main__":
    raise SystemExit(main())
