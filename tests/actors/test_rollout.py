import asyncio

import pytest
import torch

from actors.learner.learner import collate
from actors.messages import PromptItem, TrainBatch, WeightsUpdate
from actors.model.loading import load_causal_lm, resolve_model_path
from actors.rollout.worker import RolloutConfig, RolloutWorker
from actors.weights.sync import ObjectStoreWeightSync
from algorithms.logprobs import token_logprobs


@pytest.fixture(scope="module")
def worker(tiny_model_config):
    return RolloutWorker(RolloutConfig(group_size=3, max_new_tokens=8, temperature=0.7), tiny_model_config)


def _prompts(tok) -> list[PromptItem]:
    texts = ["A bakery in Austin", "A law firm advising small businesses on contracts"]
    out = []
    for i, t in enumerate(texts):
        ids = tok(
            tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False)
        )["input_ids"]
        out.append(PromptItem(f"p{i}", i, t, ids))
    return out


def test_groups_shapes_and_versions(worker, tiny_tokenizer) -> None:
    prompts = _prompts(tiny_tokenizer)
    result = asyncio.run(worker.generate(batch_index=5, call_index=1, prompts=prompts))
    assert len(result.samples) == 6
    assert [s.group_id for s in result.samples] == ["b5c1p0"] * 3 + ["b5c1p1"] * 3
    assert [s.prompt.prompt_id for s in result.samples] == ["p0"] * 3 + ["p1"] * 3
    for s in result.samples:
        assert len(s.completion_token_ids) == len(s.sampling_logprobs) <= 8
        assert s.policy_version == worker.version
        eos = tiny_tokenizer.eos_token_id
        assert s.truncated == (s.completion_token_ids[-1] != eos)
        assert eos not in s.completion_token_ids[:-1]  # cut at the first EOS


def test_sampling_logprobs_match_learner_recomputation(worker, tiny_tokenizer) -> None:
    """The learner's log-probs of the sampled tokens equal the rollout's (same weights, temperature)."""
    result = asyncio.run(worker.generate(0, 0, _prompts(tiny_tokenizer)))
    s = result.samples
    batch = TrainBatch(
        0,
        [x.prompt.prompt_token_ids for x in s],
        [x.completion_token_ids for x in s],
        [x.sampling_logprobs for x in s],
        [0.0] * len(s),
        [0] * len(s),
    )
    t = collate(batch, slice(0, len(s)))
    with torch.no_grad():
        logits = worker.backend.model(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).logits
    lp = token_logprobs(logits[:, :-1], t["input_ids"][:, 1:], 0.7)
    m = t["completion_mask"].bool()
    assert torch.allclose(lp[m], t["old_logprobs"][m], atol=1e-4)


