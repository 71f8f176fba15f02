"""``judge.max_concurrency: auto`` and ``torch_threads: auto``: the bounds and how the drivers resolve them."""

import re
import tempfile
from pathlib import Path

import pytest

from ray_jobs.config.experiment import ConfigError, load_config
from ray_jobs.rl import run_settings
from ray_jobs.rl.pipeline import judge_inflight_bound
from ray_jobs.runtime.actor_settings import auto_threads, stage_threads
from rewards.judge.config import AUTO_CONCURRENCY_UNRESOLVED, JudgeConfig
from rewards.judge.endpoints import endpoint_configs


def test_inflight_bound_counts_every_batch_admission_control_allows() -> None:
    # 2 prompts x 8 samples = 16 per batch; k = 2 allows batches b, b+1, b+2 at once: 48
    assert judge_inflight_bound(2, 8, 2) == 48
    # a refill adds one step's samples; a held-out evaluation of 10 prompts x 1 sample adds 10
    assert judge_inflight_bound(2, 8, 2, refills=True, eval_samples=10) == 48 + 16 + 10
    assert judge_inflight_bound(1, 4, 0) == 4


def test_auto_concurrency_resolves_and_a_number_wins() -> None:
    auto = JudgeConfig(base_url="http://judge")
    assert auto.max_concurrency == "auto" and auto.concurrency == AUTO_CONCURRENCY_UNRESOLVED
    assert auto.with_inflight(48).concurrency == 48
    assert endpoint_configs(auto.with_inflight(48))[0].max_concurrency == 48
    set_by_user = JudgeConfig(base_url="http://judge", max_concurrency=8)
    assert set_by_user.with_inflight(48).concurrency == 8
    with pytest.raises(ValueError):
        JudgeConfig(base_url="http://judge", max_concurrency=0)


def test_stage_threads_share_the_cores() -> None:
    assert stage_threads(2, 1) == 2
    assert stage_threads(2, 2) == 1
    assert stage_threads(2, 3) == 1  # never 0
    assert stage_threads(16, 3) == 5


