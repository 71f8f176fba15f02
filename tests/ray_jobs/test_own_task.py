"""No silent demo: on one's own data.path no demo default applies unless the config sets it;
a judge term without an endpoint or rubric, the demo's system prompt on one's own data and a
rubric file without a required placeholder are one-line errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from actors.model.loading import DOMAIN_TASK_SYSTEM_PROMPT
from ray_jobs.config.experiment import ConfigError, ExperimentConfig, load_config
from ray_jobs.evaluate import load_eval_config
from rewards.judge.prompt import system_message
from rewards.judge.rubric import load_rubric

REPO_ROOT = Path(__file__).resolve().parents[2]
OWN = ["data.path=/data/mine.jsonl"]
REMOTE = ["judge.base_url=http://127.0.0.1:9/v1", "judge.model=my-judge"]
CRITERIA = "judge.criteria=[{name: correct, weight: 1, description: The answer is correct.}]"
SEED000 = load_rubric("seed000")


def test_the_demo_keeps_every_default() -> None:
    from ray_jobs.config.own_task import is_demo_data

    for cfg in (load_config(None, []), load_config(REPO_ROOT / "configs/cpu_default.yaml", [])):
        assert cfg == ExperimentConfig()
        assert cfg.data.system_prompt == DOMAIN_TASK_SYSTEM_PROMPT and cfg.data.prompt_field == "description"
        assert cfg.judge.rubric == "seed000" and cfg.judge.uses_local_server and cfg.eval.label_field
    absolute = load_config(None, [f"data.path={REPO_ROOT / 'configs/data/business_descriptions_bad_third.jsonl'}"])
    assert absolute.data.system_prompt == DOMAIN_TASK_SYSTEM_PROMPT and absolute.judge.uses_local_server
    assert is_demo_data("configs/data/business_descriptions_heldout.jsonl") and not is_demo_data("/data/mine.jsonl")


def test_own_data_without_judge_endpoint_or_rubric_is_a_one_line_error() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, OWN)
    line = str(err.value)
    assert "\n" not in line and "judge.base_url" in line and "judge.rubric" in line and "/data/mine.jsonl" in line
    with pytest.raises(ConfigError, match=r"needs judge.rubric \(a rubric file\) or judge.criteria;"):
        load_config(None, OWN + REMOTE)
    with pytest.raises(ConfigError, match=r"needs judge.base_url \(an OpenAI"):
        load_config(None, OWN + [CRITERIA])
    with pytest.raises(ConfigError, match=r"needs judge.model"):
        load_config(None, OWN + [REMOTE[0], CRITERIA])


def test_own_data_without_a_judge_term_needs_no_judge() -> None:
    cfg = load_config(None, OWN + ["reward.terms=[{name: domain_format}]"])
    assert not cfg.judge.has_endpoint and not cfg.judge.uses_local_server


def test_own_data_gets_no_demo_value() -> None:
    cfg = load_config(None, OWN + REMOTE + [CRITERIA])
    assert cfg.data.system_prompt is None and cfg.data.prompt_field == "prompt"
    assert cfg.judge.rubric is None and not cfg.judge.uses_local_server and cfg.eval.label_field is None
    rubric = cfg.judge.rubric_spec()
    assert rubric.request_check is None
    text = system_message(rubric)
    assert '"correct"' in text and "domain" not in text.lower() and "Blocked" not in text
    assert "The task:" in SEED000.system_template and "The task:" not in text


def test_own_data_keeps_what_the_config_sets(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        OWN
        + [
            "data.system_prompt=Be brief.",
            "data.prompt_field=question",
            "judge.rubric=seed000",
            "judge.local_server.enabled=true",
            "eval.label_field=flag",
        ],
    )
    assert (cfg.data.system_prompt, cfg.data.prompt_field, cfg.judge.rubric) == ("Be brief.", "question", "seed000")
    assert cfg.judge.uses_local_server and cfg.eval.label_field == "flag"
    explicit_null = load_config(None, OWN + REMOTE + [CRITERIA, "data.system_prompt=null"])
    assert explicit_null.data.system_prompt is None


def test_a_copy_of_the_default_config_with_own_data_is_an_error(tmp_path: Path) -> None:
    raw = yaml.safe_load((REPO_ROOT / "configs/cpu_default.yaml").read_text())
    raw["data"]["path"] = "/data/mine.jsonl"
    raw["judge"].update(base_url="http://127.0.0.1:9/v1", model="my-judge")
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="data.system_prompt is the domain-name demo's"):
        load_config(path, [])
    assert load_config(path, ["data.system_prompt=null"]).judge.rubric == "seed000"  # set in the file: kept


def test_the_evaluation_job_resolves_the_same_way() -> None:
    assert load_eval_config(None, []).data.system_prompt == DOMAIN_TASK_SYSTEM_PROMPT
    with pytest.raises(ConfigError, match="judge.base_url"):
        load_eval_config(None, OWN)
    cfg = load_eval_config(None, OWN + REMOTE + [CRITERIA])
    assert cfg.data.system_prompt is None and cfg.data.label_field is None and cfg.judge.rubric is None


def _rubric_file(tmp_path: Path, drop: str) -> Path:
    template = "Judge it.\n$criteria\n$fences\n$output_format\n".replace(f"${drop}\n", "")
    path = tmp_path / "rubric.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "mine",
                "version": "v1",
                "criteria": [{"name": "correct", "weight": 1, "description": "Correct."}],
                "system_template": template,
            }
        )
    )
    return path


@pytest.mark.parametrize("placeholder", ["criteria", "fences", "output_format"])
def test_a_rubric_file_missing_a_placeholder_is_a_one_line_error(tmp_path: Path, placeholder: str) -> None:
    path = _rubric_file(tmp_path, placeholder)
    with pytest.raises(ConfigError) as err:
        load_config(None, OWN + REMOTE + [f"judge.rubric={path}"])
    line = str(err.value)
    assert "\n" not in line and str(path) in line
    assert f"lacks the placeholders ${placeholder} (" in line


def test_the_stand_in_says_it_is_one(monkeypatch, tmp_path: Path, caplog) -> None:
    import contextlib

    import ray_jobs.runtime.local_servers as local_judge

    monkeypatch.setattr(local_judge, "local_server", lambda *a, **k: contextlib.nullcontext("http://x/v1"))
    cfg = load_config(None, OWN + ["judge.local_server.enabled=true", CRITERIA])
    with caplog.at_level(logging.WARNING, logger="ray_jobs.runtime.local_servers"):
        with local_judge.local_judge_server(cfg.judge, tmp_path / "judge.log") as url:
            assert url == "http://x/v1"
    assert any("STAND-IN judge" in r.getMessage() and "not an LLM judge" in r.getMessage() for r in caplog.records)


def test_the_train_command_refuses_it_in_one_line_before_anything_starts(capsys) -> None:
    import ray

    from ray_jobs.train import main

    assert main(OWN) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: ") and "judge.base_url" in line and "judge.rubric" in line
    assert not ray.is_initialized()


def test_a_judge_endpoint_without_a_judge_term_needs_no_key(monkeypatch, tmp_path: Path, caplog) -> None:
    """A starter config keeps its judge endpoint after the judge term is dropped: with the key unset
    the run goes on without the judge (logged); with the key set the endpoint stays, for terms that
    call it. A judge term still needs the key."""
    from ray_jobs.runtime.local_servers import rewards_for_run
    from rewards.errors import MissingApiKeyError

    own_terms = "reward.terms=[{name: 'rewards.rules:completion_length_penalty', weight: 1.0}]"
    cfg = load_config(None, OWN + REMOTE + ["judge.api_key_env=MY_JUDGE_KEY", "judge.check_endpoint=false", own_terms])
    monkeypatch.delenv("MY_JUDGE_KEY", raising=False)
    with caplog.at_level(logging.WARNING, logger="ray_jobs.runtime.local_servers"):
        with rewards_for_run(cfg.judge, cfg.reward, tmp_path) as (judge, _, keys):
            assert not judge.is_remote and not judge.uses_local_server and keys == {}
    assert any("no 'judge' term" in r.getMessage() for r in caplog.records)
    monkeypatch.setenv("MY_JUDGE_KEY", "k")
    with rewards_for_run(cfg.judge, cfg.reward, tmp_path) as (judge, _, keys):
        assert judge.base_url == "http://127.0.0.1:9/v1" and "MY_JUDGE_KEY" in keys
    monkeypatch.delenv("MY_JUDGE_KEY")
    with_judge = load_config(None, OWN + REMOTE + [CRITERIA, "judge.api_key_env=MY_JUDGE_KEY"])
    with pytest.raises(MissingApiKeyError, match="MY_JUDGE_KEY"):
        with rewards_for_run(with_judge.judge, with_judge.reward, tmp_path):
            pass
