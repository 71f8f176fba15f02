import threading

import pytest
import torch

from actors.weights.broadcast import (
    broadcast_buckets,
    bucket_plan,
    group_ranks,
    join_group,
    open_store,
    receive_buckets,
)


def test_bucket_plan_groups_by_dtype_and_size() -> None:
    # sizes in bytes: a 48 (12 fp32), b 40, c 8 (4 bf16), d 400, e 4
    tensors = {
        "a": torch.zeros(3, 4),
        "b": torch.zeros(10),
        "c": torch.zeros(2, 2, dtype=torch.bfloat16),
        "d": torch.zeros(100),
        "e": torch.zeros(1),
    }
    plan = bucket_plan(tensors, bucket_bytes=100)
    # a+b = 88 <= 100 fit; c changes dtype; d alone exceeds the limit (own bucket); e starts a new one after d
    assert plan == [
        [("a", "float32", [3, 4]), ("b", "float32", [10])],
        [("c", "bfloat16", [2, 2])],
        [("d", "float32", [100])],
        [("e", "float32", [1])],
    ]


def test_broadcast_roundtrip_two_receivers() -> None:
    """Rank 0 opens its store first, as the learner does, and the receivers join at its port."""
    torch.manual_seed(0)
    src = {"w": torch.randn(5, 3), "b": torch.randn(7), "h": torch.randn(4, 4).to(torch.bfloat16)}
    plan = bucket_plan(src, bucket_bytes=80)
    store = open_store(3)
    port = store.port
    assert port > 0  # the kernel's choice, listening since open_store returned
    received: dict[int, dict[str, torch.Tensor]] = {1: {}, 2: {}}

    def receiver(rank: int) -> None:
        group = join_group("127.0.0.1", port, rank, 3, "gloo", torch.device("cpu"))
        for bucket in receive_buckets(group, plan, torch.device("cpu")):
            received[rank].update(bucket)

    threads = [threading.Thread(target=receiver, args=(r,)) for r in (1, 2)]
    for t in threads:
        t.start()
    group = join_group("127.0.0.1", port, 0, 3, "gloo", torch.device("cpu"), store=store)
    sent = broadcast_buckets(group, src, plan, torch.device("cpu"))
    for t in threads:
        t.join(timeout=60)
    assert sent == 15 * 4 + 7 * 4 + 16 * 2
    for rank in (1, 2):
        assert received[rank].keys() == src.keys()
        for name, value in src.items():
            assert received[rank][name].dtype == value.dtype and torch.equal(received[rank][name], value)


def test_every_shard_of_tensor_parallel_engines_receives_the_broadcast() -> None:
    """Two engines of two shards each (vLLM tensor parallelism 2): shard s of an engine joins at
    the engine's first rank + s (``actors/rollout/vllm_worker.py``), as ``group_ranks`` lays the group
    out; the group forms and every shard receives every tensor."""
    torch.manual_seed(1)
    src = {"w": torch.randn(6, 2), "b": torch.randn(3)}
    plan = bucket_plan(src, bucket_bytes=32)
    shards = [2, 2]
    firsts, world = group_ranks(shards)
    store = open_store(world)
    received: dict[int, dict[str, torch.Tensor]] = {}

    def shard(rank: int) -> None:
        group = join_group("127.0.0.1", store.port, rank, world, "gloo", torch.device("cpu"), timeout_s=60)
        received[rank] = {name: t for bucket in receive_buckets(group, plan, torch.device("cpu")) for name, t in bucket}

    ranks = [first + s for first, n in zip(firsts, shards) for s in range(n)]
    threads = [threading.Thread(target=shard, args=(r,), daemon=True) for r in ranks]
    for t in threads:
        t.start()
    sender = join_group("127.0.0.1", store.port, 0, world, "gloo", torch.device("cpu"), timeout_s=60, store=store)
    broadcast_buckets(sender, src, plan, torch.device("cpu"))
    for t in threads:
        t.join(timeout=60)
    assert world == 5 and sorted(received) == [1, 2, 3, 4]
    for got in received.values():
        assert all(torch.equal(got[name], value) for name, value in src.items())


