"""The run directory's lifecycle: who may write it, what a checkpoint holds, where a run resumes.

Layout of a run directory::

    config.yaml  metrics.jsonl  samples.jsonl  judge_server.log  wandb/
    checkpoints/step-<N>/         N = learner steps completed (= policy version)
        learner/                  the learner's full training state (ray_jobs/runtime/learner_group.py)
        policy/                   the policy in Hugging Face format (or its LoRA adapter) + tokenizer
        driver.json               the driver's state (DriverState)
        manifest.json             step, config, package versions; written last
    final/                        the finished run's policy (a copy of the last checkpoint's policy/)
    .lock                         held (flock) by the one process writing the directory

Invariants:

* A checkpoint is written into ``checkpoints/.step-<N>.tmp-<pid>`` and renamed into
  place only once complete (manifest last), so ``step-<N>/`` exists only whole;
  a crash while writing leaves the previous checkpoints as they were.
* Only the newest ``run.keep_checkpoints`` are kept; the newest is never removed.
* Pure file logic: no Ray, no torch. ``ray_jobs/train.py`` drives it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ray_jobs.config.changes import changed_keys

CHECKPOINTS = "checkpoints"
_OUTPUTS = ("metrics.jsonl", "samples.jsonl", CHECKPOINTS, "final")
_PACKAGES = ("torch", "transformers", "peft", "deepspeed", "ray", "vllm", "relay")


class RunDirectoryError(RuntimeError):
    """The run directory cannot be used as asked (in use, or holds outputs the config would overwrite)."""


@dataclass
class DriverState:
    """What the driver needs, beside the learner's own state, to continue exactly.

    ``next_step`` is the first step not trained (= policy version). ``inflight_rows``
    holds, per batch launched but not trained, the dataset rows of its prompts (in
    launch order); on resume those batches are generated again for the same prompts
    with the checkpoint's weights, and ``source`` (the prompt source after the last
    launch) continues from there, so every prompt of an epoch is trained exactly once.
    ``rollout_rng`` are the rollout workers' torch RNG states (list of byte lists),
    ``counters`` the cumulative fault counters.
    """

    next_step: int
    source: dict[str, Any]
    inflight_rows: dict[int, list[int]] = field(default_factory=dict)
    rollout_rng: list[list[int]] = field(default_factory=list)
    counters: dict[str, float] = field(default_factory=dict)
    wandb_id: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> DriverState:
        raw = json.loads(text)
        raw["inflight_rows"] = {int(k): v for k, v in raw.get("inflight_rows", {}).items()}
        return cls(**raw)


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint directory and the step it was taken after."""

    step: int
    path: Path

    @property
    def learner_dir(self) -> Path:
        return self.path / "learner"

    @property
    def policy_dir(self) -> Path:
        return self.path / "policy"

    def manifest(self) -> dict[str, Any]:
        return json.loads((self.path / "manifest.json").read_text())

    def driver_state(self) -> DriverState:
        return DriverState.from_json((self.path / "driver.json").read_text())


def checkpoints(run_dir: Path) -> list[Checkpoint]:
    """The complete checkpoints under ``run_dir``, oldest first (partial ``.tmp`` ones are ignored)."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        name = path.name
        if name.startswith("step-") and name[5:].isdigit() and (path / "manifest.json").is_file():
            found.append(Checkpoint(int(name[5:]), path))
    return sorted(found, key=lambda c: c.step)


def load_checkpoint(path: Path) -> Checkpoint:
    """A checkpoint named by the user (``run.resume=<dir>``); one-line error if it is not one."""
    name = path.name
    if not (name.startswith("step-") and name[5:].isdigit() and (path / "manifest.json").is_file()):
        raise RunDirectoryError(
            f"run.resume: {path} is not a checkpoint directory (checkpoints/step-<N>/ with a manifest.json)"
        )
    return Checkpoint(int(name[5:]), path)


def has_outputs(run_dir: Path) -> bool:
    return any((run_dir / name).exists() for name in _OUTPUTS)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a checkpoint depends on (absent ones left out)."""
    from importlib import metadata

    versions = {}
    for name in _PACKAGES:
        for dist in (name, f"{name}-cpu"):
            try:
                versions[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


def write_checkpoint(
    run_dir: Path, step: int, config: dict, state: DriverState, fill: Callable[[Path], None], keep: int
) -> tuple[Checkpoint, float]:
    """Write checkpoint ``step`` atomically; returns it and the seconds it took.

    ``fill(tmp_dir)`` writes the learner and policy parts into the temporary
    directory; the driver state and the manifest follow, then one rename makes
    it visible. Older checkpoints beyond the newest ``keep`` are then removed.
    """
    start = time.perf_counter()
    root = run_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".step-{step}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    fill(tmp)
    (tmp / "driver.json").write_text(state.to_json())
    manifest = {
        "step": step,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "packages": package_versions(),
        "config": config,
    }
    _write_synced(tmp / "manifest.json", json.dumps(manifest, indent=1))
    if final.exists():  # the same step again (a learner restart replayed it): the newer one wins
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    for old in checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old.path, ignore_errors=True)
    return Checkpoint(step, final), time.perf_counter() - start


