"""Run-directory rules without Ray: checkpoints are atomic, resume decisions, truncation, locks."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest

from actors.messages import PromptItem
from ray_jobs.config.changes import changed_keys
from ray_jobs.data.prompts import DatasetError, PromptSource
from ray_jobs.runtime.control import GracefulStop
from ray_jobs.runtime.lifecycle import (
    DriverState,
    RunDirectoryError,
    RunLock,
    checkpoints,
    plan_resume,
    truncate_jsonl,
    write_checkpoint,
)

CONFIG = {
    "run": {"steps": 10, "name": "x"},
    "model": {"path": "m", "dtype": "float32"},
    "judge": {"max_concurrency": 32, "rubric": "seed000"},
}


def _state(step: int) -> DriverState:
    return DriverState(next_step=step, source={"epoch": 0}, inflight_rows={step + 1: [3, 4]}, counters={"faults/x": 1})


def _write(run_dir: Path, step: int, keep: int = 5, config: dict = CONFIG) -> None:
    write_checkpoint(run_dir, step, config, _state(step), lambda tmp: (tmp / "policy").mkdir(), keep)


def test_checkpoint_is_atomic_and_keeps_the_newest(tmp_path: Path) -> None:
    _write(tmp_path, 5)

    def crash(tmp: Path) -> None:
        (tmp / "learner").mkdir()
        raise OSError("disk full")  # a crash while the learner state is being written

    with pytest.raises(OSError):
        write_checkpoint(tmp_path, 10, CONFIG, _state(10), crash, keep=5)
    assert [c.step for c in checkpoints(tmp_path)] == [5]  # the partial one is invisible
    found = checkpoints(tmp_path)[0]
    assert found.driver_state() == _state(5) and found.manifest()["config"] == CONFIG
    assert "torch" in found.manifest()["packages"]
    for step in (10, 15, 20):
        _write(tmp_path, step, keep=2)
    assert [c.step for c in checkpoints(tmp_path)] == [15, 20]


def test_plan_resume_cases(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert plan_resume(run_dir, "auto", 10, CONFIG).action == "fresh"  # nothing there yet
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"step": 0}\n')
    with pytest.raises(RunDirectoryError, match="wrote no checkpoint.*delete it, or choose another"):
        plan_resume(run_dir, "auto", 10, CONFIG)
    _write(run_dir, 5)
    plan = plan_resume(run_dir, "auto", 10, CONFIG)
    assert plan.action == "resume" and plan.checkpoint.step == 5
    with pytest.raises(RunDirectoryError, match="run.resume=never"):
        plan_resume(run_dir, "never", 10, CONFIG)
    _write(run_dir, 10)
    assert plan_resume(run_dir, "auto", 10, CONFIG).action == "finished"
    assert plan_resume(run_dir, "auto", 20, CONFIG).action == "resume"  # more steps: it continues
    with pytest.raises(RunDirectoryError, match="not the newest checkpoint"):
        plan_resume(run_dir, str(run_dir / "checkpoints" / "step-5"), 20, CONFIG)
    other = tmp_path / "other"
    assert plan_resume(other, str(run_dir / "checkpoints" / "step-10"), 20, CONFIG).checkpoint.step == 10
    with pytest.raises(RunDirectoryError, match="not a checkpoint directory"):
        plan_resume(other, str(run_dir), 20, CONFIG)


def test_resume_refuses_keys_that_change_the_experiment(tmp_path: Path) -> None:
    _write(tmp_path, 5)
    safe = {**CONFIG, "run": {"steps": 50, "name": "x"}, "judge": {"max_concurrency": 64, "rubric": "seed000"}}
    assert plan_resume(tmp_path, "auto", 50, safe).action == "resume"
    unsafe = {**safe, "model": {"path": "m", "dtype": "bfloat16"}, "judge": {"max_concurrency": 64, "rubric": "r2"}}
    with pytest.raises(RunDirectoryError, match="judge.rubric, model.dtype"):
        plan_resume(tmp_path, "auto", 50, unsafe)
    assert changed_keys({"wandb": {"mode": "online"}}, {"wandb": {"mode": "offline"}}) == []


def test_truncate_keeps_only_steps_before_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(8)) + '{"step": 8, "lo')  # torn last line
    assert truncate_jsonl(path, 5) == 4
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 1, 2, 3, 4]
    assert truncate_jsonl(tmp_path / "absent.jsonl", 5) == 0


def test_a_second_run_into_a_locked_directory_is_refused(tmp_path: Path) -> None:
    lock = RunLock(tmp_path)
    with pytest.raises(RunDirectoryError, match=f"in use by a running job \\(pid {os.getpid()}\\)"):
        RunLock(tmp_path)
    lock.release()
    RunLock(tmp_path).release()  # free again once the first run let go


def _items(n: int) -> list[PromptItem]:
    return [PromptItem(str(i), i, f"p{i}", [i]) for i in range(n)]


def test_prompt_source_state_continues_exactly() -> None:
    items = _items(7)
    a = PromptSource(items, shuffle=True, seed=3)
    a.take(9)  # into the second epoch
    b = PromptSource(items, shuffle=True, seed=99)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert [p.row for p in b.take(20)] == [p.row for p in a.take(20)]
    with pytest.raises(DatasetError, match="had 7 prompts"):
        PromptSource(_items(6), True, 0).load_state_dict(a.state_dict())


def test_first_signal_asks_to_stop_second_stops_at_once() -> None:
    before = signal.getsignal(signal.SIGTERM)  # whatever an earlier test left (Ray installs its own)
    stop = GracefulStop()
    try:
        assert not stop()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop() and stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_resumed_recorder_continues_the_same_wandb_run(tmp_path: Path) -> None:
    from ray_jobs.config.experiment import WandbConfig
    from ray_jobs.runtime.tracking import RunRecorder

    first = RunRecorder(tmp_path, {"run": {}}, WandbConfig(mode="offline"), "x", 4)
    first.close()
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in range(3)))
    again = RunRecorder(
        tmp_path, {"run": {}}, WandbConfig(mode="offline"), "x", 4, start_step=2, wandb_id=first.wandb_id
    )
    again.close()
    runs = sorted(p.name for p in (tmp_path / "wandb").rglob("offline-run-*") if p.is_dir())
    # wandb names a second run directory started within the same second "<time>-<id>-1"
    assert len(runs) == 2 and all(re.search(f"-{first.wandb_id}(-[0-9]+)?$", name) for name in runs)
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0, 1]
