import threading

import pytest
import torch

from actors.weight_broadcast import broadcast_buckets, bucket_plan, group_ranks, join_group, open_store, receive_buckets


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
    the engine's first rank + s (``actors/vllm_worker.py``), as ``group_ranks`` lays the group
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
