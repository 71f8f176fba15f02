"""Per-call sampling overrides of ``RolloutWorker.generate`` (HF backend, tiny model):
``n`` samples per prompt, ``temperature`` (0: greedy) and a private ``seed``."""

from __future__ import annotations

import asyncio

import pytest
import torch
from test_rollout import _prompts  # the same two chat prompts

from actors.rollout.worker import RolloutConfig, RolloutWorker

MAX_NEW = 8


@pytest.fixture(scope="module")
def worker(tiny_model_config) -> RolloutWorker:
    return RolloutWorker(RolloutConfig(group_size=3, max_new_tokens=MAX_NEW, temperature=0.7), tiny_model_config)


def _argmax_decode(model, prompt: list[int], eos: int) -> tuple[list[int], list[float]]:
    """The reference: full forwards without a cache, argmax each step, stop after EOS;
    the log-prob of each chosen token under the untempered distribution."""
    ids, logps = list(prompt), []
    with torch.no_grad():
        for _ in range(MAX_NEW):
            dist = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].float(), dim=-1)
            tok = int(dist.argmax())
            ids.append(tok)
            logps.append(float(dist[tok]))
            if tok == eos:
                break
    return ids[len(prompt) :], logps


def test_greedy_is_argmax_decoding_and_deterministic(worker, tiny_tokenizer) -> None:
    prompts = _prompts(tiny_tokenizer)
    rng_before = worker.rng_state()
    first = asyncio.run(worker.generate(0, 0, prompts, n=2, temperature=0.0)).samples
    second = asyncio.run(worker.generate(0, 1, prompts, n=2, temperature=0.0)).samples
    assert worker.rng_state() == rng_before  # greedy draws nothing: training's sampling order is untouched
    assert [s.completion_token_ids for s in first] == [s.completion_token_ids for s in second]
    assert [s.group_id for s in first] == ["b0c0p0", "b0c0p0", "b0c0p1", "b0c0p1"]
    eos = tiny_tokenizer.eos_token_id
    for s in first:
        tokens, logps = _argmax_decode(worker.backend.model, s.prompt.prompt_token_ids, eos)
        assert s.completion_token_ids == tokens
        assert s.truncated == (tokens[-1] != eos)
        assert torch.allclose(torch.tensor(s.sampling_logprobs), torch.tensor(logps), atol=1e-4)


def test_n_overrides_the_group_size(worker, tiny_tokenizer) -> None:
    prompts = _prompts(tiny_tokenizer)
    one = asyncio.run(worker.generate(4, 2, prompts, n=1)).samples
    assert [(s.group_id, s.group_index) for s in one] == [("b4c2p0", 0), ("b4c2p1", 0)]
    five = asyncio.run(worker.generate(4, 3, prompts, n=5, temperature=1.3)).samples
    assert [s.prompt.prompt_id for s in five] == ["p0"] * 5 + ["p1"] * 5
    assert [s.group_index for s in five] == [0, 1, 2, 3, 4] * 2
    default = asyncio.run(worker.generate(4, 4, prompts)).samples
    assert len(default) == 2 * 3  # rollout.group_size


def test_a_seeded_call_repeats_and_leaves_the_worker_rng_alone(worker, tiny_tokenizer) -> None:
    prompts = _prompts(tiny_tokenizer)
    rng_before = worker.rng_state()
    a = asyncio.run(worker.generate(0, 0, prompts, n=4, temperature=1.0, seed=11)).samples
    b = asyncio.run(worker.generate(0, 0, prompts, n=4, temperature=1.0, seed=11)).samples
    assert worker.rng_state() == rng_before
    assert [s.completion_token_ids for s in a] == [s.completion_token_ids for s in b]
    assert [s.sampling_logprobs for s in a] == [s.sampling_logprobs for s in b]


def test_bad_overrides_are_one_line_errors(worker, tiny_tokenizer) -> None:
    with pytest.raises(ValueError, match=r"n must be >= 1 and temperature >= 0 \(got n=0, temperature=None\)"):
        asyncio.run(worker.generate(0, 0, _prompts(tiny_tokenizer), n=0))
    with pytest.raises(ValueError, match=r"got n=3, temperature=-0.5"):
        asyncio.run(worker.generate(0, 0, _prompts(tiny_tokenizer), temperature=-0.5))


def test_rollout_config_allows_evaluation_settings() -> None:
    cfg = RolloutConfig(group_size=1, temperature=0.0)
    assert (cfg.group_size, cfg.temperature) == (1, 0.0)
