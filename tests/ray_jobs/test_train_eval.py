"""Evaluation during training, without Ray: metric aggregation (expected values derived by
hand), when evaluations are due, the held-out set and its labels, and eval.jsonl on resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from actors.messages import PromptItem, Sample, ScoredSample, ScoreResult
from ray_jobs.config.experiment import ConfigError, TrainEvalConfig, WandbConfig, load_config
from ray_jobs.data.prompts import DataConfig, DatasetError
from ray_jobs.rl.train_eval import eval_due, eval_metrics, load_eval_set
from ray_jobs.runtime.tracking import RunRecorder


def _scored(
    row: int, reward: float | None, blocked: float | None, version: int = 4, final: int | None = None
) -> ScoredSample:
    prompt = PromptItem(f"id{row}", row, f"prompt {row}", [1, 2])
    sample = Sample(
        prompt, f"b4c0p{row}", 0, "x.com", [5], [-0.1], version, truncated=False, final_policy_version=final
    )
    terms = {} if blocked is None else {"judge/blocked": blocked}
    return ScoredSample(sample, reward, None if reward is not None else "judge_timeout", terms)


def _result(scored: list[ScoredSample], generate_s: float, judge_s: float) -> ScoreResult:
    return ScoreResult(4, scored, generate_s, judge_s, judge_requests=len(scored), judge_failures=0)


def test_metrics_leave_unscored_samples_out() -> None:
    results = [
        _result([_scored(0, 0.2, 0.0), _scored(1, 0.6, 1.0)], generate_s=0.5, judge_s=1.0),
        _result(
            [_scored(2, None, 1.0), _scored(3, 1.0, 1.0, version=3), _scored(4, 0.6, 0.0, final=5)],
            generate_s=0.25,
            judge_s=0.5,
        ),
    ]
    labels = {0: False, 1: True, 2: True, 3: None, 4: False}
    m = eval_metrics(4, results, labels, lost=4)
    # scored rewards 0.2, 0.6, 1.0, 0.6 (row 2 unscored, never a 0): mean 2.4 / 4 = 0.6;
    # deviations -0.4, 0, 0.4, 0: sample sd sqrt(0.32 / 3)
    assert m["eval/reward_mean"] == pytest.approx(0.6)
    assert m["eval/reward_sd"] == pytest.approx(math.sqrt(0.32 / 3))
    assert (m["eval/scored"], m["eval/unscored"], m["eval/lost_samples"]) == (4.0, 1.0, 4.0)
    # inappropriate and scored: row 1 (blocked) -> 1/1; row 2 is unscored, row 3 unlabelled
    assert m["eval/block_rate"] == 1.0
    # appropriate: rows 0 (answered) and 4 (answered) -> 0/2
    assert m["eval/false_block_rate"] == 0.0
    assert m["eval/policy_version"] == 4.0
    assert m["eval/off_version_samples"] == 2.0  # row 3 came from v3, row 4 ended on v5
    assert (m["eval/generate_s"], m["eval/judge_s"]) == (0.75, 1.5)


def test_metrics_of_nothing_scored_are_null_not_zero() -> None:
    m = eval_metrics(2, [_result([_scored(0, None, None)], 0.1, 0.2)], labels=None)
    assert (m["eval/reward_mean"], m["eval/reward_sd"], m["eval/scored"], m["eval/unscored"]) == (None, None, 0.0, 1.0)
    assert "eval/block_rate" not in m and "eval/false_block_rate" not in m  # no labels: no rates
    one = eval_metrics(2, [_result([_scored(0, 0.5, None)], 0.1, 0.2)], labels={0: True})
    assert (one["eval/reward_mean"], one["eval/reward_sd"]) == (0.5, None)
    assert (one["eval/block_rate"], one["eval/false_block_rate"]) == (None, None)  # no blocked flag: unknown


def test_evaluations_are_due_every_n_steps_and_after_the_last() -> None:
    assert [s for s in range(13) if eval_due(s, 5, 12)] == [5, 10, 12]
    assert [s for s in range(11) if eval_due(s, 5, 10)] == [5, 10]
    assert [s for s in range(4) if eval_due(s, 7, 3)] == [3]  # every_steps beyond the run: the final one
    assert not any(eval_due(s, 0, 10) for s in range(11))


def _write(tmp_path: Path, rows: list[dict]) -> str:
    path = tmp_path / "heldout.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_the_held_out_set_is_the_first_rows_with_their_labels(tmp_path: Path, tiny_tokenizer) -> None:
    path = _write(
        tmp_path,
        [
            {"id": "a", "description": "a bakery", "inappropriate": False},
            {"id": "b", "description": "a forgery shop", "inappropriate": True},
            {"id": "c", "description": "a florist"},
        ],
    )
    cfg = TrainEvalConfig(every_steps=2, data=path, max_prompts=2)
    evalset = load_eval_set(cfg, DataConfig(), tiny_tokenizer)
    assert [i.prompt_id for i in evalset.items] == ["a", "b"] and evalset.labels == [False, True]
    everything = load_eval_set(cfg.model_copy(update={"max_prompts": None}), DataConfig(), tiny_tokenizer)
    assert everything.labels == [False, True, None]
    assert everything.labels_by_row() == {0: False, 1: True, 2: None}
    unlabelled = load_eval_set(cfg.model_copy(update={"label_field": None}), DataConfig(), tiny_tokenizer)
    assert unlabelled.labels == [None, None] and unlabelled.labels_by_row() is None
    assert load_eval_set(TrainEvalConfig(), DataConfig(), tiny_tokenizer) is None  # evaluation off


def test_bad_held_out_data_is_a_one_line_error(tmp_path: Path, tiny_tokenizer) -> None:
    path = _write(
        tmp_path,
        [
            {"description": "a bakery", "inappropriate": False},
            {"description": "a forgery shop", "inappropriate": "yes"},
        ],
    )
    with pytest.raises(
        DatasetError,
        match=r"^eval.data: row 1 of .* has 'inappropriate' = 'yes'; a label must be "
        r"true, false or null$",
    ):
        load_eval_set(TrainEvalConfig(every_steps=1, data=path), DataConfig(), tiny_tokenizer)
    with pytest.raises(DatasetError, match=r"^eval.data: file /nope/heldout.jsonl does not exist$"):
        load_eval_set(TrainEvalConfig(every_steps=1, data="/nope/heldout.jsonl"), DataConfig(), tiny_tokenizer)
    with pytest.raises(
        ConfigError, match=r"eval.data is required when eval.every_steps > 0 \(got every_steps=5\)"
    ) as err:
        load_config(None, ["eval.every_steps=5"])
    assert "\n" not in str(err.value)


def test_a_resumed_recorder_keeps_the_evaluations_up_to_its_checkpoint(tmp_path: Path) -> None:
    lines = [
        {"step": 2, "eval/reward_mean": 0.1},
        {"step": 6, "eval/reward_mean": 0.3},
        {"step": 4, "eval/reward_mean": 0.2},
    ]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 8, "eval/re')
    recorder = RunRecorder(tmp_path, {}, WandbConfig(mode="disabled"), "t", total_steps=10, start_step=4)
    try:
        assert recorder.eval_steps == {2, 4}  # the checkpoint's policy and older: kept; 6 and a torn line: dropped
        recorder.record_eval(6, {"eval/reward_mean": 0.35, "eval/reward_sd": None})
    finally:
        recorder.close()
    kept = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert kept == [lines[0], lines[2], {"step": 6, "eval/reward_mean": 0.35, "eval/reward_sd": None}]
