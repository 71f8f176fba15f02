"""Training runs as separate processes that tests can kill, what they left behind, and this test's own
Ray actor processes (to signal them)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def train_overrides(out: Path, cache_dir: str, *overrides: str) -> list[str]:
    """The overrides of a test run into ``out`` (``train_command``'s, for a run in this process)."""
    return [f"run.output_dir={out}", f"model.cache_dir={cache_dir}", "wandb.mode=disabled", *overrides]


def train_command(out: Path, cache_dir: str, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "ray_jobs.train", *train_overrides(out, cache_dir, *overrides)]


class TrainProcess:
    """``python -m ray_jobs.train`` in its own session (process group), output to ``log``.

    Killing it kills the whole session: the driver, the local Ray it started and the
    stand-in judge, as a cluster scheduler's kill of the job's process group does.
    """

    def __init__(self, cmd: list[str], log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.log = log
        with log.open("a") as f:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def wait_for_step(self, metrics: Path, lines: int, timeout_s: float = 300) -> None:
        """Until ``metrics`` has at least ``lines`` lines (steps) written."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"run ended (rc {self.proc.returncode}) before step {lines}:\n{self.tail()}")
            if metrics.exists() and len(metrics.read_text().splitlines()) >= lines:
                return
            time.sleep(0.05)
        raise AssertionError(f"no step {lines} within {timeout_s} s:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL the whole session at once, then make sure nothing of it is left."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)
        reap_session(self.proc.pid)

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def session_processes(sid: int) -> list[int]:
    """PIDs still alive in session ``sid`` (Ray's agents may outlive a killed driver)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid and "zombie" not in (entry / "status").read_text().lower():
                    pids.append(int(entry.name))
            except (ProcessLookupError, PermissionError, FileNotFoundError):
                continue
    return pids


def reap_session(sid: int) -> None:
    for pid in session_processes(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_to_end(cmd: list[str], log: Path, timeout_s: float = 600) -> None:
    proc = TrainProcess(cmd, log)
    try:
        rc = proc.proc.wait(timeout=timeout_s)
    finally:
        reap_session(proc.proc.pid)
    assert rc == 0, proc.tail()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_complete(out: Path, steps: int, samples_per_step: int) -> tuple[list[dict], list[dict]]:
    """Every step once in metrics.jsonl, each step's full batch once in samples.jsonl."""
    metrics, samples = read_jsonl(out / "metrics.jsonl"), read_jsonl(out / "samples.jsonl")
    assert [m["step"] for m in metrics] == list(range(steps))
    per_step = Counter(s["step"] for s in samples)
    assert per_step == {step: samples_per_step for step in range(steps)}
    groups = Counter((s["step"], s["group_id"]) for s in samples)
    assert len(set(groups.values())) == 1  # no group duplicated or cut short
    return metrics, samples


def _ours(pid: int) -> bool:
    """Whether ``pid`` descends from this process (the Ray this test's driver started), not from
    another test process's Ray running beside it."""
    me = os.getpid()
    while pid > 1:
        try:
            stat = (Path("/proc") / str(pid) / "stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the parent's pid (after the command name)
        if pid == me:
            return True
    return False


def own_processes(title: str) -> list[int]:
    """PIDs of this test's processes whose command line starts with ``title`` (Ray names actor
    processes ray::<Class>)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(title.encode()) and _ours(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def signal_first(title: str, signum: int) -> None:
    """Send ``signum`` to the first process titled ``title`` (there must be one)."""
    pids = own_processes(title)
    assert pids, f"no {title} process"
    os.kill(pids[0], signum)


def kill_rollout_worker() -> None:
    signal_first("ray::RolloutWorker", signal.SIGKILL)


def _inject(metrics: Path, faults: list[tuple[int, Callable[[], None]]], errors: list[BaseException]) -> None:
    """At each (step, fault): once ``metrics`` has that many lines, inject the fault."""
    try:
        for step, fault in faults:
            while not metrics.exists() or len(metrics.read_text().splitlines()) < step:
                time.sleep(0.05)
            fault()
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)


def run_with_faults(out: Path, cache_dir: str, steps: int, faults, *overrides: str) -> list[dict]:
    """``ray_jobs.train.run`` in this process while a thread injects ``faults`` (step, fault) as the
    steps complete; every step must still train its full batch."""
    from ray_jobs.config.experiment import load_config
    from ray_jobs.train import run

    errors: list[BaseException] = []
    injector = threading.Thread(target=_inject, args=(out / "metrics.jsonl", faults, errors), daemon=True)
    injector.start()
    run(
        load_config(
            None,
            [
                f"run.output_dir={out}",
                f"model.cache_dir={cache_dir}",
                "wandb.mode=disabled",
                f"run.steps={steps}",
                "run.checkpoint_every=0",
                "pipeline.max_staleness=2",
                *overrides,
            ],
        )
    )
    injector.join(timeout=5)
    assert not errors, errors
    metrics, _ = check_complete(out, steps, 8 * 4)
    assert all(m["samples/generated"] == m["samples/trained"] == 32 for m in metrics)
    return metrics


def kill_and_resume(out: Path, cache_dir: str, kills: list[int], *overrides: str) -> None:
    """Run, SIGKILL at each step in ``kills`` (steps completed, as metrics lines), then run to the end."""
    cmd = train_command(out, cache_dir, *overrides)
    log = out.with_suffix(".log")
    for kill_at in kills:
        proc = TrainProcess(cmd, log)
        proc.wait_for_step(out / "metrics.jsonl", kill_at)
        proc.kill()
    run_to_end(cmd, log)
    assert log.read_text().count("resumed from") == len(kills)
