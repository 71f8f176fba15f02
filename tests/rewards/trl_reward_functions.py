"""TRL-style reward functions for tests, written as one would for TRL's GRPOTrainer
(``reward_funcs``) and importable by the judge pool's process as
``tests.rewards.trl_reward_functions:<name>``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path


def _text(completion) -> str:
    """A completion's text: TRL passes a message list for conversational data, else a string."""
    return completion[0]["content"] if isinstance(completion, list) else completion


def letter_share(completion: str, letter: str) -> float:
    """The share of ``letter`` among the completion's characters (0 for an empty one)."""
    return completion.count(letter) / len(completion) if completion else 0.0


def letter_reward(completions, letter, record_to=None, **kwargs) -> list[float | None]:
    """The share of each row's ``letter`` column in its completion; None (unscored) where the
    row's letter is null. With ``record_to`` (a term option), each call's arguments are appended
    there as one JSON line."""
    if record_to is not None:
        with Path(record_to).open("a") as f:
            f.write(json.dumps({"completions": completions, "letter": letter, **kwargs}) + "\n")
    return [None if c is None else letter_share(_text(t), c) for t, c in zip(completions, letter)]


async def async_length_reward(completions, **kwargs) -> list[float | None]:
    """An async TRL function: each completion's length / 100."""
    await asyncio.sleep(0)
    return [len(_text(c)) / 100 for c in completions]


def one_short(completions, **kwargs) -> list[float]:
    """A broken TRL function: one value fewer than there are completions."""
    return [1.0] * (len(completions) - 1)


def raises(completions, **kwargs) -> list[float]:
    raise RuntimeError("boom")
