"""``TrainEval`` on local Ray with stand-in rollout workers and judge (no model): when it
launches, what a checkpoint waits for, and how lost calls are counted."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import ray

from actors.messages import PromptItem, RolloutResult, Sample, ScoredSample, ScoreResult
from ray_jobs.config.experiment import TrainEvalConfig
from ray_jobs.rl.train_eval import EvalSet, TrainEval


class FakeWorker:
    """Answers ``generate`` like a rollout worker; holds the calls of a step until released."""

    def __init__(self) -> None:
        self.release_steps: dict[int, asyncio.Event] = {}
        self.calls: list[tuple[int, int | None, int, float]] = []  # (min_version, seq, n, temperature)

    def hold(self, step: int) -> None:
        self.release_steps[step] = asyncio.Event()

    def release(self, step: int) -> None:
        self.release_steps[step].set()

    async def generate(
        self,
        batch: int,
        call: int,
        prompts: list[PromptItem],
        min_version: int,
        seq: int | None,
        n: int,
        temperature: float,
        seed: int,
    ) -> RolloutResult:
        self.calls.append((min_version, seq, n, temperature))
        if batch in self.release_steps:
            await self.release_steps[batch].wait()
        samples = [
            Sample(p, f"b{batch}c{call}p{i}", j, "x.com", [5], [-0.1], min_version, truncated=False)
            for i, p in enumerate(prompts)
            for j in range(n)
        ]
        return RolloutResult(batch, samples, 0.25, 0)

    def seen(self) -> list[tuple[int, int | None, int, float]]:
        return self.calls


class FakeJudge:
    def score(self, result: RolloutResult) -> ScoreResult:
        scored = [ScoredSample(s, 0.5, None, {"judge/blocked": 0.0}) for s in result.samples]
        return ScoreResult(result.batch_index, scored, result.generate_s, 0.5, len(scored), 0)


@dataclass
class FakeStages:
    rollouts: list
    judge: object


@dataclass
class FakeRecorder:
    eval_steps: set[int] = field(default_factory=set)
    lines: list[tuple[int, dict]] = field(default_factory=list)

    def record_eval(self, step: int, metrics: dict) -> None:
        self.eval_steps.add(step)
        self.lines.append((step, metrics))


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    here, root = Path(__file__).resolve().parent, Path(__file__).resolve().parents[2]
    path = os.pathsep.join([str(here), str(root), os.environ.get("PYTHONPATH", "")])  # the fakes, for the actors
    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


def _actors() -> FakeStages:
    workers = [ray.remote(FakeWorker).options(max_concurrency=100).remote() for _ in range(2)]
    return FakeStages(workers, ray.remote(FakeJudge).remote())


def _evals(recorder: FakeRecorder, stages: FakeStages, timeout_s: float = 60.0) -> TrainEval:
    items = [PromptItem(f"p{i}", i, f"prompt {i}", [1, 2]) for i in range(4)]
    cfg = TrainEvalConfig(every_steps=2, data="unused.jsonl", samples_per_prompt=2, temperature=0.0)
    evalset = EvalSet(items, [False, True, None, False])
    return TrainEval(cfg, evalset, stages, recorder, total_steps=6, prompts_per_call=2, seed=0, timeout_s=timeout_s)


def test_a_checkpoint_waits_only_for_older_policies_and_the_end_for_all(local_ray) -> None:
    recorder, stages = FakeRecorder(), _actors()
    evals, workers = _evals(recorder, stages), stages.rollouts
    ray.get(workers[0].hold.remote(2))
    evals.after_step(1)  # not due
    evals.after_step(2)  # launched; its first call is held
    evals.after_step(3)
    evals.settle(2)  # the checkpoint of step 2 does not wait for the evaluation of policy 2
    assert recorder.lines == [] and list(evals.pending) == [2]
    ray.get(workers[0].release.remote(2))
    evals.settle(4)  # the checkpoint of step 4 does
    assert [s for s, _ in recorder.lines] == [2]
    evals.after_step(4)
    evals.after_step(4)  # asked twice: launched once
    recorder.eval_steps.add(6)  # as if a resumed run found policy 6's line
    evals.after_step(6)
    evals.settle(6)  # the last step: everything pending is written first
    assert [s for s, _ in recorder.lines] == [2, 4] and not evals.pending
    _, m = recorder.lines[1]
    assert (m["eval/policy_version"], m["eval/scored"], m["eval/unscored"], m["eval/lost_samples"]) == (
        4.0,
        8.0,
        0.0,
        0.0,
    )
    assert m["eval/generate_s"] == 0.5  # two calls of 0.25 s
    assert (m["eval/block_rate"], m["eval/false_block_rate"]) == (0.0, 0.0)
    # every call pinned to its policy version, outside the training send order, with the eval's sampling
    seen = ray.get(workers[0].seen.remote()) + ray.get(workers[1].seen.remote())
    assert sorted(seen) == [(2, None, 2, 0.0)] * 2 + [(4, None, 2, 0.0)] * 2


def test_calls_lost_with_their_worker_or_past_the_timeout_are_counted(local_ray) -> None:
    recorder, stages = FakeRecorder(), _actors()
    ray.kill(stages.rollouts[1], no_restart=True)  # worker 1 takes the second call (prompts 2 and 3)
    evals = _evals(recorder, stages)
    evals.after_step(2)
    evals.settle(6)
    m = recorder.lines[0][1]
    assert (m["eval/scored"], m["eval/lost_samples"]) == (4.0, 4.0)  # 2 prompts x 2 samples each
    ray.get(stages.rollouts[0].hold.remote(4))  # never released: worker 0's call does not finish
    evals = _evals(recorder, stages, timeout_s=0.0)
    evals.after_step(4)
    evals.settle(6)
    m = recorder.lines[1][1]
    assert (m["eval/scored"], m["eval/lost_samples"], m["eval/reward_mean"]) == (0.0, 8.0, None)