def test_unknown_backend_is_refused() -> None:
    store = open_store(1)
    with pytest.raises(ValueError, match="gloo or nccl"):
        join_group("127.0.0.1", store.port, 0, 1, "mpi", torch.device("cpu"), store=store)


class _RecordingGroup:
    """A one-rank stand-in for the weight group: records the memory each broadcast reads."""

    def __init__(self) -> None:
        self.sent: list[torch.Tensor] = []

    def broadcast(self, tensor: torch.Tensor, root: int):
        self.sent.append(tensor)
        return self

    def wait(self) -> None:
        return None


def _learner(tiny_model_config, lora: bool):
    from actors.learner.learner import Learner, LearnerConfig, LoraConfig
    from algorithms.config import AlgorithmConfig

    config = LearnerConfig(lora=LoraConfig(enabled=lora, r=4, alpha=8))
    return Learner(config, tiny_model_config, AlgorithmConfig(), 1.0)


def test_the_learner_broadcasts_from_its_parameters_without_a_copy(tiny_model_config) -> None:
    """Broadcast transport: every tensor is already on the learner's device (here the CPU, as the GPU on
    a GPU learner), so each one-tensor bucket is broadcast from the parameter's own memory, with no
    clone to the host and back; the object-store path still gets copies."""
    learner = _learner(tiny_model_config, lora=False)
    plan = learner.weight_plan(bucket_bytes=1)  # one tensor per bucket
    group = _RecordingGroup()
    learner._broadcast_group = group
    learner.broadcast_weights(plan)
    params = learner.backend.model.state_dict()
    names = [name for bucket in plan for name, _, _ in bucket]
    assert len(group.sent) == len(names) == len(plan)
    for name, sent in zip(names, group.sent):
        assert sent.data_ptr() == params[name].data_ptr(), f"{name} was copied before its broadcast"
    exported = learner.backend.full_state_dict()
    assert all(exported[name].data_ptr() != params[name].data_ptr() for name in names)  # the store's copies


def test_lora_weights_are_merged_on_the_device_and_arrive_intact(tiny_model_config) -> None:
    """A LoRA learner's broadcast over gloo: the merged weights (computed beside the parameters, not
    on a host copy) reach the receiver equal to the object-store export; unadapted weights are sent
    from the parameters themselves."""
    from actors.weights.sync import merged_state_dict

    learner = _learner(tiny_model_config, lora=True)
    for module in learner.backend.model.modules():  # a nonzero adapter, so merging changes the weights
        if hasattr(module, "lora_B"):
            torch.nn.init.normal_(module.lora_B["default"].weight, std=0.1)
    on_device = learner.backend.full_state_dict(on_device=True)
    base = learner.backend.model.get_base_model().state_dict()
    params = {name.replace(".base_layer.", "."): t for name, t in base.items() if "lora_" not in name}
    adapted = {name.replace(".base_layer.", ".") for name in base if name.endswith(".base_layer.weight")}
    assert adapted and set(on_device) <= set(params)
    for name, tensor in on_device.items():
        if name in adapted:  # merged: a new tensor, on the parameter's device
            assert tensor.data_ptr() != params[name].data_ptr() and tensor.device == params[name].device
            assert not torch.equal(tensor, params[name])
        else:
            assert tensor.data_ptr() == params[name].data_ptr()
    expected = merged_state_dict(learner.backend.model)
    plan = bucket_plan(expected, bucket_bytes=4096)
    store = open_store(2)
    received: dict[str, torch.Tensor] = {}

    def receiver() -> None:
        group = join_group("127.0.0.1", store.port, 1, 2, "gloo", torch.device("cpu"), timeout_s=60)
        for bucket in receive_buckets(group, plan, torch.device("cpu")):
            received.update(bucket)

    thread = threading.Thread(target=receiver, daemon=True)
    thread.start()
    learner._broadcast_group = join_group("127.0.0.1", store.port, 0, 2, "gloo", torch.device("cpu"), store=store)
    learner.broadcast_weights(plan)
    thread.join(timeout=60)
    assert received.keys() == expected.keys()
    assert all(torch.equal(received[name], expected[name]) for name in expected)
