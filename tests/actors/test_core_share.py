"""Torch threads that follow the overlap (``actors/core_share.py``), without Ray: two boards on
one file stand for two processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from actors.core_share import CoreBoard, CoreShare, share


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _spec(tmp_path: Path, first_slot: int = 0, slots: int = 2, cores: int = 2, min_parameters: int = 0) -> CoreShare:
    board = str(tmp_path / "board")
    return CoreShare(board=board, first_slot=first_slot, slots=slots, cores=cores, min_parameters=min_parameters)


def test_share_is_an_even_split_of_the_cores_among_the_busy() -> None:
    assert share(2, 1) == 2  # alone: every core
    assert share(2, 2) == 1
    assert share(2, 3) == 1  # never 0
    assert share(8, 3) == 2  # 8 // 3
    assert share(4, 0) == 4  # nobody marked (a hook outside a busy block): read as alone


def test_a_process_alone_uses_every_core_and_shares_them_when_another_computes(tmp_path: Path) -> None:
    rollout, learner = CoreBoard(_spec(tmp_path), 0), CoreBoard(_spec(tmp_path), 1)
    learner.following = True  # as attach sets it for a model large enough
    assert rollout.busy_count() == learner.busy_count() == 0
    with learner.busy():
        assert torch.get_num_threads() == 2 and rollout.busy_count() == 1
        with rollout.busy():
            assert learner.follow() == 1 and torch.get_num_threads() == 1
        assert learner.follow() == 2 and torch.get_num_threads() == 2
    assert rollout.busy_count() == 0  # unmarked on the way out
    with pytest.raises(RuntimeError), learner.busy():
        raise RuntimeError("a failing step")
    assert rollout.busy_count() == 0  # also when the block raises
    with pytest.raises(ValueError, match="slot 2 outside"):
        CoreBoard(_spec(tmp_path, first_slot=1), 1)


class _Recorder(torch.nn.Module):
    """A block that records the torch threads its forward runs with."""

    def __init__(self, seen: list[int]) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)
        self.seen = seen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.get_num_threads())
        return self.linear(x)


def test_each_block_follows_the_board_before_its_forward_and_its_backward(tmp_path: Path) -> None:
    """The other process starts computing between block 0 and block 1 and stops before the
    backward: block 1's forward runs on one thread, the backward again on both cores."""
    learner, rollout = CoreBoard(_spec(tmp_path), 1), CoreBoard(_spec(tmp_path), 0)
    seen: list[int] = []
    blocks = torch.nn.ModuleList([_Recorder(seen), _Recorder(seen)])
    learner.attach(blocks)
    blocks[0].register_forward_hook(lambda *_: rollout._mark(1))
    in_backward: list[int] = []
    blocks[0].linear.weight.register_hook(lambda g: in_backward.append(torch.get_num_threads()))
    with learner.busy():
        loss = blocks[1](blocks[0](torch.ones(2, 4))).sum()
        rollout._mark(0)
        loss.backward()
    assert seen == [2, 1]
    assert in_backward == [2]


def _observe(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Every ``follow`` as (slot, processes busy then), threads left unchanged."""
    observed: list[tuple[int, int]] = []

    def follow(self: CoreBoard) -> int:
        observed.append((self.slot, self.busy_count()))
        return torch.get_num_threads()

    monkeypatch.setattr(CoreBoard, "follow", follow)
    return observed


def test_the_learner_marks_its_slot_while_it_trains(
    tmp_path: Path, tiny_model_config, make_train_batch, monkeypatch: pytest.MonkeyPatch
) -> None:
    from actors.learner.config import LearnerConfig
    from actors.learner.learner import Learner
    from algorithms.config import AlgorithmConfig

    spec = _spec(tmp_path, first_slot=1)
    learner = Learner(LearnerConfig(torch_threads=spec), tiny_model_config, AlgorithmConfig(), 1.0)
    batch = make_train_batch(0, 4, learner.backend.model, seed=0)  # its forwards are outside a step
    observed = _observe(monkeypatch)
    learner.train(batch)
    layers = learner.backend.model.config.num_hidden_layers
    assert len(observed) >= 2 * layers  # each block, forward and backward
    assert set(observed) == {(1, 1)}  # its own slot, marked busy meanwhile
    assert CoreBoard(spec, 0).busy_count() == 0  # unmarked after the step


def test_the_hf_rollout_worker_marks_its_slot_while_it_generates(
    tmp_path: Path, tiny_model_config, tiny_tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from actors.messages import PromptItem
    from actors.rollout.worker import RolloutConfig, RolloutWorker

    spec = _spec(tmp_path, first_slot=0, slots=3)
    worker = RolloutWorker(RolloutConfig(group_size=2, max_new_tokens=4, torch_threads=spec), tiny_model_config, 1)
    observed = _observe(monkeypatch)
    ids = tiny_tokenizer("A bakery in Austin")["input_ids"]
    asyncio.run(worker.generate(0, 0, [PromptItem("p0", 0, "A bakery in Austin", ids)]))
    assert len(observed) >= 2 and set(observed) == {(1, 1)}  # worker 1's slot, busy while it generates
    assert CoreBoard(spec, 0).busy_count() == 0


def test_a_small_model_keeps_the_even_share(tmp_path: Path) -> None:
    """Under ``min_parameters`` nothing is hooked and a busy block sets no threads."""
    board = CoreBoard(_spec(tmp_path, min_parameters=1000), 0)
    seen: list[int] = []
    blocks = torch.nn.ModuleList([_Recorder(seen), _Recorder(seen)])  # 2 x 20 parameters
    board.attach(blocks)
    torch.set_num_threads(1)  # the even share apply_torch_threads set
    with board.busy():  # alone on the board: following would take both cores
        blocks[1](blocks[0](torch.ones(2, 4))).sum().backward()
    assert not board.following and seen == [1, 1]
