"""DeepSpeed learner backend: the model and AdamW inside a ZeRO-2/3 engine.

Honours the ``LearnerBackend`` contract of ``actors/learner/config.py``: the caller
runs ``backward`` once per micro-batch (each loss already scaled by its share
of the batch) and then one ``step``. The number of micro-batches may differ
from step to step, so DeepSpeed's own accumulation counter (a fixed
``gradient_accumulation_steps``) cannot mark the boundary. Instead the engine
runs with ``managed_gradient_accumulation: false`` (DeepSpeed >= 0.19): every
``engine.backward`` only accumulates (ZeRO-2/3 reduce and partition each
micro-batch's gradients into the running sum) and every ``engine.step`` is the
boundary (finalise, clip, update, zero). ``gradient_accumulation_steps`` stays
1 and ``backward`` passes ``scale_wrt_gas=False``, so DeepSpeed never rescales
the caller's loss.

Distributed setup (``actors/learner/process_group.py``): one process is one rank, in
a one-process group of its own or one of ``WORLD_SIZE`` ranks started by
``ray_jobs/runtime/learner_group.py``. DeepSpeed selects the device
``cuda:LOCAL_RANK``. Every rank must call every method, in
the same order: ``backward`` (gradient reduction) and ``step`` always are
collective; under ZeRO-3 so are every forward, ``full_state_dict``,
``save_pretrained`` and ``reference_logits``.

Optimiser offload (``learner.offload_optimizer``): ZeRO keeps the fp32 master
weights and the Adam moments on the CPU and runs the update there. The
optimiser stays torch's AdamW (``torch_adam``), which needs
``zero_force_ds_cpu_optimizer: false``: DeepSpeed otherwise insists on its
CPUAdam, a C++ op compiled on first use (about 40 s and 2 GB of RAM). On GPU
that CPUAdam is several times faster for big models; torch's AdamW is exact
and needs no compiler.

Reference policy (``reference=True``, for the KL term): with LoRA it is the
engine's own model with the adapters disabled (peft's ``disable_adapter``), so
no second copy exists. Without LoRA it is a separate frozen module with no
optimiser: under ZeRO-2 a plain copy on the engine's device (ZeRO-2 does not
partition parameters, so neither does this); under ZeRO-3 a second DeepSpeed
engine with the same stage-3 config minus the optimiser, so its parameters are
partitioned across ranks like the policy's and gathered layer by layer in the
forward. Its cost is one more model's worth of (partitioned) parameters.

LR schedule and checkpoints: the scheduler (``actors/learner/state.py``) is
given to ``deepspeed.initialize`` as a callable on the optimiser, so the
engine steps it once per applied ``engine.step`` (not after a step skipped
for a non-finite norm) and saves and loads it with its checkpoint.
``save_checkpoint`` is DeepSpeed's own sharded ``engine.save_checkpoint``
under tag ``CHECKPOINT_TAG``: ``latest``, ``zero_to_fp32.py`` and in
``deepspeed/`` the model states (ZeRO-2: ``mp_rank_00_model_states.pt`` from
rank 0; ZeRO-3: ``zero_pp_rank_<r>_mp_rank_00_model_states.pt`` from every
rank) and every rank's ``[bf16_]zero_pp_rank_<r>_mp_rank_00_optim_states.pt``
(its fp32 master partition and Adam moments). The caller's ``extra`` rides
in the model states as ``client_state["relay"]``. With LoRA the frozen base
weights are left out (``exclude_frozen_parameters``; the fresh engine has
them) and the module loads non-strictly.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch

from actors.learner.config import LearnerConfig, prepare_policy, reference_forward
from actors.learner.process_group import init_distributed
from actors.learner.state import build_lr_scheduler
from actors.model.loading import CausalLM, default_device, load_causal_lm, resolve_attention, resolve_dtype
from actors.model.logprobs import LogprobSettings
from actors.weights.sync import adapter_state_dict, merged_state_dict

logger = logging.getLogger(__name__)

_NEVER_PRINT = 2**31 - 1  # steps_per_print: DeepSpeed's progress log stays silent
CHECKPOINT_TAG = "deepspeed"  # one checkpoint per directory: a fixed tag


ZERO_BUCKET_ELEMENTS = 500_000_000  # DeepSpeed's default reduce/all-gather bucket (2 GB of fp32)


def deepspeed_config(learner: LearnerConfig, dtype: str, num_params: int | None = None) -> dict[str, Any]:
    """The DeepSpeed config dict for ``learner`` (pure; no DeepSpeed import).

    ``num_params`` (the model's parameter count) caps ZeRO's communication buckets
    at the model's size: DeepSpeed allocates each bucket whole (2 GB of fp32 by
    default), which for a model smaller than that is memory reserved for nothing.

    Invariants: one micro-batch per rank and ``gradient_accumulation_steps = 1``
    with ``managed_gradient_accumulation = false`` (the caller owns
    accumulation; see the module docstring); AdamW is torch's (no op to
    compile), also with ``offload_optimizer`` (state and update on the CPU);
    ``gradient_clipping`` is ``learner.max_grad_norm``; bf16 mixed precision
    (fp32 master weights in the optimiser) iff ``dtype == "bfloat16"``.
    """
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"deepspeed backend supports dtype float32 or bfloat16, got {dtype!r}")
    zero: dict[str, Any] = {"stage": learner.zero_stage}
    if num_params is not None and num_params < ZERO_BUCKET_ELEMENTS:
        bucket = max(num_params, 1)
        zero.update(
            {"reduce_bucket_size": bucket, "allgather_bucket_size": bucket}
            if learner.zero_stage == 2
            else {"reduce_bucket_size": bucket, "stage3_prefetch_bucket_size": bucket}
        )
    offload: dict[str, Any] = {}
    if learner.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
        offload["zero_force_ds_cpu_optimizer"] = False  # keep torch's AdamW: no op to compile
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,
        "zero_optimization": zero,
        **offload,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "torch_adam": True,
                "lr": learner.lr,
                "betas": list(learner.betas),
                "weight_decay": learner.weight_decay,
            },
        },
        "gradient_clipping": learner.max_grad_norm,
        "bf16": {"enabled": dtype == "bfloat16"},
        "steps_per_print": _NEVER_PRINT,
        "wall_clock_breakdown": False,
    }


class DeepSpeedLearnerBackend:
    """A DeepSpeed ZeRO engine over the policy (LoRA adapters optional).

    Invariants: ``model`` is the engine (forward through it so ZeRO-3 gathers
    parameters and DeepSpeed's backward hooks run); only parameters with
    ``requires_grad`` (the adapters, with LoRA) are in the optimiser; between
    two ``step`` calls gradients only accumulate, summed over this rank's
    backwards and averaged over ranks; ``rank``/``world_size`` are the default
    process group's, and ``world_size == learner.world_size``.
    """

    def __init__(
        self,
        model_path: str,
        dtype: str,
        learner: LearnerConfig,
        reference: bool = False,
        lr_horizon: int | None = None,
        attention: str = "auto",
    ) -> None:
        import deepspeed

        init_distributed(learner.world_size)
        dtype = resolve_dtype(dtype, default_device())
        attention = resolve_attention(attention, default_device())
        self.compute_dtype = self.param_dtype = dtype  # bf16: DeepSpeed keeps the fp32 masters itself
        self.logprobs = LogprobSettings(learner.logprob_chunk_tokens, recompute=learner.zero_stage != 3)
        module = prepare_policy(load_causal_lm(model_path, dtype, attention), learner)
        config = deepspeed_config(learner, dtype, sum(p.numel() for p in module.parameters()))
        params = [p for p in module.parameters() if p.requires_grad]

        def scheduler(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
            return build_lr_scheduler(
                optimizer, learner.lr_scheduler, learner.warmup_steps, learner.warmup_ratio, lr_horizon
            )

        engine, _, _, _ = deepspeed.initialize(
            model=module, model_parameters=params, config=config, lr_scheduler=scheduler
        )
        self.engine = engine
        self.model: torch.nn.Module = engine
        self.device = engine.device
        self.rank = int(torch.distributed.get_rank())
        self.world_size = int(torch.distributed.get_world_size())
        self.zero_stage = learner.zero_stage
        self.lora = learner.lora.enabled
        self.has_reference = reference
        self.reference: torch.nn.Module | None = None
        if reference and not self.lora:
            self.reference = self._frozen_reference(model_path, dtype, attention, config)
        self._pending_backwards = 0

    def _frozen_reference(self, model_path: str, dtype: str, attention: str, config: dict[str, Any]) -> torch.nn.Module:
        """The initial policy, frozen: a plain copy (ZeRO-2) or an optimiser-less ZeRO-3 engine."""
        import deepspeed

        module = load_causal_lm(model_path, dtype, attention).eval().requires_grad_(False)
        if self.zero_stage != 3:
            return module.to(self.device)
        ref_config = {k: v for k, v in config.items() if k not in ("optimizer", "gradient_clipping")}
        engine, _, _, _ = deepspeed.initialize(model=module, config=ref_config)
        engine.eval()
        return engine

    @property
    def module(self) -> CausalLM:
        """The wrapped Hugging Face (or peft) model; its parameters are partitioned under ZeRO-3."""
        return self.engine.module

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate the gradients of ``loss`` (already scaled by the caller)."""
        self.engine.backward(loss, scale_wrt_gas=False)
        self._pending_backwards += 1

    def step(self) -> float:
        """Clip, update and zero the gradients; return the pre-clip global norm.

        The norm is NaN only if DeepSpeed computed none (never with this
        config: ``zero_optimization.compute_grad_norm`` stays on). A non-finite
        gradient norm makes DeepSpeed skip the update (weights unchanged) and
        report ``inf``; this is logged as a warning.
        """
        if self._pending_backwards == 0:
            raise RuntimeError("step() without a backward(): there are no gradients to apply")
        self.engine.step()
        self._pending_backwards = 0
        norm = self.engine.get_global_grad_norm()
        if not self.engine.was_step_applied():
            logger.warning("DeepSpeed skipped the optimiser step: non-finite gradient norm %s", norm)
        return float("nan") if norm is None else float(norm)

    def learning_rate(self) -> float:
        return float(self.engine.get_lr()[0])

    def save_checkpoint(self, path: str, extra: dict) -> None:
        """DeepSpeed's sharded checkpoint (collective: every rank writes its shard; ends in a barrier)."""
        self.engine.save_checkpoint(
            path, tag=CHECKPOINT_TAG, client_state={"relay": extra}, exclude_frozen_parameters=self.lora
        )

    def load_checkpoint(self, path: str) -> dict:
        """Collective; needs the pristine engine of a fresh backend (ZeRO-3 cannot reload in place)."""
        loaded, client_state = self.engine.load_checkpoint(
            path,
            tag=CHECKPOINT_TAG,
            load_module_strict=not self.lora,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        if loaded is None or "relay" not in (client_state or {}):
            raise ValueError(f"{path} holds no DeepSpeed learner checkpoint under tag {CHECKPOINT_TAG!r}")
        return client_state["relay"]

    @contextlib.contextmanager
    def _full_parameters(self) -> Iterator[None]:
        """Within the block every parameter holds its full data (a collective under ZeRO-3).

        Changes made inside the block are discarded on exit under ZeRO-3
        (``modifier_rank=None``); callers only read.
        """
        if self.zero_stage != 3:
            yield
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None):
            yield

    def _is_rank_zero(self) -> bool:
        return self.rank == 0

    def reference_model(self) -> contextlib.AbstractContextManager[torch.nn.Module]:
        """The frozen reference to forward (no gradient; collective under ZeRO-3, the forward gathers),
        in eval mode; with LoRA the engine with its adapters disabled for the block."""
        return reference_forward(self.has_reference, self.lora, self.module, self.engine, self.reference)

    def full_state_dict(self, on_device: bool = False) -> dict[str, torch.Tensor]:
        """Full weights with plain Hugging Face names (LoRA merged), as CPU clones, or with
        ``on_device`` on this rank's device: views of the module's parameters (ZeRO-2), device
        copies under ZeRO-3 (its gathered parameters are released when the gather ends).

        Collective: every rank must call it. Rank 0 gets the weights; other
        ranks get an empty dict (they take part in the gather only).
        """
        with self._full_parameters():
            if not self._is_rank_zero():
                return {}
            state = merged_state_dict(self.module, None if on_device else "cpu")
            if on_device and self.zero_stage == 3:
                state = {name: tensor.clone() for name, tensor in state.items()}
        return state

    def adapter_state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The LoRA adapter (peft names, CPU clones) and its config; collective like
        ``full_state_dict`` (rank 0 gets them, other ranks ``({}, {})``)."""
        with self._full_parameters():
            if not self._is_rank_zero():
                return {}, {}
            return adapter_state_dict(self.module)

    def save_pretrained(self, path: str) -> None:
        """Save in Hugging Face format (the adapter only, with LoRA); rank 0 writes.

        Collective under ZeRO-3: every rank must call it.
        """
        with self._full_parameters():
            if self._is_rank_zero():
                self.module.save_pretrained(path)
