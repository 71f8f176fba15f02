"""Actors die mid-run (a rollout worker SIGKILLed, the judge pool ray.kill-ed) and the run goes on.

The driver runs in this process; a thread watches metrics.jsonl and injects the
faults at given steps. Every step must still train on its full batch, no sample
may be lost or duplicated, and the fault counters must say what happened.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import ray
from run_procs import kill_rollout_worker, run_with_faults, signal_first

from ray_jobs.rl.actor_start import JUDGE_POOL_NAME

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_ray")]  # one Ray for the module's runs


def kill_judge_pool() -> None:
    names = [
        a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(JUDGE_POOL_NAME)
    ]
    assert names, "no judge pool actor"
    ray.kill(ray.get_actor(names[0]), no_restart=False)


def test_rollout_worker_sigkill_and_judge_pool_kill(tmp_path: Path, tiny_model_config, monkeypatch) -> None:
    monkeypatch.setenv("RELAY_JUDGE_API_KEY", "sk-test")
    metrics = run_with_faults(
        tmp_path / "run",
        tiny_model_config.cache_dir,
        10,
        [(3, kill_rollout_worker), (6, kill_judge_pool)],
        "rollout.backend=hf",
    )
    last = metrics[-1]
    assert last["faults/rollout_restarts"] == 1 and last["faults/judge_restarts"] == 1
    assert last["faults/calls_resent"] >= 2  # at least the call each of them held
    assert metrics[2]["faults/rollout_restarts"] == 0  # cumulative: nothing before the first fault


def kill_learner() -> None:
    signal_first("ray::Learner", signal.SIGKILL)


def test_learner_death_restarts_the_group_from_the_newest_checkpoint(
    tmp_path: Path, tiny_model_config, monkeypatch, caplog
) -> None:
    """With weight_sync.transport=broadcast, killed before the first periodic checkpoint: the new
    group forms a new broadcast group with new engines and restores step 0's checkpoint, whose v0
    the engines already hold (sent as a restore)."""
    monkeypatch.setenv("RELAY_JUDGE_API_KEY", "sk-test")
    out = tmp_path / "run"
    run_with_faults(
        out,
        tiny_model_config.cache_dir,
        10,
        [(2, kill_learner)],
        "run.checkpoint_every=3",
        "weight_sync.transport=broadcast",
    )
    # the steps after step-0's checkpoint were trained again by the new group, and logged once
    restarts = [r.getMessage() for r in caplog.records if "restarting the learner group" in r.getMessage()]
    assert len(restarts) == 1 and restarts[0].endswith(f"from {out / 'checkpoints' / 'step-0'} (1 of 1 restarts)")


def kill_colocated() -> None:
    signal_first("ray::ColocatedWorker", signal.SIGKILL)


def test_a_dead_colocated_process_is_a_learner_death_restarted_from_the_newest_checkpoint(
    tmp_path: Path, tiny_model_config, monkeypatch, caplog
) -> None:
    """Colocated, the process that trains also generates: killed mid-run (at k = 2 it holds the
    next batches' generations too), the run restarts it from the newest checkpoint and every step
    still trains its full batch once (``run_with_faults`` checks)."""
    monkeypatch.setenv("RELAY_JUDGE_API_KEY", "sk-test")
    out = tmp_path / "run"
    run_with_faults(
        out,
        tiny_model_config.cache_dir,
        10,
        [(4, kill_colocated)],
        "run.checkpoint_every=3",
        "pipeline.placement=colocated",
        "pipeline.max_staleness=2",
    )
    restarts = [r.getMessage() for r in caplog.records if "restarting the learner group" in r.getMessage()]
    assert len(restarts) == 1 and restarts[0].endswith(f"from {out / 'checkpoints' / 'step-3'} (1 of 1 restarts)")


class _Learner:
    """``LearnerGroup``'s broadcast calls, counting the broadcasts it entered (or dying in one)."""

    def __init__(self, dies: bool = False) -> None:
        self.dies, self.broadcasts = dies, 0

    def open_weight_group(self, world_size: int) -> tuple[str, int]:
        return "127.0.0.1", 1

    def join_weight_group(self, host: str, port: int, world_size: int, backend: str) -> None:
        pass

    def weight_plan(self, bucket_bytes: int) -> list:
        return []

    def broadcast_weights(self, plan: list) -> int:
        if self.dies:
            raise ray.exceptions.RayActorError()
        self.broadcasts += 1
        return 0


def _publisher(learner: _Learner, refusals: list[str | None]):
    """A broadcast ``WeightPublisher`` from ``learner`` to an engine per refusal (None: takes every broadcast)."""
    from ray_jobs.config.experiment import load_config
    from ray_jobs.rl.weight_publish import WeightPublisher

    class Engine:  # defined here, so that Ray ships it by value (the workers cannot import this module)
        """A rollout worker's broadcast calls: refuses every broadcast when told to."""

        def __init__(self, refusal: str | None) -> None:
            self.refusal, self.received = refusal, []

        def join_weight_group(self, host: str, port: int, rank: int, world_size: int, backend: str) -> None:
            pass

        def check_receive(self, version: int, restore: bool = False) -> None:
            if self.refusal:
                raise ValueError(self.refusal)

        def receive_weights(self, plan: list, version: int, restore: bool = False) -> float:
            self.received.append((version, restore))
            return 0.0

        def got(self) -> list:
            return self.received

    engines = [ray.remote(Engine).options(num_cpus=0).remote(r) for r in refusals]
    return WeightPublisher(load_config(None, ["weight_sync.transport=broadcast"]), learner, engines), engines


def test_a_refused_weight_broadcast_fails_before_anyone_enters_it() -> None:
    """Learner rank 0 cannot leave a broadcast an engine refuses (gloo: 600 s, NCCL: never): the
    engines are asked first, and a refusal is a one-line error with no broadcast entered."""
    from ray_jobs.runtime.faults import RunFaultError

    learner = _Learner()
    publisher, engines = _publisher(learner, [None, "weight broadcast v1 is not newer than v3"])
    with pytest.raises(RunFaultError) as refused:
        publisher.publish()
    assert str(refused.value).startswith(
        "rollout worker 1 cannot take weight broadcast v1: weight broadcast v1 is not newer than v3; nothing was sent"
    )
    assert "\n" not in str(refused.value)
    assert learner.broadcasts == 0 and ray.get(engines[0].got.remote()) == []
    publisher, engines = _publisher(learner, [None, None])
    publisher.restore(0)  # a restore is sent as one, to every engine
    assert learner.broadcasts == 1 and [ray.get(e.got.remote()) for e in engines] == [[(0, True)]] * 2


def test_a_learner_rank_lost_in_a_weight_broadcast_is_a_learner_death() -> None:
    """So that the run restarts the learner group from its newest checkpoint (``run``)."""
    from ray_jobs.runtime.faults import LearnerDied

    publisher, _ = _publisher(_Learner(dies=True), [None])
    with pytest.raises(LearnerDied, match="a learner rank died during weight broadcast v1"):
        publisher.publish()


def test_learner_death_without_restarts_names_the_rank_and_checkpoint(
    tmp_path: Path, tiny_model_config, monkeypatch
) -> None:
    from ray_jobs.runtime.faults import RunFaultError

    monkeypatch.setenv("RELAY_JUDGE_API_KEY", "sk-test")
    with pytest.raises(RunFaultError, match=r"learner rank 0 died during step \d+.*newest checkpoint: .*step-3"):
        run_with_faults(
            tmp_path / "run",
            tiny_model_config.cache_dir,
            10,
            [(5, kill_learner)],
            "run.checkpoint_every=3",
            "run.max_learner_restarts=0",
        )


def test_an_actor_failing_in_its_constructor_is_a_one_line_error(
    tmp_path: Path, tiny_model_config, capsys, monkeypatch
) -> None:
    """A model directory whose tokenizer loads (the driver's preflight) but whose weights are
    broken: the rollout worker dies in its constructor, named with the cause, exit code 2."""
    import shutil

    from actors.model.loading import resolve_model_path
    from ray_jobs.train import main

    monkeypatch.setenv("RELAY_JUDGE_API_KEY", "sk-test")
    broken = tmp_path / "broken-model"
    shutil.copytree(resolve_model_path(tiny_model_config), broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    rc = main([f"run.output_dir={tmp_path / 'run'}", f"model.path={broken}", "wandb.mode=disabled", "run.steps=2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("error: rollout worker 0 failed to start: ") and "safetensors" in err[-1].lower(), err[-1]


def stop_rollout_worker() -> None:
    """SIGSTOP: the process is alive but makes no progress, as a hung engine."""
    signal_first("ray::RolloutWorker", signal.SIGSTOP)


def test_a_hung_rollout_worker_is_restarted_and_its_step_runs_its_own_forward(
    tmp_path: Path, tiny_model_config, monkeypatch
) -> None:
    """A SIGSTOPped (hung) rollout worker is restarted after ``rollout.call_timeout_s`` and its call
    sent again (the timeout path is the same at every k; the SIGKILL above runs at k = 2). At k = 0
    the learner's forward ahead of the judge waits on the batch's generations: the lost call's forward
    never runs, so that step runs its own on the resent call's samples, and the other steps use theirs."""
    monkeypatch.setenv("RELAY_JUDGE_API_KEY", "sk-test")
    metrics = run_with_faults(
        tmp_path / "run",
        tiny_model_config.cache_dir,
        6,
        [(2, stop_rollout_worker)],
        "rollout.call_timeout_s=3",
        "pipeline.max_staleness=0",
    )
    assert metrics[-1]["faults/rollout_restarts"] == 1 and metrics[-1]["faults/calls_resent"] >= 1
    used = [m.get("learner/forward_ahead") for m in metrics]
    assert used.count(None) == 1 and used.count(1.0) == len(metrics) - 1, used
