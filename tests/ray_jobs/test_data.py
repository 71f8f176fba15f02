import json
from pathlib import Path

import pytest

from ray_jobs.data.prompts import DataConfig, DatasetError, PromptSource, load_prompts

REPO_ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, rows: list[dict]) -> str:
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(p)


def test_shipped_dataset_loads(tiny_tokenizer) -> None:
    items = load_prompts(DataConfig(path=str(REPO_ROOT / "configs/data/business_descriptions.jsonl")), tiny_tokenizer)
    assert len(items) == 240
    assert items[0].prompt_id == "biz-0000"
    decoded = tiny_tokenizer.decode(items[0].prompt_token_ids)
    assert items[0].prompt_text in decoded and decoded.endswith("<|im_start|>assistant\n")


def test_missing_file(tiny_tokenizer) -> None:
    with pytest.raises(DatasetError, match="data.path: file /nope/x.jsonl does not exist"):
        load_prompts(DataConfig(path="/nope/x.jsonl"), tiny_tokenizer)


def test_row_without_prompt_field_is_named(tmp_path: Path, tiny_tokenizer) -> None:
    path = _write(tmp_path, [{"description": "a bakery"}, {"descr": "typo"}])
    with pytest.raises(
        DatasetError, match=r"row 1 of .* has no usable 'description' field.*fields with values: \['descr'\]"
    ):
        load_prompts(DataConfig(path=path), tiny_tokenizer)


def test_too_long_rows_are_counted_and_skipped(tmp_path: Path, tiny_tokenizer, caplog) -> None:
    path = _write(tmp_path, [{"description": "short"}, {"description": "long " * 200}])
    items = load_prompts(DataConfig(path=path, max_prompt_tokens=64, system_prompt=None), tiny_tokenizer)
    assert [i.row for i in items] == [0]
    assert items[0].prompt_id == "0"  # no id field -> row number
    assert "skipped 1 of 2 rows" in caplog.text


def test_prompt_source_cycles_epochs_without_repeats_within_one() -> None:
    src = PromptSource(list("abcde"), shuffle=True, seed=1)  # type: ignore[arg-type]
    first, second = src.take(5), src.take(5)
    assert sorted(first) == sorted(second) == list("abcde")
    assert src.epoch == 1
