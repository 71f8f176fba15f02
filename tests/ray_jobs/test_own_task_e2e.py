"""One's own task end to end: a tiny RL run on one's own conversational dataset, a TRL-style
reward function and one's own rubric file against a judge endpoint (a recording stand-in).
No demo text reaches the policy or the judge, the function's scores reach the advantages the
loss uses, and its None leaves a sample unscored (counted), never 0."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr

import ray_jobs.train as train
from actors.model.loading import DOMAIN_TASK_SYSTEM_PROMPT
from rewards.judge.rubric import load_rubric
from rewards.stand_in.judge_server import JudgeServer, ServerSettings, _Handler
from tests.rewards.trl_reward_functions import letter_share

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_ray")]

TERM = "tests.rewards.trl_reward_functions:letter_reward"
KEY_ENV, KEY = "RELAY_OWN_TASK_TEST_KEY", "sk-own-task-test-0001"
SYSTEM = "You answer with one short word."
TEMPLATE = "You grade short answers to questions.\n\n$criteria\n\n$fences\n\n$output_format\n"
LETTERS = ["a", "e", "o", None]  # the last row's letter is null: its samples are unscored
DEMO_TEXTS = (DOMAIN_TASK_SYSTEM_PROMPT, "domain name", "Blocked", load_rubric("seed000").system_template[:80])


class _Recording(_Handler):
    """The stand-in judge, keeping every request body it receives."""

    bodies: list[dict] = []

    def answer(self, raw: bytes) -> None:
        type(self).bodies.append(json.loads(raw))
        super().answer(raw)


def _files(tmp_path: Path, judge_url: str) -> Path:
    rows = [
        {
            "id": f"q{i}",
            "letter": letter,
            "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
        }
        for i, (letter, q) in enumerate(zip(LETTERS, ["A fruit?", "A colour?", "An animal?", "A city?"]))
    ]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rubric = {
        "name": "short-answers",
        "version": "v1",
        "criteria": [{"name": "fits", "weight": 1.0, "description": "The answer fits the question."}],
        "system_template": TEMPLATE,
    }
    (tmp_path / "rubric.yaml").write_text(yaml.safe_dump(rubric))
    config = {
        "run": {"steps": 2, "save_final": False, "output_dir": str(tmp_path / "run")},
        "data": {"path": str(tmp_path / "data.jsonl")},
        "rollout": {"max_new_tokens": 12},
        "pipeline": {"max_staleness": 0, "prompts_per_step": 4},
        "judge": {
            "base_url": judge_url,
            "model": "my-judge",
            "api_key_env": KEY_ENV,
            "rubric": str(tmp_path / "rubric.yaml"),
        },
        "reward": {
            "terms": [
                {"name": "judge", "weight": 0.5},
                {"name": TERM, "weight": 1.0, "options": {"record_to": str(tmp_path / "calls.jsonl")}},
            ]
        },
        "wandb": {"mode": "disabled"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_own_task_with_a_trl_reward_and_own_rubric(
    tmp_path: Path, tiny_model_config, tiny_tokenizer, monkeypatch
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    built: list = []
    real_load = train.load_prompts
    monkeypatch.setattr(train, "load_prompts", lambda data, tok: built.extend(real_load(data, tok)) or list(built))
    settings = ServerSettings(model="my-judge", api_key=SecretStr(KEY))
    with JudgeServer(settings=settings, handler=_Recording) as server:
        path = _files(tmp_path, server.base_url)
        train.run(train.load_config(path, [f"model.cache_dir={tiny_model_config.cache_dir}"]))
    run_dir = tmp_path / "run"
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]

    # No demo text reaches the policy: its prompts are the rows' conversations, templated as given.
    policy_prompts = [tiny_tokenizer.decode(item.prompt_token_ids) for item in built]
    assert len(policy_prompts) == 4 and all(SYSTEM in p for p in policy_prompts)
    assert not any(demo in p for p in policy_prompts for demo in DEMO_TEXTS)
    # ... nor the judge: every request carries one's own rubric and nothing of the demo's.
    assert _Recording.bodies
    for body in _Recording.bodies:
        system = next(m["content"] for m in body["messages"] if m["role"] == "system")
        assert body["model"] == "my-judge" and system.startswith("You grade short answers") and '"fits"' in system
        assert "request_check" not in system and not any(demo in json.dumps(body) for demo in DEMO_TEXTS)

    # The TRL function was called batched with TRL's arguments.
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert calls and all(len(c["prompts"]) == len(c["completions"]) == len(c["completion_ids"]) for c in calls)
    assert all(p[0] == {"role": "system", "content": SYSTEM} for c in calls for p in c["prompts"])
    assert all(comp[0]["role"] == "assistant" for c in calls for comp in c["completions"])

    letters = {f"q{i}": letter for i, letter in enumerate(LETTERS)}
    scored = [s for s in samples if letters[s["prompt_id"]] is not None]
    unscored = [s for s in samples if letters[s["prompt_id"]] is None]
    # Its scores reach the reward, and the group advantages the loss is computed from.
    for s in scored:
        assert s["terms"][TERM] == pytest.approx(letter_share(s["completion"], letters[s["prompt_id"]]))
        assert s["reward"] == pytest.approx(s["terms"][TERM] + 0.5 * s["terms"]["judge"])
    groups: dict[str, list[dict]] = {}
    for s in scored:
        groups.setdefault(s["group_id"], []).append(s)
    varied = [g for g in groups.values() if len({round(s["reward"], 9) for s in g}) > 1]
    assert varied  # some group's rewards differ, so it carries a learning signal
    for g in varied:
        ranked = sorted(g, key=lambda s: s["reward"])
        assert ranked[0]["advantage"] < 0 < ranked[-1]["advantage"]
    assert all(math.isfinite(m["loss"]) for m in metrics)
    # A None is unscored, counted, and left out of the step's reward mean (never 0).
    assert unscored and all(s["reward"] is None and s["advantage"] is None for s in unscored)
    assert {s["reward_error"] for s in unscored} == {f"{TERM}_no_score"}
    assert sum(m["reward/unscored"] for m in metrics) == len(unscored)
    for m in metrics:
        step_rewards = [s["reward"] for s in scored if s["step"] == m["step"]]
        assert m["reward/mean"] == pytest.approx(sum(step_rewards) / len(step_rewards))
