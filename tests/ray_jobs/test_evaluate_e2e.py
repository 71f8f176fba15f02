"""The evaluation job on one local Ray with the tiny model: conditions, cost, report, a rollout worker
SIGKILLed mid-run, and an exact resume after a kill."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from run_procs import signal_first

from ray_jobs import evaluate
from ray_jobs.evaluate import load_eval_config

pytestmark = pytest.mark.slow

CONDITIONS = (
    "conditions={base: {}, "
    "bo2_critic: {k: 2, temperature: 1.0, select: critic, critic: {path: 'builtin:tiny-qwen'}}, "
    "bo2_judge: {k: 2, temperature: 1.0, select: judge}}"
)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def _overrides(out: Path, tiny_model_config) -> list[str]:
    return [
        f"run.output_dir={out}",
        f"model.cache_dir={tiny_model_config.cache_dir}",
        "wandb.mode=disabled",
        "data.max_items=12",
        "run.items_per_call=4",
        "statistics.resamples=500",
        "statistics.baseline=base",
        CONDITIONS,
    ]


def _items(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    return sorted(
        ({k: v for k, v in r.items() if k != "seconds"} for r in rows), key=lambda r: (r["condition"], r["item_id"])
    )


def _kill_worker_after_first_chunk(items: Path, errors: list[BaseException]) -> None:
    try:
        while not items.exists() or len(items.read_text().splitlines()) < 4:
            time.sleep(0.05)
        signal_first("ray::RolloutWorker", signal.SIGKILL)
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)


def test_conditions_are_compared_with_costs_and_a_killed_evaluation_resumes_exactly(
    local_ray, tmp_path: Path, tiny_model_config
) -> None:
    out = tmp_path / "eval"
    cfg = load_eval_config(None, _overrides(out, tiny_model_config))
    errors: list[BaseException] = []
    killer = threading.Thread(target=_kill_worker_after_first_chunk, args=(out / "items.jsonl", errors), daemon=True)
    killer.start()
    evaluate.run(cfg)  # its rollout worker SIGKILLed after the first chunk: Ray restarts it, lost chunks are resent
    killer.join(timeout=5)
    assert not errors, errors
    results = json.loads((out / "results.json").read_text())
    conditions = results["conditions"]
    assert list(conditions) == ["base", "bo2_critic", "bo2_judge"]
    assert all(c["n"] + c["n_missing"] == 12 for c in conditions.values())
    assert [conditions[c]["forward_passes_per_item"] for c in conditions] == [1.0, 3.0, 2.0]
    assert [conditions[c]["judge_calls_per_item"] for c in conditions] == [1.0, 1.0, 2.0]
    assert conditions["base"]["block_rate"] is not None  # row 9 of the held-out file is a harmful request
    assert [(c["a"], c["b"]) for c in results["comparisons"]] == [("base", "bo2_critic"), ("base", "bo2_judge")]
    report = (out / "report.md").read_text()
    assert "bo2_judge vs base" in report and "Pareto" in report
    assert (out / "condition_means.png").read_bytes()[:4] == b"\x89PNG"
    whole = _items(out)
    assert len(whole) == 36

    # as if killed while writing: the second chunk of bo2_critic half written, the rest never made
    lines = (out / "items.jsonl").read_text().splitlines(keepends=True)
    kept = [line for line in lines if json.loads(line)["condition"] == "base"]
    critic = [line for line in lines if json.loads(line)["condition"] == "bo2_critic"]
    (out / "items.jsonl").write_text("".join(kept + critic[:6]) + critic[6][:40])
    (out / "results.json").unlink()
    evaluate.run(cfg)
    assert (out / "items.jsonl").read_text().startswith("".join(kept + critic[:4]))  # complete chunks kept as written
    assert _items(out) == whole  # each chunk sampled from its own seed: the same candidates, the same scores
    assert json.loads((out / "results.json").read_text())["comparisons"] == results["comparisons"]


def test_changed_conditions_do_not_mix_into_an_earlier_evaluation(local_ray, tmp_path: Path, tiny_model_config) -> None:
    out = tmp_path / "eval"
    base = [
        f"run.output_dir={out}",
        f"model.cache_dir={tiny_model_config.cache_dir}",
        "wandb.mode=disabled",
        "data.max_items=4",
        "statistics.resamples=200",
        "conditions={base: {}}",
    ]
    evaluate.run(load_eval_config(None, base))
    with pytest.raises(evaluate.RunDirectoryError, match="conditions.base.system_prompt"):
        evaluate.run(load_eval_config(None, base + ["conditions.base.system_prompt=Answer tersely."]))
    evaluate.run(load_eval_config(None, base + ["statistics.resamples=300"]))  # only the report changes
    assert json.loads((out / "results.json").read_text())["resamples"] == 300
