"""TRL's prompt-only dataset forms: standard (a string prompt) and conversational (a list of
messages, the chat template applied to them as given); a bad message is a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ray_jobs.config.experiment import load_config
from ray_jobs.data.prompts import DataConfig, DatasetError, load_prompts

SYSTEM = {"role": "system", "content": "You answer in one word."}
USER = {"role": "user", "content": "Name a fruit."}


def _write(tmp_path: Path, rows: list[dict]) -> str:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _own(tmp_path: Path, rows: list[dict], *overrides: str) -> DataConfig:
    """The data section of a run on its own data (so no demo default applies)."""
    extra = ["reward.terms=[{name: domain_format}]", *overrides]
    return load_config(None, [f"data.path={_write(tmp_path, rows)}", *extra]).data


def _template(tokenizer, messages: list[dict]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_standard_prompt_column(tmp_path: Path, tiny_tokenizer) -> None:
    (item,) = load_prompts(_own(tmp_path, [{"prompt": "Name a fruit."}]), tiny_tokenizer)
    assert item.prompt_text == "Name a fruit." and item.messages is None
    assert item.prompt_token_ids == _template(tiny_tokenizer, [USER])  # no system prompt on one's own data


def test_conversational_prompt_is_templated_as_given(tmp_path: Path, tiny_tokenizer) -> None:
    chat = [SYSTEM, USER, {"role": "assistant", "content": "Apple."}, {"role": "user", "content": "Another?"}]
    data = _own(tmp_path, [{"prompt": chat}], "data.system_prompt=Never used here.")
    (item,) = load_prompts(data, tiny_tokenizer)
    assert item.prompt_token_ids == _template(tiny_tokenizer, chat)  # the row's system message, not relay's
    assert item.prompt_text == "Another?" and item.messages == chat  # the judge sees the last user message


def test_relay_system_prompt_goes_before_a_conversation_without_one(tmp_path: Path, tiny_tokenizer) -> None:
    (item,) = load_prompts(_own(tmp_path, [{"prompt": [USER]}], "data.system_prompt=Be brief."), tiny_tokenizer)
    assert item.prompt_token_ids == _template(tiny_tokenizer, [{"role": "system", "content": "Be brief."}, USER])
    assert item.messages == [USER]  # what the dataset gave (TRL's ``prompts``)


def test_a_final_assistant_message_is_continued(tmp_path: Path, tiny_tokenizer) -> None:
    chat = [USER, {"role": "assistant", "content": "My answer:"}]
    (item,) = load_prompts(_own(tmp_path, [{"prompt": chat}]), tiny_tokenizer)
    decoded = tiny_tokenizer.decode(item.prompt_token_ids)
    assert decoded.endswith("My answer:") and item.prompt_text == "Name a fruit."


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ([USER, {"content": "x"}], r"'prompt' message 1 has no string 'role' \(missing\)"),
        ([USER, {"role": "user", "content": ["part"]}], r"'prompt' message 1 has no string 'content' \(a list\)"),
        ([USER, "text"], r"'prompt' message 1 is a str"),
        ([SYSTEM], r"'prompt' has no user message with text"),
    ],
)
def test_a_bad_message_is_a_one_line_error_naming_the_row(tmp_path: Path, tiny_tokenizer, prompt, message) -> None:
    data = _own(tmp_path, [{"prompt": [USER]}, {"prompt": prompt}])
    with pytest.raises(DatasetError, match=rf"^data: row 1 of .*d.jsonl: {message}; a conversational prompt is a list"):
        load_prompts(data, tiny_tokenizer)


def test_a_prompt_of_the_wrong_type_is_named(tmp_path: Path, tiny_tokenizer) -> None:
    with pytest.raises(DatasetError, match=r"^data: row 0 of .* has no usable 'prompt' field \(got int\)"):
        load_prompts(_own(tmp_path, [{"prompt": 3}]), tiny_tokenizer)
