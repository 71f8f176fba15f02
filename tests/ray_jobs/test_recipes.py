"""The recipes under ``configs/``: each header's first line is the command that runs it, each recipe
folder's README gives exactly those commands, stages name earlier stages' outputs by run names that
exist, and the best-of-n evaluation differs from its baseline only in candidates and critic."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from shipped_configs import (
    COMMAND,
    GENERATED_DEFAULT,
    REPO_ROOT,
    own_command,
    recipe_folders,
    shipped_configs,
)

from ray_jobs.config.evaluation import EvaluateConfig
from ray_jobs.config.offline import load_job_config

RECIPES = [p for p in shipped_configs() if p != GENERATED_DEFAULT]
CRITIC = REPO_ROOT / "configs" / "simpo_critic_best_of_n"


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


def test_the_target_layout_is_shipped() -> None:
    folders = {p.name for p in recipe_folders()}
    assert folders == {"domain_names_gspo", "sft_then_grpo_geo", "simpo_critic_best_of_n", "refiner_grpo", "examples"}
    assert not [p.name for p in (REPO_ROOT / "configs").glob("*.yaml") if p != GENERATED_DEFAULT]


@pytest.mark.parametrize("path", RECIPES, ids=_rel)
def test_the_first_line_is_the_command_that_runs_this_file(path: Path) -> None:
    found = COMMAND.fullmatch(own_command(path))
    assert found, f"first line: {path.read_text().splitlines()[0]!r}"
    assert found["job"] in ("train", "sft", "preference", "evaluate")
    assert found["path"] == _rel(path)


@pytest.mark.parametrize("path", [*RECIPES, *(f / "README.md" for f in recipe_folders())], ids=_rel)
def test_recipes_name_tasks_not_seeds(path: Path) -> None:
    assert not re.search(r"\bseed 0\d\d\b", path.read_text(), re.I)


@pytest.mark.parametrize("folder", recipe_folders(), ids=lambda f: f.name)
def test_the_readme_gives_each_config_with_its_own_command(folder: Path) -> None:
    readme = (folder / "README.md").read_text()
    commands = [m[0] for m in COMMAND.finditer(readme)]
    for command in commands:  # every command the README gives is the named config's own first line
        target = REPO_ROOT / COMMAND.fullmatch(command)["path"]  # type: ignore[index]
        assert target.is_file(), f"{folder.name}/README.md: {command}: no such config"
        assert command == own_command(target), f"{folder.name}/README.md: {command!r} != {own_command(target)!r}"
    assert {own_command(p) for p in folder.glob("*.yaml")} <= set(commands)
    assert len(readme.splitlines()) <= 60


def _earlier_outputs(raw: dict) -> list[str]:
    """The run:<name>/... paths a raw config reads (model.path, conditions' policy and critic.path)."""
    paths = [(raw.get("model") or {}).get("path")]
    for cond in (raw.get("conditions") or {}).values():
        paths += [cond.get("policy"), (cond.get("critic") or {}).get("path")]
    return [p for p in paths if isinstance(p, str) and p.startswith("run:")]


def test_stages_read_outputs_that_a_shipped_stage_writes() -> None:
    raws = {p: yaml.safe_load(p.read_text()) for p in shipped_configs()}
    names = [raw["run"]["name"] for raw in raws.values()]
    assert len(names) == len(set(names)), "two recipes write the same run directory"
    read = {(p, ref) for p, raw in raws.items() for ref in _earlier_outputs(raw)}
    assert read  # the chained recipes do name earlier stages
    for path, ref in read:
        assert ref.removeprefix("run:").split("/")[0] in names, f"{_rel(path)}: {ref} is no shipped run"


@pytest.mark.parametrize("name", ["cpu_2_eval.yaml", "gpu_2_eval.yaml"])
def test_best_of_n_generates_like_baseline_and_only_ranks_with_the_critic(name: str) -> None:
    """critic_rs must measure reranking alone: the same policy, adapter setting and prompt as
    baseline; only the number of candidates, their temperature, the selection and the critic differ."""
    cfg = load_job_config(EvaluateConfig, CRITIC / name)
    baseline, critic_rs = cfg.conditions["baseline"], cfg.conditions["critic_rs"]
    ranking = {"k", "temperature", "select", "critic"}
    assert critic_rs.model_dump(exclude=ranking) == baseline.model_dump(exclude=ranking)
    assert (baseline.select, baseline.critic, critic_rs.select) == ("single", None, "critic")
    assert critic_rs.k > 1 and critic_rs.critic is not None and critic_rs.critic.path != critic_rs.policy
    assert cfg.statistics.baseline == "baseline"


def test_the_gpu_evaluation_generates_with_the_sft_adapter_off() -> None:
    cfg = load_job_config(EvaluateConfig, CRITIC / "gpu_2_eval.yaml")
    assert {name: cond.adapter for name, cond in cfg.conditions.items()} == {
        "baseline": False,
        "critic_rs": False,
        "promptaug": False,
    }
