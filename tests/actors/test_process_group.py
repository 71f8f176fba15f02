"""A learner rank's process group: the launch variables it fills in, and a port taken
between the moment it was found free and the moment the rendezvous store listens on it.

The store is torch's real ``TCPStore`` (what ``deepspeed.init_distributed`` creates
through torch's env rendezvous); only DeepSpeed's wrapper around it is replaced, so
no process group is left behind in the test process.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator

import pytest
import torch.distributed as dist

from actors.learner import process_group
from actors.learner.process_group import (
    DIST_VARS,
    RendezvousPortTaken,
    ensure_distributed_env,
    init_distributed,
    port_taken,
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in DIST_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another process would hold: a socket listening on every interface."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def stores(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dist.TCPStore]]:
    """``deepspeed.init_distributed`` stood in for by its rendezvous alone: rank 0's store on
    MASTER_ADDR:MASTER_PORT. The stores made, dropped afterwards (which closes them)."""
    import deepspeed

    made: list[dist.TCPStore] = []

    def rendezvous(dist_backend: str) -> None:
        port = int(os.environ["MASTER_PORT"])
        made.append(dist.TCPStore(os.environ["MASTER_ADDR"], port, 1, is_master=True, wait_for_workers=False))

    monkeypatch.setattr(deepspeed, "init_distributed", rendezvous)
    yield made
    made.clear()


def _ports(monkeypatch: pytest.MonkeyPatch, *ports: int) -> None:
    """``free_port`` answers these, in turn."""
    answers = iter(ports)
    monkeypatch.setattr(process_group, "free_port", lambda: next(answers))


@pytest.mark.usefixtures("clean_env")
def test_ensure_distributed_env_fills_a_one_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASTER_PORT", "29999")  # set by someone else: kept
    ensure_distributed_env()
    assert {name: os.environ[name] for name in DIST_VARS} == {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29999",
    }
    monkeypatch.delenv("MASTER_PORT")
    ensure_distributed_env()
    assert 0 < int(os.environ["MASTER_PORT"]) < 65536


@pytest.mark.usefixtures("clean_env")
def test_ensure_distributed_env_refuses_to_guess_for_several_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(RuntimeError, match="LOCAL_RANK, MASTER_ADDR, MASTER_PORT"):
        ensure_distributed_env()
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(RuntimeError, match="RANK=1"):
        ensure_distributed_env()


@pytest.mark.usefixtures("clean_env")
def test_a_port_taken_after_it_was_found_free_is_replaced(
    monkeypatch: pytest.MonkeyPatch, taken_port: int, stores: list, free_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    _ports(monkeypatch, taken_port, free_port)
    with caplog.at_level(logging.WARNING, logger="actors.learner.process_group"):
        init_distributed(1)
    assert os.environ["MASTER_PORT"] == str(free_port)
    assert [store.port for store in stores] == [free_port]  # the taken port made no store
    assert f"MASTER_PORT={taken_port} was taken" in caplog.text


@pytest.mark.usefixtures("clean_env", "stores")
def test_a_port_taken_every_time_fails_after_the_last_attempt(monkeypatch: pytest.MonkeyPatch, taken_port: int) -> None:
    _ports(monkeypatch, *[taken_port] * process_group.PORT_ATTEMPTS)
    with pytest.raises(RendezvousPortTaken, match=f"any of 3 free ports in turn \\(the last {taken_port}\\)"):
        init_distributed(1)


@pytest.mark.usefixtures("clean_env", "stores")
def test_a_port_the_launcher_set_is_never_replaced(monkeypatch: pytest.MonkeyPatch, taken_port: int) -> None:
    _ports(monkeypatch)  # asking for a free port would fail the test (StopIteration)
    monkeypatch.setenv("MASTER_PORT", str(taken_port))
    with pytest.raises(RendezvousPortTaken, match=f"rank 0 could not listen on MASTER_PORT={taken_port}, set by its"):
        init_distributed(1)
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(name, value)  # rank 0 of two: the other rank was told this port
    with pytest.raises(RendezvousPortTaken, match="set by its launcher"):
        init_distributed(2)
    assert os.environ["MASTER_PORT"] == str(taken_port)


@pytest.mark.usefixtures("clean_env")
def test_other_rendezvous_failures_pass_through(monkeypatch: pytest.MonkeyPatch) -> None:
    import deepspeed

    def refuse(dist_backend: str) -> None:
        raise RuntimeError("gloo: no device to bind")

    monkeypatch.setattr(deepspeed, "init_distributed", refuse)
    _ports(monkeypatch, 12345)
    with pytest.raises(RuntimeError, match="^gloo: no device to bind$"):
        init_distributed(1)


def test_port_taken_reads_torch_and_ray_texts() -> None:
    assert port_taken("code: -98, name: EADDRINUSE, message: address already in use")
    assert port_taken("learner rank 0 failed to start: actors.learner.process_group.RendezvousPortTaken: rank 0 ...")
    assert port_taken(OSError(98, "Address already in use"))
    assert not port_taken("Connection refused") and not port_taken(RuntimeError("timed out"))