def test_train_driver_gives_each_stage_its_cores(monkeypatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1})
    alone = run_settings.with_stage_threads(load_config(None, ["pipeline.max_staleness=0"]))
    assert (alone.rollout.torch_threads, alone.learner.torch_threads) == (2, 2)  # stages run in turn
    overlap = run_settings.with_stage_threads(load_config(None, ["pipeline.max_staleness=2", "rollout.backend=vllm"]))
    assert (overlap.rollout.torch_threads, overlap.learner.torch_threads) == (1, 1)  # an even share
    fixed = run_settings.with_stage_threads(load_config(None, ["pipeline.max_staleness=0", "rollout.torch_threads=1"]))
    assert (fixed.rollout.torch_threads, fixed.learner.torch_threads) == (1, 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the environment's per-process cap holds
    assert run_settings.with_stage_threads(alone).rollout.torch_threads == 2  # resolved already: kept
    assert auto_threads("auto", 1) == 1
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")  # a cluster: each actor keeps Ray's setting
    assert auto_threads("auto", 1) == "auto"


def test_train_driver_resolves_judge_concurrency_from_the_pipeline() -> None:
    overrides = ["pipeline.prompts_per_step=2", "pipeline.max_staleness=2"]
    cfg = load_config(None, overrides)
    resolved = run_settings.with_judge_concurrency(cfg, None)
    assert resolved.judge.concurrency == 2 * cfg.rollout.group_size * 3
    fixed = run_settings.with_judge_concurrency(load_config(None, [*overrides, "judge.max_concurrency=5"]), None)
    assert fixed.judge.concurrency == 5


def test_auto_call_size_streams_each_vllm_request_and_batches_hf_calls() -> None:
    cfg = load_config(None, [])
    assert cfg.pipeline.prompts_per_call == "auto"
    assert cfg.pipeline.call_size("vllm") == 1  # each group reaches the judge when its request ends
    assert cfg.pipeline.call_size("hf") == 4  # one batched generate returns its groups together
    assert load_config(None, ["pipeline.prompts_per_call=3"]).pipeline.call_size("vllm") == 3


def test_run_settings_give_actors_an_absolute_model_path(tmp_path, monkeypatch) -> None:
    (tmp_path / "model").mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = run_settings.with_absolute_model_path(load_config(None, ["model.path=model"]))
    assert cfg.model.path == str(tmp_path / "model")
    hub = run_settings.with_absolute_model_path(load_config(None, ["model.path=Qwen/Qwen2.5-0.5B-Instruct"]))
    assert hub.model.path == "Qwen/Qwen2.5-0.5B-Instruct"  # a hub name stays a name


def test_forward_ahead_is_on_where_the_learner_can_run_a_batch_before_its_scores() -> None:
    assert load_config(None, ["pipeline.max_staleness=0"]).forward_ahead
    assert not load_config(None, ["pipeline.max_staleness=2"]).forward_ahead  # the learner is busy then
    assert not load_config(None, ["pipeline.max_staleness=0", "pipeline.forward_ahead=false"]).forward_ahead
    blocked = {
        "algorithm.num_iterations=2": "algorithm.num_iterations and num_minibatches 1",
        "algorithm.name=dapo": "no dynamic sampling",
        "learner.micro_batch_size=4": "learner.micro_batch_size >= 32 (a step's samples)",  # 8 prompts x 4
        "learner.backend=deepspeed": "learner.backend torch",
    }
    for override, need in blocked.items():
        cfg = load_config(None, ["pipeline.max_staleness=0", override])
        assert not cfg.forward_ahead and cfg.forward_ahead_blocker() == need
        with pytest.raises(
            ConfigError, match=re.escape(f"pipeline.forward_ahead: true needs {need}; set it to auto or false")
        ):
            load_config(None, ["pipeline.max_staleness=0", override, "pipeline.forward_ahead=true"])


def test_overlapping_hf_and_torch_stages_share_the_cores_by_what_computes(monkeypatch) -> None:
    """HF rollouts and a torch learner that overlap on local Ray share one board: rollout
    worker i at slot i, learner rank j after the workers; anything else keeps the even share."""
    from actors.core_share import CoreBoard, CoreShare

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1})
    cfg = run_settings.with_stage_threads(load_config(None, ["pipeline.max_staleness=2", "rollout.num_workers=2"]))
    ro, lr = cfg.rollout.torch_threads, cfg.learner.torch_threads
    assert isinstance(ro, CoreShare) and isinstance(lr, CoreShare)
    assert (ro.first_slot, lr.first_slot, ro.slots, ro.cores) == (0, 2, 3, 2) and ro.board == lr.board
    CoreBoard(lr, 0)  # an actor creates the board file; the driver removes it at the end
    run_settings.remove_core_board(cfg)
    assert not Path(ro.board).exists()
    for overrides in (
        ["pipeline.max_staleness=0"],  # in turn: every core each
        ["pipeline.max_staleness=2", "learner.torch_threads=1"],  # a number the user set
        ["pipeline.max_staleness=2", "learner.backend=deepspeed"],
    ):
        resolved = run_settings.with_stage_threads(load_config(None, overrides))
        assert isinstance(resolved.rollout.torch_threads, int), overrides
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # one core to share: nothing to follow
    one = run_settings.with_stage_threads(load_config(None, ["pipeline.max_staleness=2"]))
    assert (one.rollout.torch_threads, one.learner.torch_threads) == (1, 1)


def test_a_board_of_a_driver_that_is_gone_is_removed(monkeypatch) -> None:
    """A driver killed before its end leaves its board in /dev/shm; the next driver that shares
    cores removes it (``actors/scratch.py``), and removes its own at the end."""
    import subprocess
    import sys

    from actors.core_share import CoreShare

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1})
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    board_dir = Path("/dev/shm" if Path("/dev/shm").is_dir() else tempfile.gettempdir())
    dead = board_dir / f"{run_settings.BOARD_PREFIX}-{gone.stdout.strip()}-test"
    dead.write_bytes(b"\x01\x00")
    cfg = run_settings.with_stage_threads(load_config(None, ["pipeline.max_staleness=2"]))
    assert not dead.exists()
    assert isinstance(cfg.learner.torch_threads, CoreShare)
    run_settings.remove_core_board(cfg)