def test_weight_update_changes_version_and_skips_one_that_is_not_newer(tiny_model_config, tiny_tokenizer) -> None:
    w = RolloutWorker(RolloutConfig(group_size=2, max_new_tokens=4), tiny_model_config)
    other = load_causal_lm(resolve_model_path(tiny_model_config), "float32")
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01)
    update = ObjectStoreWeightSync().export(other.state_dict(), version=1)
    assert asyncio.run(w.update_weights(update)) >= 0.0
    assert w.version == 1
    for (name, a), b in zip(w.backend.model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name
    assert all(s.policy_version == 1 for s in asyncio.run(w.generate(0, 0, _prompts(tiny_tokenizer))).samples)
    # v0 or v1 again (Ray may deliver an async actor's calls out of order): not applied, no error
    for late in (0, 1):
        assert asyncio.run(w.update_weights(WeightsUpdate(version=late, tensors={}, export_s=0.0))) == 0.0
    assert w.version == 1
    for (name, a), b in zip(w.backend.model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name


def test_lora_adapter_update_matches_merged_model(tiny_model_config, tiny_tokenizer, make_adapter_update) -> None:
    """Adapter-only sync: the HF rollout wraps its base with the adapter and then
    samples exactly as the merged policy would."""
    from actors.learner.learner import LoraConfig, apply_lora

    lora = LoraConfig(enabled=True, r=4, alpha=8, target_modules=["q_proj", "v_proj", "up_proj"])
    policy = apply_lora(load_causal_lm(resolve_model_path(tiny_model_config), "float32"), lora)
    w = RolloutWorker(RolloutConfig(group_size=2, max_new_tokens=6, temperature=0.7), tiny_model_config)
    merged = load_causal_lm(resolve_model_path(tiny_model_config), "float32").eval()
    for version in (1, 2):
        update, merged_weights = make_adapter_update(policy, version)
        asyncio.run(w.update_weights(update))
        merged.load_state_dict(merged_weights, strict=False)
        samples = asyncio.run(w.generate(0, 0, _prompts(tiny_tokenizer))).samples
        assert {s.policy_version for s in samples} == {version}
        batch = TrainBatch(
            0,
            [x.prompt.prompt_token_ids for x in samples],
            [x.completion_token_ids for x in samples],
            [x.sampling_logprobs for x in samples],
            [0.0] * len(samples),
            [0] * len(samples),
        )
        t = collate(batch, slice(0, len(samples)))
        with torch.no_grad():
            logits = merged(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).logits
        lp = token_logprobs(logits[:, :-1], t["input_ids"][:, 1:], 0.7)
        m = t["completion_mask"].bool()
        assert torch.allclose(lp[m], t["old_logprobs"][m], atol=1e-4)


def test_weights_by_broadcast(tiny_model_config) -> None:
    """The collective transport (gloo here, NCCL on GPUs) delivers every tensor exactly."""
    import threading

    from actors.weights.broadcast import broadcast_buckets, bucket_plan, join_group, open_store
    from actors.weights.sync import merged_state_dict

    w = RolloutWorker(RolloutConfig(group_size=2, max_new_tokens=4), tiny_model_config)
    source = load_causal_lm(resolve_model_path(tiny_model_config), "float32")
    with torch.no_grad():
        for p in source.parameters():
            p.mul_(1.5)
    state = merged_state_dict(source)
    plan = bucket_plan(state, bucket_bytes=64 * 1024)
    store = open_store(2)
    port = store.port

    def receiver() -> None:
        asyncio.run(w.join_weight_group("127.0.0.1", port, 1, 2, "gloo"))
        asyncio.run(w.receive_weights(plan, 1))

    thread = threading.Thread(target=receiver)
    thread.start()
    group = join_group("127.0.0.1", port, 0, 2, "gloo", torch.device("cpu"), store=store)
    broadcast_buckets(group, state, plan, torch.device("cpu"))
    thread.join(timeout=60)
    assert w.version == 1
    received = w.backend.model.state_dict()
    assert "lm_head.weight" not in state  # tied to the embedding: sent once, tied again on arrival
    for name, value in state.items():
        assert torch.equal(received[name], value), name
    assert torch.equal(received["lm_head.weight"], state["model.embed_tokens.weight"])


def test_broadcast_restore_of_the_version_held_or_an_older_one(tiny_model_config) -> None:
    """A run resumed from its step-0 checkpoint broadcasts v0 to engines that hold v0 (and a
    rollback broadcasts an older version than they hold): as a restore, the engine accepts it
    and holds the sent weights. An update that is not newer is refused by ``check_receive``,
    which the driver calls before anyone enters the collective, so the sender never waits on
    a receiver that will not receive."""
    import threading

    from actors.weights.broadcast import broadcast_buckets, bucket_plan, join_group, open_store
    from actors.weights.sync import merged_state_dict

    w = RolloutWorker(RolloutConfig(group_size=2, max_new_tokens=4), tiny_model_config)
    source = load_causal_lm(resolve_model_path(tiny_model_config), "float32")
    plan = bucket_plan(merged_state_dict(source), bucket_bytes=64 * 1024)
    with pytest.raises(RuntimeError, match="has not joined a weight-broadcast group"):
        asyncio.run(w.check_receive(0, restore=True))
    store = open_store(2, timeout_s=60)  # the sender fails within a minute if a receiver refuses
    joined = threading.Thread(target=lambda: asyncio.run(w.join_weight_group("127.0.0.1", store.port, 1, 2, "gloo")))
    joined.start()
    group = join_group("127.0.0.1", store.port, 0, 2, "gloo", torch.device("cpu"), timeout_s=60, store=store)
    joined.join(timeout=60)

    def send(version: int, restore: bool, scale: float) -> dict[str, torch.Tensor]:
        asyncio.run(w.check_receive(version, restore))  # raises before the collective if refused
        with torch.no_grad():
            for p in source.parameters():
                p.mul_(scale)
        state = merged_state_dict(source)
        errors: list[BaseException] = []

        def receive() -> None:
            try:
                asyncio.run(w.receive_weights(plan, version, restore))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        receiver = threading.Thread(target=receive)
        receiver.start()
        broadcast_buckets(group, state, plan, torch.device("cpu"))
        receiver.join(timeout=60)
        assert not errors, errors
        return state

    for version, restore, scale in [(0, True, 1.5), (1, False, 0.5), (1, True, 2.0), (0, True, 0.25)]:
        state = send(version, restore, scale)
        assert w.version == version
        received = w.backend.model.state_dict()
        for name, value in state.items():
            assert torch.equal(received[name], value), (version, restore, name)
    with pytest.raises(ValueError, match="weight broadcast v0 is not newer than v0"):  # an update, not a restore
        asyncio.run(w.check_receive(0, restore=False))
    with pytest.raises(ValueError, match="never negative"):
        asyncio.run(w.check_receive(-1, restore=True))


def test_generation_waits_for_the_version_it_needs(tiny_model_config, tiny_tokenizer) -> None:
    """An update may start after a later generation (Ray's async actors do not order
    calls); a generation that needs version 1 waits for it instead of sampling v0."""
    w = RolloutWorker(RolloutConfig(group_size=2, max_new_tokens=4), tiny_model_config)
    other = load_causal_lm(resolve_model_path(tiny_model_config), "float32")
    update = ObjectStoreWeightSync().export(other.state_dict(), version=1)

    async def scenario():
        waiting = asyncio.create_task(w.generate(0, 0, _prompts(tiny_tokenizer), min_version=1))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not waiting.done()  # still at v0: it must not sample
        await w.update_weights(update)
        return await waiting

    samples = asyncio.run(scenario()).samples
    assert {s.policy_version for s in samples} == {1}


def test_hf_update_waits_for_generations_that_asked_for_older_weights(tiny_model_config, tiny_tokenizer) -> None:
    """Queue semantics for HF: a generation waiting for v1 runs on v1 even when the
    update to v2 arrives before it wakes up."""
    w = RolloutWorker(RolloutConfig(group_size=2, max_new_tokens=4), tiny_model_config)
    state = load_causal_lm(resolve_model_path(tiny_model_config), "float32").state_dict()
    v1, v2 = (ObjectStoreWeightSync().export(state, version=v) for v in (1, 2))

    async def scenario():
        waiting = asyncio.create_task(w.generate(0, 0, _prompts(tiny_tokenizer), min_version=1))
        await asyncio.sleep(0)
        updates = [asyncio.create_task(w.update_weights(u)) for u in (v1, v2)]
        result = await waiting
        await asyncio.gather(*updates)
        return result

    result = asyncio.run(scenario())
    assert {s.policy_version for s in result.samples} == {1} and w.version == 2


def test_calls_start_in_send_order_whatever_order_they_arrive(tiny_model_config, tiny_tokenizer) -> None:
    """Ray may start an async actor's calls out of order; ``seq`` restores the send order,
    so two workers seeded alike sample the same whichever call arrives first."""
    prompts = _prompts(tiny_tokenizer)

    async def both(first_seq: int) -> dict[int, list[str]]:
        w = RolloutWorker(RolloutConfig(group_size=2, max_new_tokens=6), tiny_model_config, seed=7)
        calls = {seq: w.generate(0, seq, prompts[seq : seq + 1], 0, seq) for seq in (first_seq, 1 - first_seq)}
        results = await asyncio.gather(*calls.values())  # started in dict order: seq first_seq first
        return {seq: [s.completion_text for s in r.samples] for seq, r in zip(calls, results)}

    assert asyncio.run(both(1)) == asyncio.run(both(0))


def test_a_restarted_worker_waits_for_its_weights_then_reports_them_missing(
    tiny_model_config, tiny_tokenizer, monkeypatch
) -> None:
    import actors.rollout.worker as rollout

    monkeypatch.setattr(rollout, "RESTORE_GRACE_S", 0.2)
    w = RolloutWorker(RolloutConfig(group_size=2, max_new_tokens=4), tiny_model_config)
    w.restarted = True  # as Ray's restart of the actor leaves it: version 0, no weights sent yet
    update = ObjectStoreWeightSync().export(w.backend.model.state_dict(), version=3)

    async def restore_then_generate():
        with pytest.raises(rollout.WeightsMissing, match="was restarted and holds v0; v3 was asked for"):
            await w.generate(0, 0, _prompts(tiny_tokenizer), min_version=3)
        generation = asyncio.create_task(w.generate(0, 1, _prompts(tiny_tokenizer), min_version=3))
        await asyncio.sleep(0.05)
        await w.restore_weights(update)
        assert await w.restore_weights(update) == 0.0  # sent twice: the second is ignored
        return await generation

    assert all(s.policy_version == 3 for s in asyncio.run(restore_then_generate()).samples)


def test_rng_state_round_trip(tiny_model_config) -> None:
    w = RolloutWorker(RolloutConfig(group_size=2, max_new_tokens=4), tiny_model_config)
    state = w.rng_state()
    first = torch.rand(3)
    w.set_rng_state(state)
    assert torch.equal(torch.rand(3), first)
