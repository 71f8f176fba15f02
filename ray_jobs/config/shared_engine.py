"""Checks of a vLLM engine that shares the learner's GPU (``pipeline.placement: colocated``) and of
its sleep mode (``rollout.vllm.sleep_level``), before anything starts (``ExperimentConfig``)."""

from __future__ import annotations

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
