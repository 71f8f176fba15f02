"""Cluster paths and limits: run directories under ``run.output_root``, ``run:<name>/...`` model
paths, the refusal of relative paths on a cluster of several nodes, and the configurable actor
start timeout reaching the code that waits on actors."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from ray_jobs.config.experiment import ConfigError, load_config
from ray_jobs.config.offline import load_job_config
from ray_jobs.config.run_paths import SharedPathError, check_shared_paths
from ray_jobs.evaluate import load_eval_config
from ray_jobs.runtime import faults, learner_group
from ray_jobs.sft import SftConfig

ROOT = "/shared/relay/runs"
REPO = Path(__file__).resolve().parents[2]


def test_run_paths_resolve_under_output_root_in_every_job() -> None:
    cfg = load_config(None, [f"run.output_root={ROOT}", "run.name=stage2", "model.path=run:stage1/final"])
    assert cfg.model.path == f"{ROOT}/stage1/final"
    assert cfg.run.directory == Path(ROOT) / "stage2"
    sft = load_job_config(SftConfig, None, [f"run.output_root={ROOT}", "model.path=run:base-sft/final"])
    assert sft.model.path == f"{ROOT}/base-sft/final" and sft.run.directory == Path(ROOT) / sft.run.name
    ev = load_eval_config(
        None,
        [
            f"run.output_root={ROOT}",
            "conditions.trained.policy=run:sft/final",
            "conditions.trained_best_of_4.critic.path=run:critic/final",
        ],
    )
    assert ev.conditions["trained"].policy == f"{ROOT}/sft/final"
    critic = ev.conditions["trained_best_of_4"].critic
    assert critic is not None and critic.path == f"{ROOT}/critic/final"
    assert ev.run.directory == Path(ROOT) / ev.run.name
    # without output_root nothing changes: runs/<name>, paths as written
    plain = load_config(None, ["model.path=some/dir"])
    assert plain.run.directory == Path("runs") / plain.run.name and plain.model.path == "some/dir"
    assert load_config(None, ["model.path=run:x/final"]).model.path == "runs/x/final"
    with pytest.raises(ConfigError, match="names no run"):
        load_config(None, ["model.path=run:/"])


def test_several_nodes_refuse_relative_run_directories_and_model_paths(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "stage1" / "final").mkdir(parents=True)
    with pytest.raises(SharedPathError, match=r"run directory runs/x is relative, but the Ray cluster has 2 nodes"):
        check_shared_paths(Path("runs/x"), {}, nodes=2)
    with pytest.raises(SharedPathError, match=r"model.path runs/stage1/final is a relative local path"):
        check_shared_paths(tmp_path / "x", {"model.path": "runs/stage1/final"}, nodes=2)
    check_shared_paths(tmp_path / "x", {"model.path": str(tmp_path / "runs/stage1/final")}, nodes=2)
    check_shared_paths(tmp_path / "x", {"model.path": "Qwen/Qwen3-1.7B"}, nodes=2)  # a hub name: each node loads it
    check_shared_paths(Path("runs/x"), {"model.path": "runs/stage1/final"}, nodes=1)  # one node: as before


@pytest.mark.slow
def test_a_job_on_a_two_node_cluster_refuses_a_relative_output_path(
    tmp_path: Path, tiny_model_config, monkeypatch, capsys
) -> None:
    """The sft driver joins a two-node cluster (``RAY_ADDRESS``) and stops with the one-line error, exit 2."""
    from ray.cluster_utils import Cluster

    from ray_jobs import sft

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    monkeypatch.chdir(tmp_path)
    try:
        code = sft.main(
            [
                "wandb.mode=disabled",
                f"model.cache_dir={tiny_model_config.cache_dir}",
                f"data.path={REPO / 'configs/data/toy_sft.jsonl'}",
                "run.steps=1",
            ]
        )
    finally:
        ray.shutdown()
        cluster.shutdown()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert "run directory runs/cpu-sft is relative, but the Ray cluster has 2 nodes" in err[-1]


def test_actor_start_timeout_is_a_setting_of_every_job() -> None:
    assert load_config(None).run.actor_start_timeout_s == faults.ACTOR_START_TIMEOUT_S == 600
    assert load_config(None, ["run.actor_start_timeout_s=1800"]).run.actor_start_timeout_s == 1800
    assert load_job_config(SftConfig, None, ["run.actor_start_timeout_s=900"]).run.actor_start_timeout_s == 900
    assert load_eval_config(None, ["run.actor_start_timeout_s=900"]).run.actor_start_timeout_s == 900
    with pytest.raises(ConfigError, match="run.actor_start_timeout_s"):
        load_config(None, ["run.actor_start_timeout_s=0"])


class _Clock:
    """A monotonic clock that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_waiting_for_a_restarted_actor_uses_the_configured_timeout(monkeypatch) -> None:
    """A rollout worker that stays unavailable: the driver gives up after the configured time, not 600 s."""
    clock = _Clock()
    monkeypatch.setattr(faults.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(faults.time, "sleep", clock.sleep)

    class Handle:
        class __ray_call__:  # noqa: N801 - the attribute Ray's actor handles have
            @staticmethod
            def remote(fn):
                return fn

    answers = iter([[1]])

    def get(ref, timeout=None):
        if isinstance(ref, list):
            return next(answers)
        raise ray.exceptions.ActorUnavailableError("restarting", None)

    monkeypatch.setattr(faults.ray, "get", get)
    processes = faults.ActorProcesses({"rollout worker 0": Handle()}, max_restarts=3, start_timeout_s=30.0)
    with pytest.raises(faults.RunFaultError, match=r"did not come back within 30 s \(run.actor_start_timeout_s\)"):
        processes.restarted("rollout worker 0")
    assert 30.0 < clock.now <= 30.5  # it waited the configured 30 s, in 0.25 s polls


def test_learner_group_waits_for_its_ranks_as_long_as_configured(monkeypatch) -> None:
    """A two-rank group's start is checked with the timeout it was given (the driver's run.actor_start_timeout_s)."""
    waited: list[float] = []

    class Actor:
        def options(self, **_):
            return self

        def remote(self, *_):
            return object()

    monkeypatch.setattr(learner_group.ray, "remote", lambda _cls: Actor())
    monkeypatch.setattr(learner_group.LearnerGroup, "_reserve", lambda self, timeout: object())
    monkeypatch.setattr(learner_group.LearnerGroup, "_rank_envs", lambda self: [{"MASTER_PORT": "1"}] * 2)
    monkeypatch.setattr(learner_group, "_in_bundle", lambda group, rank: None)
    monkeypatch.setattr(learner_group, "check_started", lambda actors, timeout: waited.append(timeout))
    config = learner_group.LearnerConfig(world_size=2, backend="deepspeed")
    group = learner_group.LearnerGroup(config, None, None, 1.0, 0, None, start_timeout_s=1800.0)  # type: ignore[arg-type]
    assert len(group.ranks) == 2 and waited == [1800.0]
