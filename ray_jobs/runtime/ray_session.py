"""A job's Ray session: join ``RAY_ADDRESS``'s cluster or start a private local Ray, check that it
has what the job's actors reserve, and leave it at the end. Every job (RL, SFT, preference,
evaluation) runs inside ``ray_session``."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import ray

log = logging.getLogger("relay.ray")


@contextlib.contextmanager
def ray_session(cpus: float, gpus: float = 0.0) -> Iterator[None]:
    """Join ``RAY_ADDRESS``'s cluster or start a private local Ray with at least ``cpus`` CPUs
    (what the job's actors reserve), and leave it at the end; a Ray this process already joined
    (tests, notebooks) is used as it is and left running.

    Fails early, instead of waiting forever, when the cluster has fewer than ``cpus`` CPUs or
    ``gpus`` GPUs.
    """
    joined = ray.is_initialized()
    if joined:
        log.info("using the Ray session this process already joined")
    else:
        start_ray(cpus)
    try:
        have = ray.cluster_resources()
        if have.get("CPU", 0) < cpus or have.get("GPU", 0) < gpus:
            raise ClusterResourcesError(
                f"the Ray cluster has {have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs; this config "
                f"reserves {cpus:g} CPUs and {gpus:g} GPUs (rollout.num_workers, rollout.num_*_per_worker, "
                "rollout.vllm.tensor_parallel_size, learner.world_size, learner.num_cpus, learner.num_gpus)"
            )
        yield
    finally:
        if not joined:
            ray.shutdown()  # stops a local instance; only disconnects from a cluster


def start_ray(cpus: float) -> None:
    """Join ``RAY_ADDRESS``'s cluster (``ray job submit`` sets it and ships the working dir) or
    start a private local Ray with at least ``cpus`` CPUs (``init_local_ray``)."""
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
    else:
        init_local_ray(cpus)


def init_local_ray(cpus: float) -> None:
    """Start a private local Ray with at least ``cpus`` logical CPUs (at least one per core).

    The repository reaches the actors on the PYTHONPATH that Ray's processes inherit from this
    one, not through a job ``runtime_env``: Ray places an actor in one of the Python workers it
    starts ahead of time only when the job has no runtime env, so with one the first actors wait
    for fresh processes while the ready ones sit idle.
    """
    repo_root = str(Path(__file__).resolve().parents[2])
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = repo_root + (os.pathsep + before if before else "")
    try:
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(cpus + 0.999)), include_dashboard=False)
    finally:  # Ray's processes have inherited it; this process's environment is left as it was
        if before is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = before


class ClusterResourcesError(RuntimeError):
    """The Ray cluster cannot place the actors this config asks for."""
