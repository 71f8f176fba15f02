"""Supervised and preference datasets in TRL's formats: load, validate every row, tokenise, mask.

Formats (each a local .jsonl/.json/.csv/.parquet file or a Hugging Face dataset):

* SFT, conversational ``messages`` (a list of ``{"role", "content"}``); ``prompt`` +
  ``completion`` (two strings, or two message lists); plain ``text``.
* Preference, ``prompt`` + ``chosen`` + ``rejected`` (strings or message lists),
  or the implicit-prompt form ``chosen`` + ``rejected`` whose shared beginning
  (common leading messages, or common leading text) is the prompt.

Tokenisation follows TRL 1.16: conversations are rendered by the policy's chat
template (``apply_chat_template``); strings are tokenised as they are, with the
EOS token appended to a completion (or ``text``) that lacks it. The completion
starts where the tokenised prompt and prompt + completion stop agreeing
(``common_prefix_length``). Every unit is ``(input_ids, loss_mask)`` per row,
``loss_mask[0] == 0`` always.

Bad input: a row missing a field is a ``DatasetError`` naming the row; pairs whose
chosen equals rejected and rows longer than the limits are skipped, counted
(``SequenceData.skipped``) and logged; SFT rows longer than ``max_length`` are
truncated instead (``SequenceData.truncated``) unless ``truncation: skip``.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from actors.messages import SequenceBatch
from ray_jobs.data.prompts import DataConfig, DatasetError, load_rows

log = logging.getLogger(__name__)

Row = tuple[list[int], list[int]]  # (input_ids, loss_mask)
Unit = tuple[Row, ...]  # one row (SFT) or (chosen, rejected)


class SequenceDataConfig(BaseModel):
    """Where the rows come from, the validation split, and the length limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(
        default="configs/data/toy_sft.jsonl",
        description="A local .jsonl/.json/.csv/.parquet file, or a Hugging Face dataset name.",
    )
    split: str = Field(default="train", description="Split to load for hub datasets.")
    eval_path: str | None = Field(
        default=None,
        description="Validation rows from another file or dataset (same format); default: held out from path's rows by eval_fraction.",
    )
    eval_split: str = Field(default="test", description="Split of eval_path to load for hub datasets.")
    eval_fraction: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description="Without eval_path: this fraction of the rows (a seeded random choice, at least one row when > 0) is held out for validation.",
    )
    max_length: int = Field(default=512, ge=2, description="Tokens per sequence (prompt + completion) at most.")
    shuffle: bool = Field(default=True, description="Shuffle the training rows each epoch.")


class SftDataConfig(SequenceDataConfig):
    """SFT rows: messages, prompt + completion, or text."""

    completion_only_loss: bool = Field(
        default=True,
        description="Train only on completion tokens (prompt/completion rows) and assistant turns (messages rows); false: on every token.",
    )
    truncation: Literal["truncate", "skip"] = Field(
        default="truncate",
        description="A row longer than max_length: truncate it to max_length tokens (counted, logged), or skip it (counted, logged).",
    )


class PreferenceDataConfig(SequenceDataConfig):
    """Preference pairs: prompt + chosen + rejected, or chosen + rejected with an implicit prompt."""

    path: str = Field(
        default="configs/data/toy_preference.jsonl",
        description="A local .jsonl/.json/.csv/.parquet file, or a Hugging Face dataset name.",
    )
    eval_fraction: float = Field(
        default=0.15,
        ge=0,
        lt=1,
        description="Without eval_path: this fraction of the rows (a seeded random choice, at least one row when > 0) is held out for validation.",
    )
    max_prompt_length: int | None = Field(
        default=None,
        ge=1,
        description="Prompt tokens at most; longer pairs are skipped (counted, logged). None: only max_length applies.",
    )


