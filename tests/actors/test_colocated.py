"""``ColocatedWorker`` without Ray: generation on the learner's own weights, stamped with the learner's
version, from a sampling stream of its own that draws what a separate worker would."""

from __future__ import annotations

import asyncio

import pytest
import torch

from actors.colocated import ColocatedWorker
from actors.learner.learner import LearnerConfig, LoraConfig
from actors.messages import PromptItem, RolloutResult, TrainBatch
from actors.rollout.worker import RolloutConfig, RolloutWorker
from algorithms.config import AlgorithmConfig

ROLLOUT = RolloutConfig(group_size=2, max_new_tokens=6, temperature=1.0)
PROMPTS = [PromptItem("a", 0, "a", [1, 10, 11]), PromptItem("b", 1, "b", [1, 12])]


def _worker(tiny_model_config, lora: bool = False, seed: int = 3) -> ColocatedWorker:
    learner = LearnerConfig(lr=1e-2, lora=LoraConfig(enabled=lora, r=4, target_modules=["q_proj", "v_proj"]))
    return ColocatedWorker(learner, tiny_model_config, AlgorithmConfig(), 1.0, seed, 6, 10, None, ROLLOUT)


def _generate(worker, batch_index: int = 0, min_version: int = 0) -> RolloutResult:
    return asyncio.run(worker.generate(batch_index, 0, PROMPTS, min_version))


def _batch(result: RolloutResult, step: int) -> TrainBatch:
    samples = result.samples
    return TrainBatch(
        step=step,
        prompt_token_ids=[s.prompt.prompt_token_ids for s in samples],
        completion_token_ids=[s.completion_token_ids for s in samples],
        sampling_logprobs=[s.sampling_logprobs for s in samples],
        advantages=[1.0 if i % 2 else -1.0 for i in range(len(samples))],
        policy_versions=[s.policy_version for s in samples],
    )


def test_it_generates_with_the_learners_module_and_stamps_its_version(tiny_model_config) -> None:
    worker = _worker(tiny_model_config)
    assert worker.generation.model is worker.learner.backend.model  # one copy of the weights
    first = _generate(worker)
    assert {s.policy_version for s in first.samples} == {0} and len(first.samples) == 4
    asyncio.run(worker.train(_batch(first, 0)))
    assert worker.learner.version == worker.rollout.version == 1
    second = _generate(worker, batch_index=1, min_version=1)
    assert {s.policy_version for s in second.samples} == {1}
    assert all(s.final_policy_version is None for s in second.samples)
    assert worker.learner.backend.model.training  # generation left the learner's module in train mode


def test_a_lora_policy_generates_with_the_live_adapter(tiny_model_config) -> None:
    """The adapter the learner trains is the one generation uses: after a step that moved it,
    the same sampling stream gives other log-probs than before the step."""
    worker = _worker(tiny_model_config, lora=True)
    state = worker.rng_state()
    before = _generate(worker)
    asyncio.run(worker.train(_batch(before, 0)))
    worker.set_rng_state(state)
    after = _generate(worker, min_version=1)
    assert [s.sampling_logprobs for s in after.samples] != [s.sampling_logprobs for s in before.samples]


def test_sampling_draws_what_a_separate_worker_0_draws_and_leaves_the_process_stream(tiny_model_config) -> None:
    """Same seed, same weights (version 0): the colocated worker samples exactly what a separate
    rollout worker 0 samples, and its generations leave the process's random state (the learner's
    dropout stream) as they found it."""
    separate = asyncio.run(RolloutWorker(ROLLOUT, tiny_model_config, 0, seed=3).generate(0, 0, PROMPTS, 0))
    worker = _worker(tiny_model_config, seed=3)
    process_state = torch.get_rng_state()
    colocated = _generate(worker)
    assert torch.equal(torch.get_rng_state(), process_state)
    assert [s.completion_token_ids for s in colocated.samples] == [s.completion_token_ids for s in separate.samples]
    for c, s in zip(colocated.samples, separate.samples):
        assert c.sampling_logprobs == pytest.approx(s.sampling_logprobs, abs=1e-5)


def test_the_sampling_state_round_trips(tiny_model_config) -> None:
    worker = _worker(tiny_model_config)
    state = worker.rng_state()
    first = _generate(worker)
    assert [s.completion_token_ids for s in _generate(worker).samples] != [
        s.completion_token_ids for s in first.samples
    ]  # the stream moved on
    worker.set_rng_state(state)
    assert [s.completion_token_ids for s in _generate(worker).samples] == [
        s.completion_token_ids for s in first.samples
    ]


def test_only_hf_generation_is_colocated_in_process(tiny_model_config) -> None:
    with pytest.raises(ValueError, match="generates with HF"):
        ColocatedWorker(
            LearnerConfig(), tiny_model_config, AlgorithmConfig(), 1.0, 0, 6, 10, None, RolloutConfig(backend="vllm")
        )
