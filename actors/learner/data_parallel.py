"""Data-parallel plumbing of the learner: row shares, micro-batch plans and metric reductions.

Pure row arithmetic (``shard``, ``micro_batch_plan``, ``split_rows``,
``_chunks``) plus the two collectives the learner makes on the default process
group (``all_reduce_metrics``) and the folding of per-micro-batch statistics
(``accumulate_metrics``, ``mean_metrics``). See ``actors/learner/learner.py`` for how every
rank keeps the same number of forwards, backwards and reductions.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import torch


def split_rows(rows: slice, parts: int) -> list[slice]:
    """``rows`` cut into at most ``parts`` contiguous, non-empty slices of near-equal size."""
    n = rows.stop - rows.start
    parts = max(1, min(parts, n))
    bounds = [rows.start + (n * k) // parts for k in range(parts + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def _chunks(rows: slice, size: int) -> list[slice]:
    """``rows`` cut into consecutive slices of ``size`` sequences (the last may be shorter)."""
    return [slice(lo, min(lo + size, rows.stop)) for lo in range(rows.start, rows.stop, size)]


def shard(rows: slice, rank: int, world_size: int) -> slice:
    """Rank ``rank``'s contiguous share of ``rows``: ``n * r // world_size`` to ``n * (r + 1) // world_size``.

    The shares of ranks 0..world_size-1 are in order, disjoint, cover ``rows``
    and differ in size by at most one (some are empty when ``n < world_size``).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a group of {world_size}")
    n = rows.stop - rows.start
    return slice(rows.start + n * rank // world_size, rows.start + n * (rank + 1) // world_size)


@dataclass(frozen=True)
class MicroBatch:
    """One forward (and, in training, one backward) on one rank.

    A ``padding`` micro-batch repeats a real row only so that this rank makes
    the same collective calls as the others: its loss is multiplied by 0, its
    statistics and log-probs are ignored.
    """

    rows: slice
    padding: bool = False


def micro_batch_plan(rows: slice, rank: int, world_size: int, micro_batch_size: int) -> list[MicroBatch]:
    """This rank's micro-batches for ``rows``: its ``shard`` in chunks of ``micro_batch_size``, then padding.

    Invariants: every rank's plan has the same length, the chunk count of the
    largest share, ``ceil(ceil(n / world_size) / micro_batch_size)``, which
    depends on the row count only; the real micro-batches of all ranks, in rank
    order, are the rows in order, each exactly once; padding repeats the first
    row of ``rows``. With ``world_size == 1`` the plan is ``rows`` in chunks,
    with no padding.
    """
    n = rows.stop - rows.start
    if n <= 0:
        raise ValueError(f"no rows to plan: {rows}")
    real = [MicroBatch(chunk) for chunk in _chunks(shard(rows, rank, world_size), micro_batch_size)]
    largest_share = -(-n // world_size)
    count = -(-largest_share // micro_batch_size)
    return real + [MicroBatch(slice(rows.start, rows.start + 1), padding=True)] * (count - len(real))


def accumulate_metrics(record: dict[str, float], stats: dict[str, float], share: float, padding: bool) -> None:
    """Fold one micro-batch's statistics into ``record``, in place.

    ``*_max`` keys by max, the others weighted by ``share`` (the micro-batch's
    rows over the minibatch's). A padding micro-batch adds its keys with no
    weight (0, or -inf for maxima), so that every rank holds the same keys.
    """
    for key, value in stats.items():
        if key.endswith("_max"):
            record[key] = max(record.get(key, -math.inf), -math.inf if padding else value)
        else:
            record[key] = record.get(key, 0.0) + (0.0 if padding else value * share)


def all_reduce_metrics(
    values: torch.Tensor, op: torch.distributed.ReduceOp.RedOpType, device: torch.device
) -> torch.Tensor:
    """``values`` reduced over the default process group, back on the CPU (sent from ``device``:
    NCCL only reduces CUDA tensors)."""
    on_device = values.to(device)
    torch.distributed.all_reduce(on_device, op=op)
    return on_device.cpu()


def mean_metrics(records: list[dict[str, float]]) -> dict[str, float]:
    """Per-optimiser-step metrics to one value each: the max for ``*_max`` keys, else the mean."""
    keys = dict.fromkeys(k for r in records for k in r)
    return {k: (max if k.endswith("_max") else statistics.fmean)([r[k] for r in records if k in r]) for k in keys}


def combine_over_ranks(record: dict[str, float], world_size: int, device: torch.device) -> dict[str, float]:
    """``record`` summed over the default group's ranks (``*_max`` keys: their max); unchanged
    with one rank. Collective.

    Every rank must hold the same keys (``accumulate_metrics`` adds padding
    micro-batches' keys too, and the statistics' keys depend on the settings
    only), so the values line up when sent in sorted key order.
    """
    if world_size == 1:
        return record
    combined: dict[str, float] = {}
    keys = sorted(record)
    for op, names in (
        (torch.distributed.ReduceOp.SUM, [k for k in keys if not k.endswith("_max")]),
        (torch.distributed.ReduceOp.MAX, [k for k in keys if k.endswith("_max")]),
    ):
        if names:
            values = torch.tensor([record[k] for k in names], dtype=torch.float64)
            combined.update(zip(names, all_reduce_metrics(values, op, device).tolist()))
    return {key: combined[key] for key in record}
