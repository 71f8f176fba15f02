"""Rule-based reward terms.

Every term is a plain, pure function ``(prompt: str, completion: str) -> float | None``
(None means "cannot score this sample", which leaves the sample unscored when the
term is weighted). ``RULE_TERMS`` maps the registry names used in
``reward.terms[*].name`` to these functions.
"""

from __future__ import annotations

import re
from collections.abc import Callable

RuleFn = Callable[[str, str], "float | None"]

DOMAIN_TLDS = ("com", "net", "org", "io", "co", "ai", "app", "dev")
_DOMAIN_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*\.(" + "|".join(DOMAIN_TLDS) + r")$", re.IGNORECASE)

LENGTH_FREE_CHARS = 40
"""Completions up to this many characters (stripped) carry no length penalty."""
LENGTH_FULL_PENALTY_CHARS = 200
"""At and beyond this many characters the penalty is -1."""


def domain_format(prompt: str, completion: str) -> float:
    """1.0 if the stripped completion is exactly one valid domain name, else 0.0.

    Valid: labels of ASCII letters/digits joined by single hyphens (no leading
    or trailing hyphen), one dot, and a TLD among ``DOMAIN_TLDS``;
    case-insensitive. Subdomains, spaces, extra text and ``Blocked`` score 0.
    """
    return 1.0 if _DOMAIN_RE.match(completion.strip()) else 0.0


def completion_length_penalty(prompt: str, completion: str) -> float:
    """0.0 up to ``LENGTH_FREE_CHARS`` stripped characters, then falling
    linearly to -1.0 at ``LENGTH_FULL_PENALTY_CHARS`` (and staying there).

    Use with a positive weight: it only ever lowers the total.
    """
    length = len(completion.strip())
    excess = max(0, length - LENGTH_FREE_CHARS)
    if excess == 0:
        return 0.0
    return -min(1.0, excess / (LENGTH_FULL_PENALTY_CHARS - LENGTH_FREE_CHARS))


RULE_TERMS: dict[str, RuleFn] = {
    "domain_format": domain_format,
    "completion_length_penalty": completion_length_penalty,
}
