"""Prompts made from a row's fields (data.prompt_template), the row carried to the reward, chat-template kwargs."""

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from ray_jobs.data.prompts import DataConfig, DatasetError, load_prompts

REPO_ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, rows: list[dict]) -> str:
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(p)


def test_template_fills_from_the_row_and_the_row_travels(tmp_path: Path, tiny_tokenizer) -> None:
    rows = [{"id": "a", "query": "coffee in town", "sources": ["s1", "s2"], "target": 1, "source": "s2"}]
    data = DataConfig(
        path=_write(tmp_path, rows), prompt_template="Query: {query}\n\nRewrite:\n{source} ({sources[0]})"
    )
    (item,) = load_prompts(data, tiny_tokenizer)
    assert item.prompt_text == "Query: coffee in town\n\nRewrite:\ns2 (s1)"
    assert item.fields == rows[0] and item.prompt_id == "a"
    assert item.prompt_text in tiny_tokenizer.decode(item.prompt_token_ids)


def test_a_row_missing_a_template_field_is_named(tmp_path: Path, tiny_tokenizer) -> None:
    path = _write(tmp_path, [{"query": "q", "source": "s"}, {"query": "q2"}])
    with pytest.raises(
        DatasetError,
        match=r"^data: row 1 of .* does not fill data.prompt_template \(no field 'source'\); "
        r"fields with values: \['query'\]$",
    ):
        load_prompts(DataConfig(path=path, prompt_template="{query}: {source}"), tiny_tokenizer)


@pytest.mark.parametrize("template", ["no fields", "{}", "{0}", "{unclosed"])
def test_bad_templates_fail_at_config_time(template: str) -> None:
    with pytest.raises(ValidationError, match="prompt_template"):
        DataConfig(prompt_template=template)


def test_chat_template_kwargs_reach_the_template(tmp_path: Path, tiny_tokenizer) -> None:
    seen: list[dict] = []

    class Spy:
        def apply_chat_template(self, messages, **kwargs):
            seen.append(kwargs)
            return tiny_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

        def __call__(self, text, **kwargs):
            return tiny_tokenizer(text, **kwargs)

    data = DataConfig(
        path=_write(tmp_path, [{"description": "a bakery"}]), chat_template_kwargs={"enable_thinking": False}
    )
    load_prompts(data, Spy())
    assert seen == [{"add_generation_prompt": True, "tokenize": False, "enable_thinking": False}]


def test_the_shipped_geo_dataset_loads_with_its_template(tiny_tokenizer) -> None:
    from ray_jobs.config.experiment import load_config

    cfg = load_config(REPO_ROOT / "configs/sft_then_grpo_geo/cpu_2_grpo.yaml")
    items = load_prompts(cfg.data.model_copy(update={"path": str(REPO_ROOT / cfg.data.path)}), tiny_tokenizer)
    assert len(items) == 100
    for item in items:
        row = item.fields
        assert row["source"] == row["sources"][row["target"]] and row["query"] in item.prompt_text
