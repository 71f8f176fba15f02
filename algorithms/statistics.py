"""Statistics for evaluation: pure functions over per-item scores and flags.

Nothing here touches models or Ray; every function takes plain sequences and
returns plain numbers, so the expected values can be derived by hand in tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RefusalRates:
    """How often answers were blocked, split by whether the request should have been.

    ``block_rate`` is the share of blocked answers among requests labelled
    inappropriate (higher is better), ``false_block_rate`` the share among
    requests labelled appropriate (lower is better); ``None`` when there is no
    such request. Items without a label or without a blocked flag (unscored)
    are left out and counted in ``unknown``.
    """

    block_rate: float | None
    false_block_rate: float | None
    n_inappropriate: int
    n_appropriate: int
    unknown: int


def refusal_rates(labels: Sequence[bool | None], blocked: Sequence[float | bool | None]) -> RefusalRates:
    """Block and false-block rates of items with label ``labels[i]`` (True: inappropriate) and
    answer flag ``blocked[i]`` (truthy: the answer refused; None: not known)."""
    if len(labels) != len(blocked):
        raise ValueError(f"labels and blocked differ in length ({len(labels)} vs {len(blocked)})")
    bad = [bool(b) for lab, b in zip(labels, blocked) if lab is True and b is not None]
    good = [bool(b) for lab, b in zip(labels, blocked) if lab is False and b is not None]
    unknown = len(labels) - len(bad) - len(good)
    return RefusalRates(block_rate=sum(bad) / len(bad) if bad else None,
                        false_block_rate=sum(good) / len(good) if good else None,
                        n_inappropriate=len(bad), n_appropriate=len(good), unknown=unknown)
