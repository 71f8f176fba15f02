"""Prompt datasets: load, validate every row up front, tokenise, and serve in epochs.

A row's prompt is its ``data.prompt_field`` (or ``data.prompt_template`` filled from its
fields) in one of TRL's prompt-only forms: *standard*, a string, shown to the policy as one
user message after ``data.system_prompt``; or *conversational*, a list of ``{"role",
"content"}`` messages (string content), to which the chat template is applied as given
(``data.system_prompt`` is added only when the list has no system message; a last
assistant message is continued, as TRL does). The judge sees a conversational prompt's
last user message. A row without a usable prompt is a one-line ``DatasetError`` naming it.
"""

from __future__ import annotations

import logging
import random
import string
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from actors.messages import PromptItem
from actors.model.loading import DOMAIN_TASK_SYSTEM_PROMPT

log = logging.getLogger(__name__)

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}

DEFAULT_SYSTEM_PROMPT = DOMAIN_TASK_SYSTEM_PROMPT  # seed 000's task


class DatasetError(ValueError):
    """A dataset that cannot be used: missing file, bad row."""


class DataConfig(BaseModel):
    """The prompt dataset and how prompts are shown to the policy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(
        default="configs/data/business_descriptions.jsonl",
        description="A local .jsonl/.json/.csv/.parquet file, or a Hugging Face dataset name.",
    )
    split: str = Field(default="train", description="Split to load for hub datasets.")
    prompt_field: str = Field(
        default="description",
        description="Row field holding the prompt: a string (TRL's standard form; what the judge sees as the request) or a list of {role, content} messages (TRL's conversational form; the judge sees the last user message). Default: the demo's 'description'; 'prompt' on one's own data.path. Unused with prompt_template.",
    )
    prompt_template: str | None = Field(
        default=None,
        description="A str.format template over the row's fields that makes the prompt text, e.g. 'Query: {query}\\n\\nRewrite this source:\\n{source}' (null: the prompt_field as it is).",
    )
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra arguments of the tokenizer's apply_chat_template, e.g. {enable_thinking: false} for Qwen3.",
    )
    id_field: str | None = Field(
        default="id", description="Row field with a stable id; the row number when absent or null."
    )
    system_prompt: str | None = Field(
        default=DEFAULT_SYSTEM_PROMPT,
        description="System message shown to the policy before each prompt (null for none; not added to a conversational prompt that has its own). Default: the domain-name demo's; none on one's own data.path.",
    )
    max_prompt_tokens: int = Field(
        default=256, ge=1, description="Rows whose formatted prompt is longer are skipped (counted and logged)."
    )
    shuffle: bool = Field(default=True, description="Shuffle the prompts each epoch.")

    @field_validator("prompt_template")
    @classmethod
    def _check_template(cls, template: str | None) -> str | None:
        if template is not None:
            try:
                fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
            except ValueError as err:
                raise ValueError(f"data.prompt_template is not a str.format template ({err})") from None
            if not fields or any(f == "" or f[0].isdigit() for f in fields):
                raise ValueError("data.prompt_template must name row fields, e.g. {query} (no {} or {0})")
        return template


def prompt_text(data: DataConfig, row: dict, i: int, name: str, section: str = "data") -> str:
    """The prompt text of row ``i``: ``data.prompt_template`` filled from the row's fields (a null
    field is a missing one), or its ``data.prompt_field``; ``DatasetError`` (one line, naming the
    row) when that cannot be made."""
    if data.prompt_template is not None:
        try:
            text = data.prompt_template.format(**{k: v for k, v in row.items() if v is not None})
        except (KeyError, IndexError, AttributeError, TypeError, ValueError) as err:
            missing = f"no field {err}" if isinstance(err, KeyError) else f"{type(err).__name__}: {err}"
            raise DatasetError(
                f"{section}: row {i} of {name} does not fill data.prompt_template ({missing}); "
                f"fields with values: {sorted(k for k, v in row.items() if v is not None)}"
            ) from None
        if not text.strip():
            raise DatasetError(f"{section}: row {i} of {name} fills data.prompt_template with blank text")
        return text
    value = row.get(data.prompt_field)
    if isinstance(value, list):
        messages = conversation(data, row, i, name, section) or []
        return next(m["content"] for m in reversed(messages) if m["role"] == "user")
    if not isinstance(value, str) or not value.strip():
        raise DatasetError(
            f"{section}: row {i} of {name} has no usable '{data.prompt_field}' field "
            f"(got {type(value).__name__}); fields with values: {sorted(k for k, v in row.items() if v is not None)}"
        )
    return value


def conversation(data: DataConfig, row: dict, i: int, name: str, section: str = "data") -> list[dict] | None:
    """Row ``i``'s prompt as chat messages when its ``data.prompt_field`` is a list (TRL's
    conversational form), else None; ``DatasetError`` (one line, naming the row and message)
    when a message is not a ``{"role": str, "content": str}`` mapping or none is a user's."""
    value = row.get(data.prompt_field)
    if data.prompt_template is not None or not isinstance(value, list):
        return None
    where = f"{section}: row {i} of {name}: '{data.prompt_field}'"
    shape = 'a conversational prompt is a list of {"role": ..., "content": "<text>"} messages'
    for j, message in enumerate(value):
        if not isinstance(message, dict):
            raise DatasetError(f"{where} message {j} is a {type(message).__name__}; {shape}")
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                got = "missing" if message.get(key) is None else f"a {type(message[key]).__name__}"
                raise DatasetError(f"{where} message {j} has no string '{key}' ({got}); {shape}")
    users = [m for m in value if m["role"] == "user"]
    if not users or not users[-1]["content"].strip():
        raise DatasetError(f"{where} has no user message with text; {shape}")
    return [dict(m) for m in value]


