"""On a GPU: the rollout and the learner run on CUDA and agree on log-probs."""

import asyncio

import pytest
import torch

from actors.learner.learner import Learner, LearnerConfig
from actors.messages import PromptItem, TrainBatch
from actors.rollout.worker import RolloutConfig, RolloutWorker
from algorithms.config import AlgorithmConfig

pytestmark = pytest.mark.gpu


def test_generate_then_train_on_cuda(tiny_model_config, tiny_tokenizer) -> None:
    tiny_model_config = tiny_model_config.model_copy(update={"dtype": "float32"})  # exact agreement: no bf16
    worker = RolloutWorker(RolloutConfig(group_size=4, max_new_tokens=8), tiny_model_config)
    assert worker.backend.device.type == "cuda"
    text = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": "A bakery"}], add_generation_prompt=True, tokenize=False
    )
    prompt = PromptItem("p", 0, "A bakery", tiny_tokenizer(text)["input_ids"])
    samples = asyncio.run(worker.generate(0, 0, [prompt])).samples
    learner = Learner(LearnerConfig(), tiny_model_config, AlgorithmConfig(), temperature=1.0)
    assert learner.backend.device.type == "cuda"
    batch = TrainBatch(
        0,
        [s.prompt.prompt_token_ids for s in samples],
        [s.completion_token_ids for s in samples],
        [s.sampling_logprobs for s in samples],
        [1.0, -1.0, 0.5, -0.5],
        [0] * 4,
    )
    result = learner.train(batch)
    # same weights on both sides: the recomputed log-probs match the sampling ones
    assert result.metrics["logprob_gap/mean_abs"] < 1e-3
    assert torch.isfinite(torch.tensor(result.metrics["loss"]))
