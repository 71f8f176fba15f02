"""Weight sync over a process group: the learner's rank 0 broadcasts to every engine.

The group is made for the purpose (``join_group``): learner rank 0 is rank 0,
then every process of every rollout engine that holds weights, engine by engine
(``group_ranks``): a vLLM engine with tensor parallelism ``t`` has ``t`` shard
workers, each loading its slice of every broadcast tensor, so each is a member
at a rank of its own. It is a standalone torch process
group on its own TCP store, so it never touches the learner's DeepSpeed group or
vLLM's own tensor-parallel group. Rank 0 opens the store first (``open_store``)
on a port the kernel assigns while it binds, and the engines are then told that
port: no port is probed free and bound later, so no other process can take it
in between. Backend ``nccl`` on GPUs (device-to-device,
no host copy), ``gloo`` on CPUs, which is how the CPU tests exercise this
exact code.

Weights travel in buckets: tensors of one dtype are concatenated into flat
buffers of at most ``bucket_bytes`` and each buffer is one broadcast, so a
model costs a handful of collectives instead of one per tensor. Both sides
agree on the layout beforehand (``bucket_plan``): the plan is built once from
names, dtypes and shapes and sent to the engines with each sync.

Invariant: sender and receivers walk the same plan in the same order; a
receiver yields each bucket's tensors as views of a fresh buffer, so the
caller may keep or load them.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Protocol

import torch
import torch.distributed as dist

# (name, dtype, shape) per tensor; a plan is a list of buckets.
TensorSpec = tuple[str, str, list[int]]
Plan = list[list[TensorSpec]]


class BroadcastGroup(Protocol):
    """What this module needs of a process group (a gloo or NCCL one from ``join_group``)."""

    def broadcast(self, tensor: torch.Tensor, root: int) -> dist.distributed_c10d.Work: ...


_DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.bfloat16, torch.float16, torch.float64)}


def bucket_plan(tensors: dict[str, torch.Tensor], bucket_bytes: int) -> Plan:
    """Group tensors into buckets of one dtype and at most ``bucket_bytes``
    (a single larger tensor gets a bucket of its own), in the dict's order."""
    plan: Plan = []
    current: list[TensorSpec] = []
    size, dtype = 0, None
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if current and (t.dtype != dtype or size + nbytes > bucket_bytes):
            plan.append(current)
            current, size = [], 0
        current.append((name, str(t.dtype).removeprefix("torch."), list(t.shape)))
        size, dtype = size + nbytes, t.dtype
    if current:
        plan.append(current)
    return plan


def group_ranks(shards: list[int]) -> tuple[list[int], int]:
    """The group's layout for engines of ``shards[i]`` processes each: (engine i's first rank,
    the world size). Rank 0 is the sender; engine i's shard s is rank ``first[i] + s``, so
    ``first[i] = 1 + sum(shards[:i])`` and the world is ``1 + sum(shards)``."""
    if any(n < 1 for n in shards):
        raise ValueError(f"every engine has at least one process, got {shards}")
    firsts = [1 + sum(shards[:i]) for i in range(len(shards))]
    return firsts, 1 + sum(shards)


def open_store(world_size: int, timeout_s: float = 600.0) -> dist.TCPStore:
    """Rank 0's TCP store, already listening on every interface at ``store.port`` (the kernel
    chose it: bound to port 0), for ``join_group(..., store=...)`` once the others are told it."""
    return dist.TCPStore(
        "0.0.0.0", 0, world_size, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=timeout_s)
    )


def join_group(
    host: str,
    port: int,
    rank: int,
    world_size: int,
    backend: str,
    device: torch.device,
    timeout_s: float = 600.0,
    store: dist.TCPStore | None = None,
) -> BroadcastGroup:
    """A standalone process group of ``world_size`` ranks rendezvousing at
    ``host:port``. Blocks until every rank joined. Rank 0 hosts the TCP store:
    the one ``open_store`` opened when given, else one it opens on ``port``."""
    if store is None:
        store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timedelta(seconds=timeout_s))
    if backend == "gloo":
        # The ignores: torch's stubs declare broadcast() on ProcessGroup only, not on these backends.
        return dist.ProcessGroupGloo(store, rank, world_size, timedelta(seconds=timeout_s))  # type: ignore[return-value]
    if backend == "nccl":
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timedelta(seconds=timeout_s)
        torch.cuda.set_device(device)
        return dist.ProcessGroupNCCL(store, rank, world_size, options)  # type: ignore[return-value]  # as above
    raise ValueError(f"weight broadcast backend must be gloo or nccl, got {backend!r}")


def broadcast_buckets(group: BroadcastGroup, tensors: dict[str, torch.Tensor], plan: Plan, device: torch.device) -> int:
    """Rank 0's side: send ``tensors`` bucket by bucket as laid out by ``plan``;
    returns the bytes sent (per receiver).

    Tensors already on ``device`` (the learner's GPU) never leave it: a bucket of one
    contiguous tensor is broadcast from the tensor's own memory (the root only reads it), a
    bucket of several is packed into one buffer there; only tensors elsewhere are moved."""
    sent = 0
    for bucket in plan:
        parts = [tensors[name].detach().reshape(-1) for name, _, _ in bucket]
        if len(parts) == 1 and _on(parts[0], device) and parts[0].is_contiguous():
            flat = parts[0]
        else:
            flat = torch.cat([part if _on(part, device) else part.to(device) for part in parts])
        group.broadcast(flat, 0).wait()
        sent += flat.numel() * flat.element_size()
    return sent


def receive_buckets(
    group: BroadcastGroup, plan: Plan, device: torch.device
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """A receiver's side: one list of ``(name, tensor)`` per bucket, in plan order."""
    for bucket in plan:
        dtype = _DTYPES[bucket[0][1]]
        sizes = [_numel(shape) for _, _, shape in bucket]
        flat = torch.empty(sum(sizes), dtype=dtype, device=device)
        group.broadcast(flat, 0).wait()
        parts = flat.split(sizes)
        yield [(name, part.view(shape)) for (name, _, shape), part in zip(bucket, parts)]


def _on(tensor: torch.Tensor, device: torch.device) -> bool:
    """Whether ``tensor`` is on ``device`` (``cuda`` without an index: the current CUDA device)."""
    if tensor.device.type != device.type:
        return False
    index = device.index if device.index is not None or device.type != "cuda" else torch.cuda.current_device()
    return tensor.device.index == index


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
