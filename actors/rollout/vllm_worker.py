"""Code that runs inside vLLM's worker process (``worker_extension_cls``).

vLLM mixes ``RelayWorkerExtension`` into its GPU/CPU worker, and the rollout
backend calls these methods through ``engine.collective_rpc(name, args)``, so
the weights never pass through the engine's request path. Arguments are small
(a file path, process-group coordinates): vLLM's RPC cannot carry tensors on
CPU, so full weights arrive as a safetensors file staged in shared memory, or
over a process group (``actors/weights/broadcast.py``).

Importing this module on a CPU platform turns vLLM's weight prepacking off
(oneDNN / AMX kernels): prepacking replaces each linear layer's weight with an
opaque packed copy and empties the parameter, so in-place updates would be
silently ignored. vLLM imports the extension before it loads the model.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)


def _keep_plain_cpu_weights() -> None:
    """Make vLLM's CPU linear layers keep their ``weight`` parameter (see module docstring)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    import vllm._custom_ops as ops
    import vllm.model_executor.layers.utils as layer_utils

    ops._supports_onednn = False
    layer_utils.check_cpu_sgl_kernel = lambda *args, **kwargs: False


_keep_plain_cpu_weights()


class RelayWorkerExtension:
    """Weight loading for RL: mixed into vLLM's worker (``self.model_runner`` is vLLM's)."""

    model_runner: Any
    rank: int  # vLLM's worker rank within its engine (WorkerBase.rank)

    def relay_load_weights(self, path: str) -> int:
        """Load full weights (Hugging Face names) from a safetensors file, in place.

        Returns the number of tensors read. vLLM's loader maps names onto its
        fused layers (q/k/v into qkv_proj, gate/up into gate_up_proj) and keeps
        tied embeddings tied.
        """
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            names = list(f.keys())
            self.model_runner.model.load_weights(weights=((name, f.get_tensor(name)) for name in names))
        return len(names)

    def relay_join_weight_group(self, host: str, port: int, first_rank: int, world_size: int, backend: str) -> None:
        """Join the learner's weight-broadcast process group at ``first_rank`` plus this worker's
        rank in its engine (``self.rank``: 0 with one process, the shard 0..t-1 with tensor
        parallelism t), so every shard of every engine has a rank of its own (``group_ranks``)."""
        from actors.weights.broadcast import join_group

        rank = first_rank + self.rank
        self._relay_group = join_group(host, port, rank, world_size, backend, self._relay_device())

    def relay_receive_weights(self, plan: list[list[tuple[str, str, list[int]]]]) -> int:
        """Receive one broadcast of full weights, bucket by bucket, and load them.

        ``plan`` is the sender's bucket layout (name, dtype, shape per tensor);
        returns the number of tensors loaded. The buckets stream into a single
        ``load_weights`` call (one bucket in memory at a time): vLLM checks per
        call that a tied alias (``lm_head.weight``) comes with its canonical
        weight (``model.embed_tokens.weight``), and a plan puts them in
        different buckets whenever it has more than one.
        """
        from actors.weights.broadcast import receive_buckets

        buckets = receive_buckets(self._relay_group, plan, self._relay_device())
        self.model_runner.model.load_weights(weights=(named for bucket in buckets for named in bucket))
        return sum(len(bucket) for bucket in plan)

    def _relay_device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
