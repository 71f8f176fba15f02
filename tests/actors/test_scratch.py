"""Scratch entries named by their owner's pid: what a killed process left is removed, a live one's never."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from actors.scratch import owned_dir, owner_alive, remove_orphans


def _gone_pid() -> int:
    """The pid of a process that has exited."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_entries_of_gone_processes_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    gone = _gone_pid()
    assert not owner_alive(gone) and owner_alive(os.getpid()) and owner_alive(1)
    dead_file = tmp_path / f"relay-x-{gone}-abc"
    dead_dir = tmp_path / f"relay-x-{gone}-def"
    live = tmp_path / f"relay-x-{os.getpid()}-ghi"
    unnamed = tmp_path / "relay-x-nopid"  # the old unnamed form: whose it is cannot be told
    other = tmp_path / f"relay-y-{gone}-jkl"  # another prefix
    dead_file.write_bytes(b"\x01")
    (dead_dir / "v3").mkdir(parents=True)
    (dead_dir / "v3" / "model.safetensors").write_bytes(b"weights")
    for path in (live, unnamed, other):
        path.mkdir()
    assert sorted(remove_orphans(tmp_path, "relay-x")) == sorted([dead_file, dead_dir])
    assert not dead_file.exists() and not dead_dir.exists()
    assert live.exists() and unnamed.exists() and other.exists()


def test_a_new_owned_directory_clears_the_orphans_first(tmp_path: Path) -> None:
    gone = _gone_pid()
    orphan = tmp_path / f"relay-weights-{gone}-abc"
    (orphan / "v10").mkdir(parents=True)
    made, removed = owned_dir(tmp_path, "relay-weights")
    assert removed == [orphan] and not orphan.exists()
    assert made.is_dir() and made.name.startswith(f"relay-weights-{os.getpid()}-")
    again, removed = owned_dir(tmp_path, "relay-weights")  # this process's own is live: kept
    assert removed == [] and made.is_dir() and again != made
