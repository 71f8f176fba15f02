"""The offline jobs' configs: every shipped one loads, defaults, overrides and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from shipped_configs import job_of, shipped_configs

from ray_jobs import preference, sft
from ray_jobs.config.evaluation import EvaluateConfig
from ray_jobs.config.experiment import ConfigError
from ray_jobs.config.offline import ScheduleConfig, load_job_config

REPO_ROOT = Path(__file__).resolve().parents[2]
JOBS: dict[str, type] = {
    "sft": sft.SftConfig,
    "preference": preference.PreferenceConfig,
    "evaluate": EvaluateConfig,
}
SFT_GEO = REPO_ROOT / "configs" / "sft_then_grpo_geo"
CRITIC = REPO_ROOT / "configs" / "simpo_critic_best_of_n"


def _offline_configs() -> list[tuple[Path, type]]:
    """Shipped configs (any folder of configs/) whose first line is the command of an offline job."""
    return [(path, JOBS[job_of(path)]) for path in shipped_configs() if job_of(path) in JOBS]


def test_the_recipes_are_shipped() -> None:
    names = {str(p.relative_to(REPO_ROOT / "configs")) for p, _ in _offline_configs()}
    assert {
        "sft_then_grpo_geo/cpu_1_sft.yaml",
        "sft_then_grpo_geo/gpu_1_sft.yaml",
        "simpo_critic_best_of_n/cpu_1_critic.yaml",
        "simpo_critic_best_of_n/gpu_1_critic.yaml",
        "simpo_critic_best_of_n/cpu_2_eval.yaml",
        "simpo_critic_best_of_n/gpu_2_eval.yaml",
        "domain_names_gspo/cpu_smollm2_1_sft.yaml",
        "domain_names_gspo/cpu_smollm2_3_eval.yaml",
    } <= names


@pytest.mark.parametrize(
    "path, cls", _offline_configs(), ids=lambda x: str(x.relative_to(REPO_ROOT)) if isinstance(x, Path) else ""
)
def test_every_shipped_offline_config_loads(path: Path, cls: type) -> None:
    assert isinstance(load_job_config(cls, path), cls)


def test_cpu_recipes_are_the_embedded_defaults_under_another_name() -> None:
    recipe = load_job_config(sft.SftConfig, SFT_GEO / "cpu_1_sft.yaml")
    assert recipe.model_dump(exclude={"run"}) == sft.SftConfig().model_dump(exclude={"run"})
    critic = load_job_config(preference.PreferenceConfig, CRITIC / "cpu_1_critic.yaml")
    default = preference.PreferenceConfig()
    assert critic.model_dump(exclude={"run", "algorithm"}) == default.model_dump(exclude={"run", "algorithm"})
    assert critic.algorithm.objective == default.algorithm.objective  # the recipe spells out the preset


def test_the_gpu_critic_has_the_recipe_hyperparameters() -> None:
    cfg = load_job_config(preference.PreferenceConfig, CRITIC / "gpu_1_critic.yaml")
    objective = cfg.algorithm.objective
    assert (objective.name, objective.beta, objective.gamma) == ("simpo", 2.0, 1.0)
    assert (cfg.learner.lr, cfg.learner.lr_scheduler, cfg.learner.warmup_ratio) == (5e-6, "cosine", 0.1)
    assert (cfg.schedule.epochs, cfg.schedule.batch_size, cfg.data.max_length, cfg.data.max_prompt_length) == (
        8,
        8,
        2048,
        1536,
    )
    assert (cfg.learner.lora.r, cfg.learner.lora.alpha, len(cfg.learner.lora.target_modules)) == (16, 32, 7)


def test_presets_and_overrides() -> None:
    dpo = load_job_config(preference.PreferenceConfig, None, ["algorithm.name=dpo"]).algorithm.objective
    assert (dpo.beta, dpo.needs_reference) == (0.1, True)
    tuned = load_job_config(preference.PreferenceConfig, None, ["algorithm.beta=2.5", "algorithm.gamma=0.5"])
    assert (tuned.algorithm.objective.beta, tuned.algorithm.objective.gamma) == (2.5, 0.5)
    assert load_job_config(sft.SftConfig, None, ["learner.backend=deepspeed"]).learner.lr == 1e-2  # job default kept


def test_steps_from_epochs() -> None:
    assert ScheduleConfig(batch_size=8, epochs=2).total_steps(None, 20) == 5  # ceil(40 / 8)
    assert ScheduleConfig(batch_size=8, epochs=2).total_steps(3, 20) == 3


def test_unknown_key_names_the_nearest() -> None:
    with pytest.raises(ConfigError, match="unknown config key 'schedule.epoch'; did you mean 'schedule.epochs'"):
        load_job_config(sft.SftConfig, None, ["schedule.epoch=3"])


def test_bad_input_is_one_line_and_exit_code_2(tmp_path: Path, capsys) -> None:
    assert sft.main([f"data.path={tmp_path / 'missing.jsonl'}", f"run.output_dir={tmp_path / 'a'}"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": "a"}\n')
    assert preference.main([f"data.path={bad}", "data.eval_fraction=0", f"run.output_dir={tmp_path / 'b'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # before it: the datasets library's progress bar
    assert err.startswith("error: data: row 1 of") and "'chosen' and 'rejected'" in err
