"""Where a colocated run's actors go (``pipeline.placement: colocated``): generation on the
learner's device. Pure, like ``ray_jobs/runtime/placement.py`` (whose ``run_placement`` uses it).

- HF generation runs inside the learner's process (``actors/colocated.py``): the layout is the
  learner's own, one actor, and no rollout worker actor at all.
- A vLLM engine stays in its rollout worker actor, on the learner's GPU: one STRICT_PACK
  placement group of one bundle ``{CPU: learner.num_cpus + rollout.num_cpus_per_worker, GPU: 1}``
  (plus the worker's custom resources), in which ``rollout worker 0`` and ``learner rank 0``
  each ask ``COLOCATED_GPU_SHARE`` of the GPU. A bundle's GPU is one device, so Ray gives both
  actors the same one (the same ``CUDA_VISIBLE_DEVICES``); two actors each asking half a GPU
  outside a group would land on one device only by chance on a node of several.

Ray's fractions decide where actors run, never how much memory they use: the engine takes
``rollout.vllm.gpu_memory_utilization`` of the device, the learner what it allocates, and
``rollout.vllm.sleep_level`` lets them take turns (the dry run adds both up,
``ray_jobs/dry_run/``). The learner's ``learner.num_gpus`` (1) is the device they share;
``rollout.num_gpus_per_worker`` is not used.
"""

from __future__ import annotations

from actors.learner.config import LearnerConfig
from actors.rollout.worker import RolloutConfig
from ray_jobs.runtime.bundles import ActorSpec, GroupSpec, Placement, check_fits, nonzero

COLOCATED_GPU_SHARE = 0.5
"""What the learner rank and the vLLM engine's worker each ask of the GPU they share: half each,
so that together they ask exactly the bundle's one GPU and nothing else fits beside them."""

SHARED_GPU = "shared GPU"
"""The name of a colocated vLLM run's placement group."""


def shared_gpu_placement(learner: LearnerConfig, rollout: RolloutConfig) -> Placement:
    """The group ``shared GPU`` and its two actors, ``rollout worker 0`` and ``learner rank 0``
    (module docstring), in the order a run starts them."""
    bundle = nonzero({"CPU": learner.num_cpus + rollout.num_cpus_per_worker, "GPU": 1.0, **rollout.resources})
    group = GroupSpec(SHARED_GPU, (bundle,), "STRICT_PACK")
    worker = ActorSpec(
        "rollout worker 0", rollout.num_cpus_per_worker, COLOCATED_GPU_SHARE, dict(rollout.resources), SHARED_GPU, 0
    )
    rank = ActorSpec("learner rank 0", learner.num_cpus, COLOCATED_GPU_SHARE, group=SHARED_GPU, bundle=0)
    return check_fits(Placement((group,), (worker, rank)))
