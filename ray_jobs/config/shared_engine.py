"""Checks of generation that shares the learner's device (``pipeline.placement: colocated``): the
layout (``colocation_blocker``), and a vLLM engine on the learner's GPU with its sleep mode
(``rollout.vllm.sleep_level``, ``shared_engine_blocker``), before anything starts (``ExperimentConfig``)."""

from __future__ import annotations

from actors.learner.config import LearnerConfig
from actors.rollout.worker import RolloutConfig


def shared_engine_blocker(
    colocated: bool, rollout: RolloutConfig, adapter_sync: bool, transport: str, backend: str
) -> str | None:
    """Why these settings cannot work (None: they can). ``transport``/``backend``: ``weight_sync``'s."""
    level, vllm = rollout.vllm.sleep_level, rollout.backend == "vllm"
    if level > 0 and not vllm:
        return f"rollout.vllm.sleep_level {level} needs rollout.backend: vllm (only a vLLM engine sleeps)"
    if level > 0 and not colocated:
        return (
            f"rollout.vllm.sleep_level {level} needs pipeline.placement: colocated "
            "(an engine on a GPU of its own has no learner to make room for)"
        )
    if level == 2 and adapter_sync:
        return (
            "rollout.vllm.sleep_level 2 drops the engine's weights, and with LoRA adapter sync only adapters "
            "come back: use sleep_level 1 (the base weights wait in CPU memory) or weight_sync.payload: full"
        )
    if not (colocated and vllm):
        return None
    if rollout.vllm.tensor_parallel_size != 1:
        return "pipeline.placement: colocated needs rollout.vllm.tensor_parallel_size 1 (one GPU, shared)"
    if transport == "broadcast" and backend != "gloo":
        return (
            "pipeline.placement: colocated with rollout.backend vllm cannot broadcast weights over NCCL "
            "(the learner and the engine share one GPU, and NCCL refuses two ranks on one device): "
            "use weight_sync.transport: object_store"
        )
    return None


def colocation_blocker(learner: LearnerConfig, rollout: RolloutConfig) -> str | None:
    """Why generation cannot share the learner's device with these sections (None: it can)."""
    if learner.world_size != 1:
        return f"needs learner.world_size 1 (got {learner.world_size}): generation shares one learner's device"
    if rollout.num_workers != 1:
        return f"needs rollout.num_workers 1 (got {rollout.num_workers}): one engine shares the learner's device"
    if rollout.backend == "vllm" and learner.num_gpus < 1:
        return "with rollout.backend vllm needs a GPU (learner.num_gpus: 1); on CPU use rollout.backend hf"
    if rollout.backend == "hf" and learner.backend != "torch":
        return "with rollout.backend hf needs learner.backend torch (generation runs on its policy module)"
    return None
