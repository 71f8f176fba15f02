"""Scratch files and directories named by the process that owns them, ``<prefix>-<pid>-<random>``.

A process that is SIGKILLed (a rollout worker the driver restarts, a driver killed with its job)
cannot remove what it wrote to ``/dev/shm``, which is memory: a vLLM worker's weight-staging
directory holds a full copy of the model. The next process to create an entry of the same prefix
in the same directory removes the entries whose owner is gone.

Invariant: an entry whose pid names a live process of this node is never removed (a reused pid
keeps a dead owner's entry, never the other way round); names without a pid are left alone.
``/dev/shm`` is per node (per container), so the pid is checked on the node that wrote it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def owner_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this node (signal 0 checks, sends nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def remove_orphans(directory: Path, prefix: str) -> list[Path]:
    """Remove the entries ``<prefix>-<pid>-*`` of ``directory`` whose process is gone; return them."""
    removed = []
    for path in directory.glob(f"{prefix}-*-*"):
        pid = path.name[len(prefix) + 1 :].split("-", 1)[0]
        if not pid.isdigit() or owner_alive(int(pid)):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def owned_dir(directory: Path, prefix: str) -> tuple[Path, list[Path]]:
    """A new directory ``<prefix>-<this pid>-<random>`` in ``directory``, after removing the entries
    of that prefix left by processes that are gone; returns it and what was removed."""
    removed = remove_orphans(directory, prefix)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}-{os.getpid()}-", dir=directory)), removed