@dataclass
class SequenceData:
    """Tokenised training and validation units, and how many rows were skipped or truncated."""

    train: list[Unit]
    eval: list[Unit]
    skipped: dict[str, int] = field(default_factory=dict)
    truncated: int = 0


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """Leading tokens ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _ids(tokenizer: Any, content: str | list[dict], generation_prompt: bool = False) -> list[int]:
    """Token ids of a string (as the tokenizer encodes it) or a conversation (its chat template)."""
    if isinstance(content, list):
        out = tokenizer.apply_chat_template(
            content, tokenize=True, return_dict=True, add_generation_prompt=generation_prompt
        )
        return list(out["input_ids"])
    return list(tokenizer(text=content)["input_ids"])


def _with_eos(tokenizer: Any, text: str | list) -> str | list:
    return text + tokenizer.eos_token if isinstance(text, str) and not text.endswith(tokenizer.eos_token) else text


def encode_prompt_completion(tokenizer: Any, prompt: str | list, completion: str | list) -> tuple[list[int], int]:
    """(prompt + completion ids, where the completion starts), as TRL tokenises them."""
    completion = _with_eos(tokenizer, completion)
    if isinstance(prompt, str) and isinstance(completion, str):
        joined: str | list = prompt + completion
    elif isinstance(prompt, list) and isinstance(completion, list):
        joined = prompt + completion
    else:
        raise ValueError("prompt and completion must both be strings or both be message lists")
    prompt_ids = _ids(tokenizer, prompt, generation_prompt=isinstance(prompt, list))
    full = _ids(tokenizer, joined)
    return full, common_prefix_length(prompt_ids, full)


def sft_row(tokenizer: Any, row: dict, completion_only: bool) -> Row:
    """One SFT row as ``(input_ids, loss_mask)``; ``ValueError`` if it has no known format."""
    if row.get("messages") is not None:
        messages = row["messages"]
        full = _ids(tokenizer, messages)
        mask = [0] * len(full) if completion_only else [1] * len(full)
        for i, message in enumerate(messages if completion_only else []):
            if message.get("role") == "assistant":  # its content and end: after the generation prompt
                start = common_prefix_length(_ids(tokenizer, messages[:i], generation_prompt=True), full) if i else 0
                end = common_prefix_length(_ids(tokenizer, messages[: i + 1]), full)
                mask[start:end] = [1] * (end - start)
        if not any(mask[1:]):
            raise ValueError("the conversation has no assistant turn to train on")
    elif row.get("prompt") is not None and row.get("completion") is not None:
        full, start = encode_prompt_completion(tokenizer, row["prompt"], row["completion"])
        mask = [0] * start + [1] * (len(full) - start) if completion_only else [1] * len(full)
    elif isinstance(row.get("text"), str):
        full = _ids(tokenizer, _with_eos(tokenizer, row["text"]))
        mask = [1] * len(full)
    else:
        raise ValueError("it needs 'messages', 'prompt' + 'completion', or 'text'")
    mask[0] = 0  # nothing predicts the first token
    return full, mask


def implicit_prompt(chosen: str | list, rejected: str | list) -> tuple[Any, Any, Any]:
    """(prompt, chosen rest, rejected rest): their shared beginning split off, as TRL's ``extract_prompt``."""
    n = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        n += 1
    if isinstance(chosen, str) and n and chosen[n - 1] == " ":
        n -= 1
    return chosen[:n], chosen[n:], rejected[n:]


def preference_unit(tokenizer: Any, row: dict) -> tuple[Unit, int]:
    """(chosen row, rejected row) sharing the prompt tokens, and the prompt's length."""
    if row.get("chosen") is None or row.get("rejected") is None:
        raise ValueError("it needs 'chosen' and 'rejected' (and optionally 'prompt')")
    prompt, chosen, rejected = row.get("prompt"), row["chosen"], row["rejected"]
    if prompt is None:
        prompt, chosen, rejected = implicit_prompt(chosen, rejected)
    if isinstance(prompt, list) != isinstance(chosen, list) or isinstance(chosen, list) != isinstance(rejected, list):
        raise ValueError("prompt, chosen and rejected must all be strings or all be message lists")
    chosen_ids, c = encode_prompt_completion(tokenizer, prompt, chosen)
    rejected_ids, r = encode_prompt_completion(tokenizer, prompt, rejected)
    start = min(c, r)  # as TRL: where either completion leaves the tokenised prompt
    units = tuple((ids, [0] * start + [1] * (len(ids) - start)) for ids in (chosen_ids, rejected_ids))
    for _, mask in units:
        mask[0] = 0
    return units, start