def chat_messages(data: DataConfig, text: str, messages: list[dict] | None) -> list[dict]:
    """The messages the chat template is applied to: a conversational row's as given (with
    ``data.system_prompt`` first only when they have no system message), else the system prompt
    (if any) and ``text`` as the user's message."""
    system = [{"role": "system", "content": data.system_prompt}] if data.system_prompt else []
    if messages is not None:
        return messages if any(m["role"] == "system" for m in messages) else system + messages
    return [*system, {"role": "user", "content": text}]


def load_rows(data: DataConfig, key: str = "data.path") -> tuple[list[dict], str]:
    """Rows as dicts, and a name for them in messages (``key``: the config key of the path)."""
    suffix = Path(data.path).suffix.lower()
    if suffix in LOCAL_FORMATS:
        if not Path(data.path).is_file():
            raise DatasetError(f"{key}: file {data.path} does not exist")
        import datasets

        ds = datasets.load_dataset(LOCAL_FORMATS[suffix], data_files=data.path, split="train")
    elif Path(data.path).exists():
        raise DatasetError(f"{key}: {data.path} is not a .jsonl, .json, .csv or .parquet file")
    else:
        import datasets

        ds = datasets.load_dataset(data.path, split=data.split)
    return [dict(r) for r in ds], data.path


def load_prompts(data: DataConfig, tokenizer) -> list[PromptItem]:
    """Every usable row as a ``PromptItem``; a row without a prompt is an error.

    Rows too long for ``data.max_prompt_tokens`` are skipped, counted and logged.
    """
    return load_labelled_prompts(data, tokenizer)[0]


def load_labelled_prompts(
    data: DataConfig, tokenizer, label_field: str | None = None, key: str = "data.path"
) -> tuple[list[PromptItem], list[bool | None]]:
    """``load_prompts`` plus each kept row's boolean ``label_field`` (aligned with the items;
    None where the row lacks it, or it is null, or ``label_field`` is None). A label that is
    not true, false or null is an error. ``key`` names the path in messages (``eval.data``)."""
    rows, name = load_rows(data, key)
    section = key.removesuffix(".path")
    if not rows:
        raise DatasetError(f"{key}: {name} has no rows")
    items, labels, too_long = [], [], 0
    for i, row in enumerate(rows):
        text = prompt_text(data, row, i, name, section)
        label = row.get(label_field) if label_field else None
        if label is not None and not isinstance(label, bool):
            raise DatasetError(
                f"{section}: row {i} of {name} has '{label_field}' = {label!r}; a label must be true, false or null"
            )
        given = conversation(data, row, i, name, section)
        messages = chat_messages(data, text, given)
        token_ids = tokenizer(_formatted(tokenizer, messages, data), add_special_tokens=False)["input_ids"]
        if len(token_ids) > data.max_prompt_tokens:
            too_long += 1
            continue
        row_id = row.get(data.id_field) if data.id_field else None
        items.append(PromptItem(str(row_id if row_id is not None else i), i, text, token_ids, row, given))
        labels.append(label)
    if too_long:
        log.warning(
            "%s: skipped %d of %d rows longer than data.max_prompt_tokens=%d",
            section,
            too_long,
            len(rows),
            data.max_prompt_tokens,
        )
    if not items:
        raise DatasetError(
            f"{section}: every row of {name} is longer than data.max_prompt_tokens={data.max_prompt_tokens}"
        )
    return items, labels


def _formatted(tokenizer, messages: list[dict], data: DataConfig) -> str:
    """The chat template applied to ``messages``: a generation prompt after them, or, when the last
    is the assistant's (a prefill), that message continued (TRL's ``continue_final_message``)."""
    if messages[-1]["role"] == "assistant":
        return tokenizer.apply_chat_template(
            messages, continue_final_message=True, tokenize=False, **data.chat_template_kwargs
        )
    return tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False, **data.chat_template_kwargs
    )


Item = TypeVar("Item")


class PromptSource(Generic[Item]):
    """Serves prompts (or the offline jobs' sequence units) in epochs (reshuffled each epoch when asked).
    Never runs dry.

    Invariant: within an epoch every item is served exactly once; ``state_dict``
    captures the epoch, the rest of its order and the shuffling RNG, so a source
    restored with ``load_state_dict`` serves exactly what this one would next.
    """

    def __init__(self, items: list[Item], shuffle: bool, seed: int) -> None:
        self.items = items
        self.shuffle = shuffle
        self._rng = random.Random(seed)
        self._order: list[int] = []
        self.epoch = -1

    def take(self, k: int) -> list[Item]:
        out: list[Item] = []
        for _ in range(k):
            if not self._order:
                self._order = list(range(len(self.items)))
                if self.shuffle:
                    self._rng.shuffle(self._order)
                self._order.reverse()
                self.epoch += 1
            out.append(self.items[self._order.pop()])
        return out

    def state_dict(self) -> dict:
        """JSON-able: epoch, the rest of this epoch's order (positions in ``items``), RNG state."""
        version, internal, gauss = self._rng.getstate()
        return {
            "epoch": self.epoch,
            "order": list(self._order),
            "rng": [version, list(internal), gauss],
            "items": len(self.items),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["items"] != len(self.items):
            raise DatasetError(
                f"data: the checkpoint's prompt source had {state['items']} prompts, this dataset "
                f"has {len(self.items)}; resume with the dataset the run started with"
            )
        version, internal, gauss = state["rng"]
        self._rng.setstate((version, tuple(internal), gauss))
        self._order = list(state["order"])
        self.epoch = state["epoch"]
