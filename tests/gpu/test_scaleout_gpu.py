"""Scale-out backends on GPUs: vLLM on CUDA against the learner, the NCCL weight
broadcast and the multi-rank DeepSpeed group (each skips when its hardware or
package is missing)."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from actors.messages import PromptItem
from actors.model.loading import load_causal_lm, resolve_model_path
from actors.rollout.worker import RolloutConfig, RolloutWorker
from actors.weights.broadcast import broadcast_buckets, bucket_plan, join_group, open_store, receive_buckets
from actors.weights.sync import ObjectStoreWeightSync, merged_state_dict
from algorithms.logprobs import token_logprobs

pytestmark = pytest.mark.gpu
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")


def test_vllm_on_cuda_matches_the_learner_after_a_sync(tiny_model_config, tiny_tokenizer) -> None:
    pytest.importorskip("vllm")
    loop = asyncio.new_event_loop()
    cfg = RolloutConfig(backend="vllm", group_size=4, max_new_tokens=8, temperature=0.7)
    worker = RolloutWorker(
        cfg.model_copy(update={"vllm": cfg.vllm.model_copy(update={"gpu_memory_utilization": 0.2})}), tiny_model_config
    )
    try:
        model = load_causal_lm(resolve_model_path(tiny_model_config), "float32").cuda().eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        loop.run_until_complete(worker.update_weights(ObjectStoreWeightSync().export(merged_state_dict(model), 1)))
        text = tiny_tokenizer.apply_chat_template(
            [{"role": "user", "content": "A bakery"}], add_generation_prompt=True, tokenize=False
        )
        prompt = PromptItem("p", 0, "A bakery", tiny_tokenizer(text)["input_ids"])
        for s in loop.run_until_complete(worker.generate(0, 0, [prompt], min_version=1)).samples:
            ids = torch.tensor([s.prompt.prompt_token_ids + s.completion_token_ids], device="cuda")
            with torch.no_grad():
                logits = model(input_ids=ids).logits[:, len(s.prompt.prompt_token_ids) - 1 : -1]
            expected = token_logprobs(logits, ids[:, len(s.prompt.prompt_token_ids) :], 0.7)[0].cpu()
            assert torch.allclose(torch.tensor(s.sampling_logprobs), expected, atol=1e-3)  # TF32/kernels on GPU
    finally:
        worker.close()
        loop.close()


@two_gpus
def test_nccl_broadcast_between_two_gpus() -> None:
    torch.manual_seed(0)
    src = {"a": torch.randn(64, 32, device="cuda:0"), "b": torch.randn(7, device="cuda:0").bfloat16()}
    plan = bucket_plan(src, bucket_bytes=4096)
    store = open_store(2)
    port, got = store.port, {}

    def receiver() -> None:
        group = join_group("127.0.0.1", port, 1, 2, "nccl", torch.device("cuda:1"))
        for bucket in receive_buckets(group, plan, torch.device("cuda:1")):
            got.update({k: v.to("cuda:0") for k, v in bucket})

    thread = threading.Thread(target=receiver)
    thread.start()
    group = join_group("127.0.0.1", port, 0, 2, "nccl", torch.device("cuda:0"), store=store)
    broadcast_buckets(group, src, plan, torch.device("cuda:0"))
    thread.join(timeout=120)
    assert all(torch.equal(got[k], v) for k, v in src.items())
