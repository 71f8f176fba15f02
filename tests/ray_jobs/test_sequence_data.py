"""TRL-format rows to token ids and loss masks, derived by hand on a character-level tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ray_jobs.data.prompts import DatasetError
from ray_jobs.data.sequences import (
    PreferenceDataConfig,
    SftDataConfig,
    implicit_prompt,
    load_sequences,
    preference_unit,
    sft_row,
    to_batch,
)


class CharTokenizer:
    """One token per character (its code point); EOS is ``$``. The chat template renders each
    message as ``<first letter of role>:<content>|`` and the generation prompt as ``a:``."""

    eos_token = "$"

    def __call__(self, text: str) -> dict:
        return {"input_ids": [ord(c) for c in text]}

    def apply_chat_template(
        self, messages: list[dict], tokenize: bool = True, return_dict: bool = True, add_generation_prompt: bool = False
    ) -> dict:
        text = "".join(f"{m['role'][0]}:{m['content']}|" for m in messages) + ("a:" if add_generation_prompt else "")
        return {"input_ids": [ord(c) for c in text]}


TOK = CharTokenizer()


def _text(ids: list[int]) -> str:
    return "".join(chr(i) for i in ids)


def test_prompt_completion_strings_get_eos_and_completion_only_mask() -> None:
    ids, mask = sft_row(TOK, {"prompt": "ab", "completion": "cd"}, completion_only=True)
    assert _text(ids) == "abcd$" and mask == [0, 0, 1, 1, 1]
    _, mask = sft_row(TOK, {"prompt": "ab", "completion": "cd$"}, completion_only=False)
    assert mask == [0, 1, 1, 1, 1]  # every token but the first (nothing predicts it)


def test_conversational_prompt_completion_masks_after_the_generation_prompt() -> None:
    row = {"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "yo"}]}
    ids, mask = sft_row(TOK, row, completion_only=True)
    assert _text(ids) == "u:hi|a:yo|"  # no EOS added to a conversation: the template ends it
    assert mask == [0] * 7 + [1, 1, 1]  # "u:hi|a:" is the prompt with its generation prompt


def test_messages_train_on_every_assistant_turn_only() -> None:
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
        {"role": "user", "content": "ok"},
        {"role": "assistant", "content": "no"},
    ]
    ids, mask = sft_row(TOK, {"messages": messages}, completion_only=True)
    assert _text(ids) == "s:s|u:hi|a:yo|u:ok|a:no|"
    assert "".join("x" if m else "." for m in mask) == "." * 11 + "xxx" + "." * 7 + "xxx"
    _, everything = sft_row(TOK, {"messages": messages}, completion_only=False)
    assert everything == [0] + [1] * (len(ids) - 1)


def test_plain_text_trains_on_all_tokens_plus_eos() -> None:
    ids, mask = sft_row(TOK, {"text": "abc"}, completion_only=True)
    assert _text(ids) == "abc$" and mask == [0, 1, 1, 1]


def test_row_without_a_known_format_names_its_problem() -> None:
    with pytest.raises(ValueError, match="needs 'messages'"):
        sft_row(TOK, {"prompt": "ab"}, completion_only=True)


def test_preference_pair_shares_the_prompt_and_masks_each_completion() -> None:
    (chosen, rejected), prompt_len = preference_unit(TOK, {"prompt": "p", "chosen": "xy", "rejected": "z"})
    assert (_text(chosen[0]), chosen[1]) == ("pxy$", [0, 1, 1, 1])
    assert (_text(rejected[0]), rejected[1]) == ("pz$", [0, 1, 1])
    assert prompt_len == 1


def test_implicit_prompt_is_the_shared_beginning() -> None:
    user = {"role": "user", "content": "q"}
    chosen, rejected = [user, {"role": "assistant", "content": "a"}], [user, {"role": "assistant", "content": "b"}]
    assert implicit_prompt(chosen, rejected) == ([user], chosen[1:], rejected[1:])
    assert implicit_prompt("Say it: yes", "Say it: no") == ("Say it:", " yes", " no")
    (c, r), prompt_len = preference_unit(TOK, {"chosen": chosen, "rejected": rejected})
    assert _text(c[0]) == "u:q|a:a|" and c[1] == [0] * 6 + [1, 1] and prompt_len == 6


def _write(tmp_path: Path, rows: list[dict]) -> str:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_missing_field_is_an_error_naming_the_row(tmp_path: Path) -> None:
    path = _write(tmp_path, [{"prompt": "a", "completion": "b"}, {"prompt": "a", "answer": "b"}])
    with pytest.raises(DatasetError, match=r"row 1 of .*rows.jsonl: it needs 'messages'"):
        load_sequences(SftDataConfig(path=path, eval_fraction=0), TOK, seed=0)


def test_equal_pairs_and_long_rows_are_counted_skips(tmp_path: Path) -> None:
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": "p", "chosen": "a", "rejected": "a"},
        {"prompt": "p", "chosen": "a" * 20, "rejected": "b"},
        {"prompt": "p" * 9, "chosen": "a", "rejected": "b"},
    ]
    data = load_sequences(
        PreferenceDataConfig(path=_write(tmp_path, rows), eval_fraction=0, max_length=10, max_prompt_length=5),
        TOK,
        seed=0,
    )
    assert len(data.train) == 1
    assert data.skipped == {"chosen_equals_rejected": 1, "too_long": 1, "prompt_too_long": 1}


def test_long_sft_rows_are_truncated_and_counted_or_skipped(tmp_path: Path) -> None:
    path = _write(tmp_path, [{"prompt": "ab", "completion": "cdefgh"}, {"prompt": "a", "completion": "b"}])
    data = load_sequences(SftDataConfig(path=path, eval_fraction=0, max_length=5), TOK, seed=0)
    assert data.truncated == 1 and [len(u[0][0]) for u in data.train] == [5, 3]
    assert data.train[0][0][1] == [0, 0, 1, 1, 1]
    skipping = load_sequences(SftDataConfig(path=path, eval_fraction=0, max_length=5, truncation="skip"), TOK, seed=0)
    assert skipping.skipped == {"too_long": 1} and len(skipping.train) == 1


def test_held_out_rows_are_disjoint_and_seeded(tmp_path: Path) -> None:
    path = _write(tmp_path, [{"text": f"row {i}"} for i in range(20)])
    a = load_sequences(SftDataConfig(path=path, eval_fraction=0.25), TOK, seed=3)
    b = load_sequences(SftDataConfig(path=path, eval_fraction=0.25), TOK, seed=3)
    assert len(a.eval) == 5 and len(a.train) == 15 and a.eval == b.eval
    assert not {_text(u[0][0]) for u in a.eval} & {_text(u[0][0]) for u in a.train}


def test_batch_rows_come_in_unit_order() -> None:
    unit = (([1, 2], [0, 1]), ([1, 3, 4], [0, 1, 1]))
    batch = to_batch(7, [unit, unit], pairs=True)
    assert batch.step == 7 and len(batch) == 2 and batch.input_ids[1] == [1, 3, 4]
    assert batch.target_tokens(slice(0, 1)) == 3 and batch.rows(slice(1, 2)) == slice(2, 4)
