from pathlib import Path

import pytest
import yaml
from shipped_configs import job_of, shipped_configs

from ray_jobs.config.experiment import ConfigError, ExperimentConfig, apply_override, load_config, redacted

REPO_ROOT = Path(__file__).resolve().parents[2]


def _training_configs() -> list[Path]:
    """Shipped configs of ``relay train`` (any folder of ``configs/``): those whose first line names
    that job (``tests/ray_jobs/test_offline_config.py`` loads the others)."""
    return [p for p in shipped_configs() if job_of(p) == "train"]


def _name(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT / "configs"))


@pytest.mark.parametrize("path", _training_configs(), ids=_name)
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, ExperimentConfig)


def test_cpu_default_file_matches_embedded_defaults() -> None:
    assert load_config(REPO_ROOT / "configs" / "cpu_default.yaml") == load_config(None)


def test_required_keys_exist_with_their_meaning() -> None:
    cfg = load_config(
        None,
        [
            "run.output_dir=/tmp/x",
            "run.steps=7",
            "pipeline.max_staleness=0",
            "judge.base_url=http://127.0.0.1:9/v1",
            "judge.model=m",
            "judge.api_key_env=MY_KEY",
            "judge.timeout_s=3.5",
        ],
    )
    assert cfg.run.directory == Path("/tmp/x")
    assert (cfg.run.steps, cfg.pipeline.max_staleness) == (7, 0)
    assert (cfg.judge.base_url, cfg.judge.model, cfg.judge.api_key_env, cfg.judge.timeout_s) == (
        "http://127.0.0.1:9/v1",
        "m",
        "MY_KEY",
        3.5,
    )
    assert not cfg.judge.uses_local_server


def test_unknown_key_names_key_and_nearest() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown config key 'pipeline.max_stalenes'; did you mean 'pipeline.max_staleness'"
    ):
        load_config(None, ["pipeline.max_stalenes=1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'nonsense'$"):
        load_config(None, ["nonsense=1"])


def test_unknown_key_inside_list_items(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"reward": {"terms": [{"name": "judge", "wieght": 1}]}}))
    with pytest.raises(ConfigError, match=r"reward.terms\[0\].wieght'; did you mean 'reward.terms\[0\].weight'"):
        load_config(f)


def test_invalid_value_is_one_line() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["run.steps=0"])
    assert "run.steps" in str(err.value) and "\n" not in str(err.value)


def test_override_values_parse_as_yaml() -> None:
    raw: dict = {}
    apply_override(raw, "a.b=3")
    apply_override(raw, "a.c=[x, y]")
    apply_override(raw, "d=true")
    assert raw == {"a": {"b": 3, "c": ["x", "y"]}, "d": True}
    with pytest.raises(ConfigError):
        apply_override(raw, "no_equals_sign")


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/x.yaml")


def test_redaction_masks_secret_values_but_not_env_names() -> None:
    cfg = load_config(None)
    data = redacted(cfg)
    assert data["judge"]["api_key_env"] == "RELAY_JUDGE_API_KEY"
    assert data["data"]["max_prompt_tokens"] == 256 and data["rollout"]["max_new_tokens"] == 12
    data2 = {"x": {"api_key": "sk-live", "auth_token": "t", "max_tokens": 5}}
    from ray_jobs.config import experiment as config_module

    class Fake:
        def model_dump(self, mode):
            return data2

    assert config_module.redacted(Fake())["x"] == {"api_key": "***", "auth_token": "***", "max_tokens": 5}


@pytest.mark.parametrize("path", [p for p in _training_configs() if p.name.startswith("gpu_")], ids=_name)
def test_gpu_configs_train_with_master_weights_and_rollout_correction(path: Path) -> None:
    """vLLM samples in bf16 with its own kernels, so its log-probs differ from the learner's by 1e-3 to
    1e-2 per token: more than GSPO's whole clip band. The shipped GPU recipes correct that mismatch
    (the clip's old policy is the learner's own recompute) and keep float32 master weights."""
    cfg = load_config(path)
    assert cfg.rollout.backend != "vllm" or cfg.algorithm.settings.rollout_correction != "none"
    assert cfg.learner.precision == "mixed"
