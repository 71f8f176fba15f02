"""Torch threads that follow the overlap: the stages on one node share its cores by what
computes at the moment (``torch_threads: auto`` with ``pipeline.max_staleness > 0`` on CPU).

Overlapping stages do not compute all the time: a rollout worker waits for admission, the
learner for its next batch. An even fixed share (one thread each on two cores) leaves a core
idle whenever one of them waits. Here each process marks itself busy on a small board shared
by the node's stages (a file, one byte per process) while it computes, and before each
transformer block, forward and backward, sets its torch threads to its share of the cores
among the processes busy right now (``share``).

Invariants: a process's threads are at least 1 and at most ``cores``; a process counts
against the others only while it marks itself busy; one that died while busy counts until
its restarted incarnation (the same slot) marks itself again, so the others fall back to
the even share and never use more threads than cores. Threads are set on the thread that
computes (OpenMP's thread count is per thread): the hooks run there.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field


class CoreShare(BaseModel):
    """What ``torch_threads: auto`` becomes when the train driver lets the stages share the
    node's cores by what computes at the moment (it sets this; users write ``auto``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    board: str = Field(description="The node's shared board: a file of one byte per process (any process creates it).")
    first_slot: int = Field(ge=0, description="This stage's first slot: worker or rank i uses first_slot + i.")
    slots: int = Field(ge=1, description="Processes that share the cores (the board's size in bytes).")
    cores: int = Field(ge=1, description="Cores they share.")
    min_parameters: int = Field(
        default=10_000_000,
        ge=0,
        description="A model with fewer parameters keeps the even share: its ops are too small for a second "
        "thread to pay (the 140 k-parameter built-in model stepped 10-20 % slower following the overlap, a "
        "25.7 M one 7-11 % faster).",
    )


def share(cores: int, busy: int) -> int:
    """Threads for one of ``busy`` processes computing at once on ``cores`` cores: an even
    share, at least 1 (``busy`` counts the caller; 0 is read as 1)."""
    return max(1, cores // max(1, busy))


class CoreBoard:
    """One process's slot on a ``CoreShare`` board (see the module docstring)."""

    def __init__(self, spec: CoreShare, index: int) -> None:
        self.spec = spec
        self.slot = spec.first_slot + index
        if not 0 <= self.slot < spec.slots:
            raise ValueError(f"core share: slot {self.slot} outside the board's {spec.slots} slots")
        Path(spec.board).parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(spec.board, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size < spec.slots:  # extending zero-fills; a concurrent extend is harmless
            os.ftruncate(self._fd, spec.slots)
        self._mark(0)
        self._set = threading.local()  # the threads last set on each thread (OpenMP's count is per thread)
        self.following = False  # set by attach for a model large enough

    def _mark(self, value: int) -> None:
        os.pwrite(self._fd, bytes([value]), self.slot)

    def busy_count(self) -> int:
        """Processes marked busy on the board now."""
        return sum(1 for b in os.pread(self._fd, self.spec.slots, 0) if b)

    def follow(self) -> int:
        """Set this thread's torch threads to its share of the cores now; returns it."""
        threads = share(self.spec.cores, self.busy_count())
        if threads != getattr(self._set, "threads", None):
            torch.set_num_threads(threads)
            self._set.threads = threads
        return threads

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Mark this process busy while the block computes (it then counts against the others)."""
        self._mark(1)
        try:
            if self.following:
                self.follow()
            yield
        finally:
            self._mark(0)

    def attach(self, model: torch.nn.Module) -> None:
        """Follow the board before each block of ``model`` (each element of its ``ModuleList``s):
        before its forward, and before its backward (a hook on its output's gradient). A model
        under ``min_parameters`` is left alone: the process keeps the even share."""
        if sum(p.numel() for p in model.parameters()) < self.spec.min_parameters:
            return
        self.following = True
        for blocks in [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]:
            for block in blocks:
                block.register_forward_pre_hook(self._before_forward)
                block.register_forward_hook(self._hook_backward)

    def _before_forward(self, module: torch.nn.Module, args: object) -> None:
        self.follow()

    def _hook_backward(self, module: torch.nn.Module, args: object, output: object) -> None:
        first = output[0] if isinstance(output, tuple) and output else output
        if isinstance(first, torch.Tensor) and first.requires_grad:
            first.register_hook(self._before_backward)

    def _before_backward(self, grad: torch.Tensor) -> None:
        self.follow()


def board_for(spec: CoreShare | object, index: int) -> CoreBoard | None:
    """A ``CoreBoard`` when a stage's ``torch_threads`` is a ``CoreShare``, else None."""
    return CoreBoard(spec, index) if isinstance(spec, CoreShare) else None
