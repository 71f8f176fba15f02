"""`relay init DIR [--gpu]`: a documented starter config for one's own task that loads and passes
the dry run, a rubric file with the documented placeholders, sample data, and no overwriting."""

from __future__ import annotations

import string
import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel

from ray_jobs.config.experiment import load_config
from ray_jobs.init_task import main, starter_config, write_starter
from ray_jobs.train import main as train_main
from rewards.judge.rubric import load_rubric

REPO_ROOT = Path(__file__).resolve().parents[2]
GPU_RECIPE = REPO_ROOT / "configs" / "domain_names_gspo" / "gpu_1_gspo.yaml"


def _descriptions(model: BaseModel) -> list[str]:
    """The description of every field of ``model`` and of the sections it holds."""
    found: list[str] = []
    for name, field in type(model).model_fields.items():
        found.append(field.description or "")
        if isinstance(value := getattr(model, name), BaseModel):
            found.extend(_descriptions(value))
    return found


@pytest.mark.parametrize("gpu", [False, True], ids=["cpu", "gpu"])
def test_the_starter_config_loads_documents_every_field_and_names_only_its_own_files(tmp_path: Path, gpu: bool) -> None:
    config, rubric, data = write_starter(tmp_path / "my-task", gpu=gpu)
    cfg = load_config(config)
    assert cfg == starter_config(tmp_path / "my-task", gpu)
    text = config.read_text()
    for description in _descriptions(cfg):  # each above its field, wrapped at 100 - indentation (<= 8)
        assert description and textwrap.wrap(description, 100 - 8)[0][:40] in text, f"undocumented: {description}"
    assert (cfg.data.path, cfg.data.prompt_field, cfg.judge.rubric) == (str(data), "prompt", str(rubric))
    assert (cfg.judge.base_url, cfg.judge.api_key_env, cfg.run.name) == (
        "http://localhost:8000/v1",
        "JUDGE_API_KEY",
        "my-task",
    )
    # no demo value: no domain-name system prompt, shipped rubric or request-check label
    assert cfg.data.system_prompt is None and cfg.eval.label_field is None


def test_the_rubric_has_exactly_the_documented_placeholders_and_no_demo_text(tmp_path: Path) -> None:
    _, rubric_file, _ = write_starter(tmp_path / "t")
    rubric = load_rubric(str(rubric_file))
    placeholders = {
        m.group("named") for m in string.Template.pattern.finditer(rubric.system_template) if m.group("named")
    }
    assert placeholders == {"criteria", "fences", "output_format"}
    assert rubric.request_check is None and rubric.name == "t"
    assert "domain" not in rubric_file.read_text().lower()
    assert abs(sum(c.weight for c in rubric.criteria) - 1.0) < 1e-9


def test_the_sample_data_is_trl_standard_prompt_only_rows(tmp_path: Path) -> None:
    import json

    _, _, data = write_starter(tmp_path / "t")
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    assert len(rows) >= 4 and all(set(r) == {"id", "prompt"} and r["prompt"].strip() for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)


def test_the_cpu_starter_passes_the_dry_run_from_the_directory_relay_init_ran_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["task"]) == 0
    assert "relay train --config task/config.yaml" in capsys.readouterr().out
    assert load_config("task/config.yaml").data.path == "task/data.jsonl"  # relative, as given
    assert train_main(["--config", "task/config.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "data.path task/data.jsonl: first 5 rows make prompts" in out and "plan: fits" in out


def test_the_gpu_starter_passes_the_dry_run_on_one_node_of_4_gpus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, _, _ = write_starter(tmp_path / "t", gpu=True)
    assert train_main(["--config", str(config), "--dry-run", "--gpus-per-node", "4"]) == 0
    out = capsys.readouterr().out
    assert "2 vLLM engine(s)" in out and "deepspeed ZeRO-2, 2 rank(s)" in out and "plan: fits" in out


def test_the_gpu_starter_keeps_the_gpu_recipe_s_engine_learner_and_sync_settings(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "rubric.yaml").write_text(
        (REPO_ROOT / "rewards" / "judge" / "rubrics" / "seed000.yaml").read_text()
    )
    starter, recipe = starter_config(tmp_path / "t", gpu=True), load_config(GPU_RECIPE)
    for section in ("model", "learner", "weight_sync", "algorithm", "pipeline"):
        assert getattr(starter, section) == getattr(recipe, section), section
    task_specific = {"max_new_tokens"}
    assert starter.rollout.model_dump(exclude=task_specific) == recipe.rollout.model_dump(exclude=task_specific)
    assert starter.run.actor_start_timeout_s == recipe.run.actor_start_timeout_s


def test_existing_files_are_never_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    task = tmp_path / "task"
    task.mkdir()
    (task / "data.jsonl").write_text('{"prompt": "mine"}\n')
    assert main([str(task)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "data.jsonl already exists" in err
    assert [p.name for p in task.iterdir()] == ["data.jsonl"]  # nothing else written
    assert (task / "data.jsonl").read_text() == '{"prompt": "mine"}\n'