def _encode(rows: list[dict], name: str, encode) -> tuple[list[Unit], dict[str, int], int]:
    units: list[Unit] = []
    skipped: dict[str, int] = {}
    truncated = 0
    for i, row in enumerate(rows):
        try:
            result = encode(row)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise DatasetError(f"data: row {i} of {name}: {exc}") from None
        if isinstance(result, str):
            skipped[result] = skipped.get(result, 0) + 1
        elif isinstance(result, tuple) and result and result[0] == "truncated":
            truncated += 1
            units.append(result[1])
        else:
            units.append(result)
    return units, skipped, truncated


def _sft_encoder(cfg: SftDataConfig, tokenizer: Any):
    def encode(row: dict) -> Unit | str | tuple:
        ids, mask = sft_row(tokenizer, row, cfg.completion_only_loss)
        if len(ids) <= cfg.max_length:
            return ((ids, mask),)
        if cfg.truncation == "skip" or not any(mask[1 : cfg.max_length]):
            return "too_long"
        return ("truncated", ((ids[: cfg.max_length], mask[: cfg.max_length]),))

    return encode


def _preference_encoder(cfg: PreferenceDataConfig, tokenizer: Any):
    def encode(row: dict) -> Unit | str:
        if row.get("chosen") is not None and row.get("chosen") == row.get("rejected"):
            return "chosen_equals_rejected"
        unit, prompt_len = preference_unit(tokenizer, row)
        if cfg.max_prompt_length is not None and prompt_len > cfg.max_prompt_length:
            return "prompt_too_long"
        if max(len(ids) for ids, _ in unit) > cfg.max_length:
            return "too_long"
        return unit

    return encode


def load_sequences(cfg: SftDataConfig | PreferenceDataConfig, tokenizer: Any, seed: int) -> SequenceData:
    """Every usable unit of the training and validation rows; the skips and truncations are logged."""
    encode = (
        _preference_encoder(cfg, tokenizer) if isinstance(cfg, PreferenceDataConfig) else _sft_encoder(cfg, tokenizer)
    )
    rows, name = load_rows(DataConfig(path=cfg.path, split=cfg.split))
    if not rows:
        raise DatasetError(f"data.path: {name} has no rows")
    if cfg.eval_path is not None:
        eval_rows, eval_name = load_rows(DataConfig(path=cfg.eval_path, split=cfg.eval_split))
    else:
        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)
        held = set(order[: max(1, round(cfg.eval_fraction * len(rows)))] if cfg.eval_fraction > 0 else [])
        eval_rows, eval_name = [rows[i] for i in sorted(held)], f"{name} (held out)"
        rows = [row for i, row in enumerate(rows) if i not in held]
    train, skipped, truncated = _encode(rows, name, encode)
    evaluation, eval_skipped, eval_truncated = _encode(eval_rows, eval_name, encode)
    for key, count in eval_skipped.items():
        skipped[f"eval/{key}"] = count
    if skipped or truncated or eval_truncated:
        log.warning(
            "data: skipped %s; truncated to max_length=%d: %d training and %d validation rows",
            skipped or "none",
            cfg.max_length,
            truncated,
            eval_truncated,
        )
    if not train:
        raise DatasetError(f"data: no usable training rows in {name} (skipped: {skipped})")
    return SequenceData(train, evaluation, skipped, truncated + eval_truncated)


def to_batch(step: int, units: list[Unit], pairs: bool) -> SequenceBatch:
    """The learner's ``SequenceBatch`` of ``units`` (rows in unit order)."""
    rows = [row for unit in units for row in unit]
    return SequenceBatch(step, [ids for ids, _ in rows], [mask for _, mask in rows], pairs=pairs)
