"""A learner rank's torch.distributed process group: its launch variables and its start.

One process is one rank. Without launcher variables a one-process group is
made (RANK=0, WORLD_SIZE=1, MASTER_ADDR=127.0.0.1, a free local port); with
``WORLD_SIZE > 1`` every variable must be set by whoever starts the ranks
(``ray_jobs/runtime/learner_group.py``), and ``WORLD_SIZE`` must equal
``learner.world_size``. The group is NCCL with CUDA, else gloo.

The port race: a port is "free" when a socket bound to port 0 got it and
released it; nothing reserves it, and any process on the machine can take it
before rank 0's rendezvous store listens on it (seen in CI: EADDRINUSE on the
two-rank group's start). A one-process group whose port this process chose
picks another and starts again, up to ``PORT_ATTEMPTS`` times. Rank 0 of a
multi-rank group cannot: the other ranks were told the port. It raises
``RendezvousPortTaken``, and ``LearnerGroup`` starts the ranks again on a new
port. A port the user set is never changed: that is a one-line error.
"""

from __future__ import annotations

import logging
import os
import socket

import torch

log = logging.getLogger(__name__)

DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
PORT_ATTEMPTS = 3  # starts of a one-process group on fresh ports, and of a LearnerGroup's ranks


class RendezvousPortTaken(RuntimeError):
    """Rank 0 could not listen on ``MASTER_PORT``: another process holds it."""


def port_taken(error: BaseException | str) -> bool:
    """Whether an error (or its text, e.g. a Ray actor's creation failure) says a port was in use."""
    text = str(error)
    return RendezvousPortTaken.__name__ in text or "EADDRINUSE" in text or "address already in use" in text.lower()


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (bound to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_distributed_env() -> None:
    """Fill in the torch.distributed variables for a one-process group.

    Values already set are kept. With ``WORLD_SIZE`` unset or 1 the missing
    ones default to RANK=0, LOCAL_RANK=0, WORLD_SIZE=1, MASTER_ADDR=127.0.0.1
    and a free MASTER_PORT. With ``WORLD_SIZE > 1`` nothing is guessed (each
    rank would pick a different port): all five must be set.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        missing = [name for name in DIST_VARS if name not in os.environ]
        if missing:
            raise RuntimeError(
                f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set; "
                "the launcher of a multi-rank learner must set all of " + ", ".join(DIST_VARS)
            )
        return
    if os.environ.get("RANK", "0") != "0":
        raise RuntimeError(f"RANK={os.environ['RANK']} with WORLD_SIZE=1; set WORLD_SIZE for a multi-rank learner")
    defaults = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    for name, value in defaults.items():
        os.environ.setdefault(name, value)
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())


def check_world_size(world_size: int) -> None:
    """Fail early unless the launcher's ``WORLD_SIZE`` (1 when unset) is ``learner.world_size``."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != world_size:
        raise RuntimeError(
            f"learner.world_size={world_size} but this process was started with WORLD_SIZE={launched}; "
            "start multi-rank learners through ray_jobs.runtime.learner_group.LearnerGroup"
        )


def skip_shared_memory_op() -> None:
    """Keep DeepSpeed from compiling its shared-memory all-reduce op on CPU, which its first
    process-group init does in every fresh environment (about 55 s of CPU on our 2-core machine,
    cached under ``TORCH_EXTENSIONS_DIR``). Only ``inference_all_reduce`` uses that op; training's
    collectives go through the process group (gloo) with or without it. DeepSpeed builds it only
    when ``deepspeed.ops.__compatible_ops__`` says it is compatible, a dict it computes once and
    keeps, so the entry set here holds. With CUDA nothing changes."""
    if torch.cuda.is_available():
        return
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def init_distributed(world_size: int = 1) -> None:
    """Join (or create) the process group of ``world_size`` ranks: nccl with CUDA, gloo on CPU.

    Idempotent: a group that already exists in this process is reused. A port
    taken before the store listens: see the module docstring.
    """
    import deepspeed

    check_world_size(world_size)
    port_is_ours = "MASTER_PORT" not in os.environ and world_size == 1
    ensure_distributed_env()
    skip_shared_memory_op()
    for attempt in range(1, PORT_ATTEMPTS + 1):
        try:
            deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
            return
        except RuntimeError as exc:  # torch's DistNetworkError is one
            if not port_taken(exc):
                raise
            port = os.environ["MASTER_PORT"]
            if not port_is_ours:
                raise RendezvousPortTaken(
                    f"rank {os.environ['RANK']} could not listen on MASTER_PORT={port}, set by its launcher: "
                    "another process holds it"
                ) from exc
            if attempt == PORT_ATTEMPTS:
                raise RendezvousPortTaken(
                    f"could not listen on any of {PORT_ATTEMPTS} free ports in turn (the last {port}): "
                    "other processes took each before the process group bound it"
                ) from exc
            os.environ["MASTER_PORT"] = str(free_port())
            log.warning("MASTER_PORT=%s was taken after it was found free; trying %s", port, os.environ["MASTER_PORT"])
