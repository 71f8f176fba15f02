"""Data-parallel plumbing of the learner: row shares, micro-batch plans and metric reductions.

Pure row arithmetic (``shard``, ``split_rows``, ``micro_batch_plan``,
``pack_by_tokens``, ``padding_fraction``) plus the collectives the learner makes
on the default process group (``all_reduce_metrics``, ``combine_over_ranks``)
and the folding of per-micro-batch statistics (``accumulate_metrics``,
``mean_metrics``).

Micro-batches. Each rank forwards (and in training backwards) its ``shard`` of a
minibatch's rows in micro-batches:

* by row count (``learner.max_tokens_per_micro_batch`` None): consecutive
  chunks of ``micro_batch_size`` rows, each a ``slice``;
* by token budget (``max_tokens_per_micro_batch`` set): the share's rows sorted
  by length (prompt + completion tokens), longest first, and packed greedily so
  that each micro-batch's padded size (rows x its longest row) stays within the
  budget, with at most ``micro_batch_size`` rows. A micro-batch is then a set of
  rows, listed in row order: a ``slice`` where they are contiguous, else a tuple
  of row indices (``Rows``). ``collate`` pads each micro-batch to its own
  longest row, so short rows no longer pay for the longest row of the batch.

Either way every micro-batch loss is normalised by the whole minibatch's totals
(``LossTotals``: sequences, completion tokens), so the sum over micro-batches is
the minibatch loss whatever the split; statistics that are per-micro-batch
means are weighted by the micro-batch's rows over the minibatch's.

Several ranks (``learner.world_size > 1``). Every rank gets the same full
batch and takes the same optimiser steps; rank ``r`` forwards and backwards only
``shard(rows, r, world_size)``, a contiguous share of each minibatch's rows:

* Gradient: each micro-batch loss is still normalised by the GLOBAL minibatch
  ``LossTotals`` and multiplied by ``world_size`` before ``backward``; DeepSpeed
  averages gradients over ranks, so the applied gradient is the sum of the
  ranks' parts, i.e. the single-process minibatch gradient.
* Collectives: ZeRO reduces gradients in every ``backward`` and ZeRO-3 gathers
  parameters in every forward, so every rank must run the same number of each.
  ``micro_batch_plan`` pads a rank's list with *padding* micro-batches (the
  minibatch's first row again, loss times 0, statistics ignored) up to the
  largest plan of any rank: every rank computes every rank's plan (it holds the
  whole batch, so it knows the other shares' lengths). The no-gradient
  log-probs (proximal, reference) are sharded the same way over the whole batch
  and then summed across ranks into every rank's copy (each token has one
  owner, the others add zeros: exact).
* Metrics: after each optimiser step one ``all_reduce`` sums the row-weighted
  statistics and the loss parts and takes the max of ``*_max`` keys, so every
  rank reports what one process would with the same micro-batches;
  ``grad_norm`` is DeepSpeed's global norm. Statistics that are per-micro-batch
  means (clip fractions, entropy) are weighted by rows, as in one process, so
  they equal the single-process values exactly when the micro-batch boundaries
  coincide, and otherwise differ only in that weighting.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

T = TypeVar("T")
Rows = slice | tuple[int, ...]  # a micro-batch's rows: contiguous, or row indices in increasing order


def row_count(rows: Rows) -> int:
    """How many rows ``rows`` holds."""
    return rows.stop - rows.start if isinstance(rows, slice) else len(rows)


def row_indices(rows: Rows) -> list[int]:
    """``rows`` as a list of row indices, in order."""
    return list(range(rows.start, rows.stop)) if isinstance(rows, slice) else list(rows)


def take(values: Sequence[T], rows: Rows) -> list[T]:
    """The entries of ``values`` at ``rows``, in order."""
    return list(values[rows]) if isinstance(rows, slice) else [values[i] for i in rows]


def as_rows(indices: Sequence[int]) -> Rows:
    """Increasing row ``indices`` as ``Rows``: a slice when they are contiguous, else a tuple."""
    if indices and list(indices) == list(range(indices[0], indices[0] + len(indices))):
        return slice(indices[0], indices[0] + len(indices))
    return tuple(indices)


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

    rows: Rows
    padding: bool = False


def pack_by_tokens(rows: slice, lengths: Sequence[int], max_tokens: int, max_rows: int) -> list[Rows]:
    """``rows`` packed into micro-batches of at most ``max_tokens`` padded tokens and ``max_rows`` rows.

    The rows are sorted by ``lengths[i]``, longest first (ties: lower index
    first), and taken greedily: a row joins the current micro-batch while
    ``(rows in it + 1) x its longest row <= max_tokens`` and it has fewer than
    ``max_rows`` rows, else it starts the next one. So the micro-batches come
    longest first, each row is in exactly one, and every micro-batch's padded
    size is within the budget, except that a row longer than ``max_tokens``
    forms a micro-batch of its own (the config checks rule that out before a
    run starts). Each micro-batch lists its rows in increasing order (``as_rows``).
    """
    order = sorted(range(rows.start, rows.stop), key=lambda i: (-lengths[i], i))
    packs: list[list[int]] = []
    for i in order:
        current = packs[-1] if packs else []
        if not current or len(current) >= max_rows or (len(current) + 1) * lengths[current[0]] > max_tokens:
            packs.append([i])
        else:
            current.append(i)
    return [as_rows(sorted(pack)) for pack in packs]


def micro_batch_plan(
    rows: slice,
    rank: int,
    world_size: int,
    micro_batch_size: int,
    max_tokens: int | None = None,
    lengths: Sequence[int] | None = None,
) -> list[MicroBatch]:
    """This rank's micro-batches for ``rows``: its ``shard``, cut or packed, then padding micro-batches.

    Without ``max_tokens``: the shard in consecutive chunks of
    ``micro_batch_size`` rows. With it: the shard packed by ``pack_by_tokens``
    (``lengths[i]``: row ``i``'s tokens, for every row of the batch).

    Invariants: every rank's plan has the same length, the largest real plan of
    any rank (without ``max_tokens``: ``ceil(ceil(n / world_size) /
    micro_batch_size)``, which depends on the row count only); the real
    micro-batches of all ranks hold every row of ``rows`` exactly once (without
    ``max_tokens`` in order); padding repeats the first row of ``rows``. With
    ``world_size == 1`` there is no padding.
    """
    n = rows.stop - rows.start
    if n <= 0:
        raise ValueError(f"no rows to plan: {rows}")
    if max_tokens is None:
        real: list[Rows] = list(_chunks(shard(rows, rank, world_size), micro_batch_size))
        largest_share = -(-n // world_size)
        count = -(-largest_share // micro_batch_size)
    else:
        if lengths is None:
            raise ValueError("a token budget needs the rows' lengths")
        plans = [
            pack_by_tokens(shard(rows, r, world_size), lengths, max_tokens, micro_batch_size) for r in range(world_size)
        ]
        real, count = plans[rank], max(len(p) for p in plans)
    padding = MicroBatch(slice(rows.start, rows.start + 1), padding=True)
    return [MicroBatch(r) for r in real] + [padding] * (count - len(real))


def plan_tokens(
    plan: Sequence[MicroBatch], lengths: Sequence[int], tokens: Sequence[int] | None = None
) -> tuple[int, int]:
    """``(positions, used)`` of ``plan``'s forwards: the token positions they process (each
    micro-batch: its rows x its longest ``lengths``, padding micro-batches included) and how many
    of them hold real tokens (``tokens``, default ``lengths``, summed over the real micro-batches'
    rows)."""
    tokens = lengths if tokens is None else tokens
    positions = sum(row_count(m.rows) * max(take(lengths, m.rows)) for m in plan)
    used = sum(sum(take(tokens, m.rows)) for m in plan if not m.padding)
    return positions, used


def padding_fraction(
    minibatches: Sequence[slice],
    world_size: int,
    micro_batch_size: int,
    max_tokens: int | None,
    lengths: Sequence[int],
    tokens: Sequence[int] | None = None,
) -> float:
    """The share of the token positions that the forwards of every rank's plans over
    ``minibatches`` process but that hold no real token: padding within micro-batches and
    the ranks' padding micro-batches (``plan_tokens``). The same on every rank, no collective."""
    positions = used = 0
    for rows in minibatches:
        for rank in range(world_size):
            p, u = plan_tokens(
                micro_batch_plan(rows, rank, world_size, micro_batch_size, max_tokens, lengths), lengths, tokens
            )
            positions, used = positions + p, used + u
    return (positions - used) / positions if positions else 0.0


def accumulate_metrics(record: dict[str, float], stats: dict[str, float], share: float, padding: bool) -> None:
    """Fold one micro-batch's statistics into ``record``, in place.

    ``*_max`` keys by max, the others weighted by ``share`` (the micro-batch's
    rows over the minibatch's: ``row_count(micro.rows) / totals.sequences``). A padding micro-batch adds its keys with no
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
