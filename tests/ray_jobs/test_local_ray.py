"""``ray_jobs.runtime.ray_session.init_local_ray``, the private local Ray every job starts without ``RAY_ADDRESS``:
the repository reaches the actors through the environment Ray's processes inherit, the job has no
runtime env, and so an actor can start in one of the Python workers Ray has ready."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from ray_jobs.runtime import ray_session as session

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("before", [None, "/elsewhere"], ids=["unset", "set"])
def test_the_repository_goes_first_on_the_inherited_path_and_this_process_keeps_its_own(
    monkeypatch, before: str | None
) -> None:
    if before is None:
        monkeypatch.delenv("PYTHONPATH", raising=False)
    else:
        monkeypatch.setenv("PYTHONPATH", before)
    seen: dict = {}

    def fake_init(**kwargs) -> None:
        seen.update(kwargs, pythonpath=os.environ.get("PYTHONPATH"))

    monkeypatch.setattr(session.ray, "init", fake_init)
    session.init_local_ray(0.5)
    assert seen["pythonpath"] == str(REPO_ROOT) + ("" if before is None else os.pathsep + before)
    assert "runtime_env" not in seen and seen["address"] == "local"
    assert seen["num_cpus"] == (os.cpu_count() or 1)  # at least one logical CPU per core
    assert os.environ.get("PYTHONPATH") == before

    def failing_init(**kwargs) -> None:
        raise RuntimeError("no Ray")

    monkeypatch.setattr(session.ray, "init", failing_init)
    with pytest.raises(RuntimeError, match="no Ray"):
        session.init_local_ray(64)
    assert os.environ.get("PYTHONPATH") == before  # restored when Ray does not start, too


@pytest.fixture
def fresh_local_ray() -> Iterator[None]:
    """A Ray of its own: the test needs one whose ready workers no earlier test took."""
    session.init_local_ray(2)
    yield
    ray.shutdown()


def _start_time(pid: int) -> float:
    """When process ``pid`` started, in seconds since the epoch (from /proc)."""
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    boot = next(
        float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
    )
    return boot + ticks / os.sysconf("SC_CLK_TCK")


@ray.remote(num_cpus=1)
class _Probe:
    def facts(self) -> tuple[int, str, str]:
        import ray_jobs

        return os.getpid(), os.environ["PYTHONPATH"], ray_jobs.__file__


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads process start times from /proc")
def test_an_actor_starts_in_a_worker_ray_had_ready(fresh_local_ray) -> None:
    import time

    assert ray.get_runtime_context().runtime_env == {}
    asked = time.time()
    pid, pythonpath, module = ray.get(_Probe.remote().facts.remote())
    assert pythonpath.split(os.pathsep)[0] == str(REPO_ROOT) and module.startswith(str(REPO_ROOT))
    # with a job runtime env (as before) the actor waited for a process started after it was asked for
    assert _start_time(pid) < asked - 0.05