def _write_synced(path: Path, text: str) -> None:
    with path.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def publish_final(checkpoint: Checkpoint, run_dir: Path) -> Path:
    """``final/`` as a copy of the checkpoint's policy, replaced atomically."""
    target = run_dir / "final"
    tmp = run_dir / f".final.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(checkpoint.policy_dir, tmp)
    if target.exists():
        shutil.rmtree(target)
    os.rename(tmp, target)
    return target


@dataclass(frozen=True)
class ResumePlan:
    """What this invocation does with the run directory.

    ``action``: ``fresh`` (start at step 0), ``resume`` (continue after ``checkpoint``)
    or ``finished`` (the run already reached ``run.steps``: nothing to do).
    """

    action: str
    checkpoint: Checkpoint | None = None


def plan_resume(run_dir: Path, resume: str, steps: int, config: dict) -> ResumePlan:
    """Decide from the run directory and ``run.resume`` (auto | never | <checkpoint dir>).

    Raises ``RunDirectoryError`` (one line, naming the choices) when the directory
    holds outputs this run would overwrite, and ``ConfigError``-like
    ``RunDirectoryError`` when a key that may not change on resume did.
    """
    if resume not in ("auto", "never"):
        chosen = load_checkpoint(Path(resume))
        if has_outputs(run_dir) and chosen.path.parent.parent.resolve() != run_dir.resolve():
            raise RunDirectoryError(
                f"run.resume={resume}: the run directory {run_dir} already holds a run; "
                "resume from another run's checkpoint into a new run.output_dir"
            )
        newest = checkpoints(run_dir)
        if newest and newest[-1].step != chosen.step:
            raise RunDirectoryError(
                f"run.resume={resume} is not the newest checkpoint of {run_dir} "
                f"(step-{newest[-1].step}); continuing from it would discard later steps"
            )
        return _checked(chosen, steps, config)
    found = checkpoints(run_dir)
    if resume == "never" and has_outputs(run_dir):
        raise RunDirectoryError(
            f"run directory {run_dir} already holds a run and run.resume=never: set "
            "run.resume=auto to continue it, or choose another run.name / run.output_dir"
        )
    if found:
        return _checked(found[-1], steps, config)
    if has_outputs(run_dir):
        raise RunDirectoryError(
            f"run directory {run_dir} holds outputs of a run that wrote no checkpoint; "
            "nothing to resume from: delete it, or choose another run.name / run.output_dir"
        )
    return ResumePlan("fresh")


def _checked(checkpoint: Checkpoint, steps: int, config: dict) -> ResumePlan:
    changed = changed_keys(checkpoint.manifest()["config"], config)
    if changed:
        raise RunDirectoryError(
            f"cannot resume {checkpoint.path}: these keys differ from the checkpoint's config "
            f"and would make it a different experiment: {', '.join(changed)} "
            "(keep them, or start a new run.output_dir)"
        )
    return ResumePlan("finished" if checkpoint.step >= steps else "resume", checkpoint)


class RunLock:
    """An exclusive ``flock`` on ``<run dir>/.lock`` for the life of the run.

    The kernel drops it when the process dies, however it dies, so a killed run
    never leaves the directory locked.
    """

    def __init__(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / ".lock"
        self._file = self.path.open("a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            raise RunDirectoryError(
                f"run directory {run_dir} is in use by a running job ({holder}); wait for it "
                "to finish or stop, or choose another run.name / run.output_dir"
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()}")
        self._file.flush()

    def release(self) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()


def truncate_jsonl(path: Path, next_step: int) -> int:
    """Keep only the lines of steps ``< next_step`` (written before the checkpoint); atomic.

    Returns the number of lines dropped (those written after the checkpoint, before a crash).
    A torn last line (a crash mid-write) is dropped too.
    """
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            dropped += 1
            continue
        if step < next_step:
            kept.append(line)
        else:
            dropped += 1
    tmp = path.with_name(path.name + ".tmp")
    _write_synced(tmp, "".join(line + "\n" for line in kept))
    os.replace(tmp, path)
    return dropped
