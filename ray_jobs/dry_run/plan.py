"""The dry-run plan (``python -m ray_jobs.<job> --config FILE --dry-run``): every check that
needs no actor, weights or Ray, then each actor, the bundle it asks Ray for, the node and
GPU it would get, and a per-GPU memory estimate (``ray_jobs/dry_run/memory.py``) against
``--gpus-per-node`` GPUs of ``--gpu-memory-gib`` each.

The actors, their bundles and their nodes are ``ray_jobs/runtime/placement.py``'s (the layout the
Ray edge starts, assigned first-fit to identical nodes, as many as needed): a vLLM engine's
tensor-parallel shards share one node, an actor asking for a fraction of a GPU shares one
(both memory figures then add on that GPU), learner ranks follow
``learner.placement_strategy``. Layout and text: ``ray_jobs/dry_run/layout.py``; input checks:
``ray_jobs/dry_run/checks.py``.

Invariant: ``show`` raises ``PlanError`` (one line; the job prints ``error: ...`` and exits
with 2) for a config that cannot be scheduled (more GPUs in one engine or rank than a node
has, a fractional count above 1, a STRICT_PACK group larger than a node) or cannot fit (a
GPU's estimate above its memory, a vLLM share without room for one ``max_model_len``
sequence's KV cache); otherwise it prints the plan and returns.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Callable
from typing import Any

from actors.learner.config import LearnerConfig
from actors.model.loading import ModelConfig
from actors.rollout.worker import RolloutConfig
from ray_jobs.config.evaluation import EvaluateConfig
from ray_jobs.config.experiment import ExperimentConfig
from ray_jobs.data.prompts import DatasetError
from ray_jobs.data.sequences import SequenceDataConfig
from ray_jobs.dry_run.checks import check_prompt_rows, check_sequence_rows, describe_model_path
from ray_jobs.dry_run.layout import Actor, Memory, NodeShape, Plan, PlanError, layout, memory_refusals, render
from ray_jobs.dry_run.memory import (
    CUDA_CONTEXT_BYTES,
    GIB,
    VLLM_ASLEEP_BYTES,
    LearnerSetup,
    hf_generation,
    layer_activation_elements,
    learner_state,
    logprob_buffers,
    lora_parameters,
    training_activations,
    vllm_engine,
)
from ray_jobs.dry_run.model_shapes import ModelShape, find_shape
from ray_jobs.runtime.control import command_exit_code
from ray_jobs.runtime.placement import JUDGE_POOL, Placement, learner_placement, rollout_placement, run_placement


def _dtype_bytes(dtype: str) -> int:
    """'auto' is bfloat16 on a GPU (the plan is a GPU plan)."""
    return 4 if dtype == "float32" else 2


def _gib(value: float) -> str:
    return f"{value / GIB:.1f}"


def learner_memory(
    learner: LearnerConfig,
    model: ModelConfig,
    shape: ModelShape | None,
    why: str,
    batch: tuple[int, int, int],
    reference: bool,
) -> tuple[dict[str, float] | None, str]:
    """A learner rank's GPU memory by part (None: no shape) and a description line; ``batch`` =
    (sequences per micro-batch, tokens per sequence, log-prob tokens per micro-batch);
    ``reference``: the KL term's frozen reference (a copy unless LoRA, whose reference is the
    base with adapters off)."""
    c = _dtype_bytes(model.dtype)
    mixed = learner.precision == "mixed"
    setup = LearnerSetup(
        learner.backend,
        learner.zero_stage,
        learner.world_size,
        c,
        mixed,
        learner.offload_optimizer,
        reference and not learner.lora.enabled,
    )
    sequences, seq_len, logprob_tokens = batch
    memory: dict[str, float] | None = None
    trainable = 0
    if shape is not None:
        lora = learner.lora
        trainable = lora_parameters(shape, lora.r, lora.target_modules) if lora.enabled else shape.parameters
        memory = learner_state(shape, trainable, setup)
        chk = learner.gradient_checkpointing
        eager = model.attention == "eager"
        memory["activations"] = training_activations(shape, sequences, seq_len, chk, c, eager)
        recompute = not (learner.backend == "deepspeed" and learner.zero_stage == 3)  # as learner_deepspeed.py
        chunk = learner.logprob_chunk_tokens
        memory["log-prob buffers"] = logprob_buffers(shape.vocab_size, logprob_tokens, chunk, recompute)
        memory["CUDA context"] = float(CUDA_CONTEXT_BYTES)
    zero = f" ZeRO-{learner.zero_stage}" if learner.backend == "deepspeed" else ""
    kind = "fp32" if c == 4 else ("bf16 mixed precision" if mixed else "bf16 pure")
    lora_text = f", LoRA r={learner.lora.r}" if learner.lora.enabled else ""
    lora_text += f" ({trainable / 1e6:.1f} M trainable)" if learner.lora.enabled and shape is not None else ""
    line = (
        f"learner: {learner.backend}{zero}, {learner.world_size} rank(s), {kind}{lora_text}, "
        f"micro-batch {sequences} x {seq_len} tokens, gradient checkpointing "
        f"{'on' if learner.gradient_checkpointing else 'off'}"
        + (", frozen reference copy" if setup.reference else "")
        + ("" if shape is not None else f"; memory cannot be estimated ({why})")
    )
    return memory, line


def rollout_memory(
    rollout: RolloutConfig,
    model_dtype: str,
    shape: ModelShape | None,
    node: NodeShape,
    call: tuple[int, int, int],
    shares_gpu: bool = False,
) -> tuple[Memory, list[str]]:
    """Each rollout worker's GPU memory (a vLLM engine takes its share on each of its GPUs; an HF
    worker its weights, one call's generation and a CUDA context; ``call``: sequences per call,
    prompt tokens, prompt + completion tokens) and the refusals it shows (a vLLM share without
    room for one ``max_model_len`` sequence). ``shares_gpu``: a colocated engine, on the learner's GPU."""
    ro, refusals = rollout, []
    memory: Memory = {}
    c = _dtype_bytes(model_dtype)
    tp = ro.vllm.tensor_parallel_size if ro.backend == "vllm" else 1
    uses_gpu = tp > 1 or ro.num_gpus_per_worker > 0 or shares_gpu
    for w in range(ro.num_workers):
        name = f"rollout worker {w}"
        if not uses_gpu:
            memory[name] = (None, "on CPU")
        elif ro.backend != "vllm":
            parts = None
            if shape is not None:
                parts = {"weights": float(shape.parameters * c), **hf_generation(shape, c, *call)}
                parts["CUDA context"] = float(CUDA_CONTEXT_BYTES)
            memory[name] = (parts, f"HF generate, {call[0]} sequences of {call[2]} tokens per call")
        else:
            share = ro.vllm.gpu_memory_utilization * node.gpu_bytes
            fit = vllm_engine(shape, c, tp, ro.vllm.gpu_memory_utilization, node.gpu_bytes) if shape else None
            note = "vLLM engine; weights unknown"
            if fit is not None:
                note = (
                    f"vLLM engine: weights {_gib(fit.weights)} + KV cache {_gib(fit.kv_cache)} GiB "
                    f"({fit.kv_tokens:,} tokens) per GPU"
                )
                if fit.kv_tokens < ro.vllm.max_model_len:
                    refusals.append(
                        f"cannot fit {name}: vLLM's share ({ro.vllm.gpu_memory_utilization:g} x "
                        f"{node.gpu_memory_gib:g} GiB) leaves KV cache for {fit.kv_tokens:,} tokens after "
                        f"{_gib(fit.weights)} GiB of weights per GPU, fewer than rollout.vllm.max_model_len "
                        f"{ro.vllm.max_model_len} (raise gpu_memory_utilization or tensor_parallel_size)"
                    )
            memory[name] = ({"vLLM share": share}, note)
    return memory, refusals


JUDGE_NOTE = ("judge pool", (None, "async calls to the judge endpoint"))


def plan_train(cfg: ExperimentConfig, node: NodeShape) -> Plan:
    """The RL job's plan: rollout workers, the judge pool, learner ranks; colocated
    (``ray_jobs/runtime/colocation.py``), generation on the learner's GPU."""
    shape, why = find_shape(cfg.model.path, cfg.model.tiny)
    ro, lr, algo = cfg.rollout, cfg.learner, cfg.algorithm.settings
    checks = [describe_model_path(cfg.model.path, "model.path"), check_prompt_rows(cfg.data)]
    if cfg.eval.every_steps > 0 and cfg.eval.data:
        checks.append(check_prompt_rows(cfg.data.model_copy(update={"path": cfg.eval.data}), "eval.data"))
    seq_len = cfg.data.max_prompt_tokens + ro.max_new_tokens
    per_rank = math.ceil(cfg.pipeline.prompts_per_step * ro.group_size / algo.num_minibatches / lr.world_size)
    sequences = min(lr.micro_batch_size, per_rank)
    call = (cfg.pipeline.call_size(ro.backend) * ro.group_size, cfg.data.max_prompt_tokens, seq_len)
    in_learner = cfg.colocated and ro.backend == "hf"
    memory: Memory = {}
    refusals: list[str] = []
    if not in_learner:
        memory, refusals = rollout_memory(ro, cfg.model.dtype, shape, node, call, shares_gpu=cfg.colocated)
    batch = (sequences, seq_len, sequences * ro.max_new_tokens)
    rank, line = learner_memory(lr, cfg.model, shape, why, batch, algo.needs_reference)
    rank_note = ""
    if in_learner:
        rank, rank_note = generating_learner(rank, shape, _dtype_bytes(cfg.model.dtype), call, lr.backend)
    memory.update({f"learner rank {r}": (rank, rank_note) for r in range(lr.world_size)})
    memory.update([JUDGE_NOTE])
    actors, nodes = layout(run_placement(cfg), memory, node)
    if cfg.colocated and ro.backend == "vllm":
        _take_turns(actors, ro.vllm.sleep_level, lr.backend)
    return Plan(
        [_model_line(cfg.model, shape, why), _rollout_line(ro, cfg.colocated), line], checks, actors, nodes, refusals
    )


def _transient(backend: str) -> tuple[str, ...]:
    """The learner's parts freed between steps: gradients (the torch backend sets them to None
    after each step; DeepSpeed keeps its buffers), activations and log-prob buffers."""
    return ("activations", "log-prob buffers") + (("gradients",) if backend == "torch" else ())


def generating_learner(
    rank: dict[str, float] | None, shape: ModelShape | None, c: int, call: tuple[int, int, int], backend: str
) -> tuple[dict[str, float] | None, str]:
    """The learner rank that also generates (HF, colocated): one copy of the weights; a call's KV cache
    and prefill reuse what training frees between steps, only the excess adds (memory.py's docstring)."""
    if rank is None or shape is None:
        return rank, "generates in this process too (HF, one copy of the weights)"
    generation = sum(hf_generation(shape, c, *call).values())
    freed = sum(rank.get(part, 0.0) for part in _transient(backend))
    if generation > freed:
        rank = {**rank, "generation beyond training's": generation - freed}
    return rank, (
        f"generates in this process too (HF, one copy of the weights): {call[0]} sequences of {call[2]} tokens "
        f"per call, {_gib(generation)} GiB, in the {_gib(freed)} GiB training frees between steps"
    )


def _take_turns(actors: list[Actor], sleep_level: int, backend: str) -> None:
    """Mark the colocated vLLM engine and the learner rank on its GPU for the turns of sleep mode
    (``ray_jobs/dry_run/layout.py``'s ``turns``): what each keeps while the other computes. (The
    forward ahead of the judge, which would start before the engine sleeps, is off with sleep.)"""
    for a in actors:
        if a.name == "rollout worker 0":
            a.asleep, a.sleeps = float(VLLM_ASLEEP_BYTES), sleep_level > 0
            if sleep_level:
                a.note += f"; asleep (level {sleep_level}) while the learner trains"
        elif a.name == "learner rank 0" and a.memory is not None:
            a.kept = sum(v for part, v in a.memory.items() if part not in _transient(backend))


def plan_offline(
    model: ModelConfig, learner: LearnerConfig, data: SequenceDataConfig, pairs: bool, reference: bool, node: NodeShape
) -> Plan:
    """The SFT (``pairs`` False) or preference job's plan: the learner ranks only. A preference
    micro-batch of n pairs is 2n sequences; log-probs at every position (an upper bound)."""
    shape, why = find_shape(model.path, model.tiny)
    checks = [describe_model_path(model.path, "model.path")]
    for path, key in ((data.path, "data.path"), (data.eval_path, "data.eval_path")):
        checks += [c for c in (check_sequence_rows(path, key, pairs),) if c]
    sequences = learner.micro_batch_size * (2 if pairs else 1)
    batch = (sequences, data.max_length, sequences * data.max_length)
    rank, line = learner_memory(learner, model, shape, why, batch, reference)
    memory: Memory = {f"learner rank {r}": (rank, "") for r in range(learner.world_size)}
    actors, nodes = layout(learner_placement(learner), memory, node)
    return Plan([_model_line(model, shape, why), line], checks, actors, nodes)


def plan_evaluate(cfg: EvaluateConfig, node: NodeShape) -> Plan:
    """The evaluation job's plan: rollout workers (sized for the largest condition policy whose
    shape is known), a critic (a one-rank forward-only learner) when a condition ranks by one,
    and the judge pool."""
    checks = [check_prompt_rows(cfg.data)]
    shapes: list[tuple[ModelShape | None, str]] = []
    for name, cond in cfg.conditions.items():
        checks.append(describe_model_path(cond.policy, f"conditions.{name}.policy"))
        shapes.append(find_shape(cond.policy, cfg.model.tiny))
    known = [s for s, _ in shapes if s is not None]
    shape = max(known, key=lambda s: s.parameters) if known else None
    why = next((w for s, w in shapes if s is shape), shapes[0][1])
    most = max(c.k for c in cfg.conditions.values())
    prompt_tokens = cfg.data.max_prompt_tokens
    call = (cfg.run.items_per_call * most, prompt_tokens, prompt_tokens + cfg.rollout.max_new_tokens)
    memory, refusals = rollout_memory(cfg.rollout, cfg.model.dtype, shape, node, call)
    placement = Placement()
    for w in range(cfg.rollout.num_workers):
        placement += rollout_placement(cfg.rollout, w)
    critics = [c.critic for c in cfg.conditions.values() if c.critic is not None]
    if critics:
        checks += [describe_model_path(c.path, "critic.path") for c in critics]
        critic_shape, _ = find_shape(critics[0].path, cfg.model.tiny)
        memory["critic"] = (_critic_memory(cfg, critic_shape), "forward only")
        one = learner_placement(cfg.learner.model_copy(update={"world_size": 1})).actors[0]
        placement += Placement(actors=(dataclasses.replace(one, name="critic"),))
    placement += Placement(actors=(JUDGE_POOL,))
    memory.update([JUDGE_NOTE])
    actors, nodes = layout(placement, memory, node)
    model = cfg.model.model_copy(update={"path": "conditions' policies"})
    return Plan([_model_line(model, shape, why), _rollout_line(cfg.rollout, False)], checks, actors, nodes, refusals)


def _critic_memory(cfg: EvaluateConfig, shape: ModelShape | None) -> dict[str, float] | None:
    """The critic: weights in the compute dtype, one layer's activations and the log-prob buffers
    of a micro-batch (no gradients, no optimiser)."""
    if shape is None:
        return None
    lr, c = cfg.learner, _dtype_bytes(cfg.model.dtype)
    tokens = lr.micro_batch_size * (cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens)
    chunk = lr.logprob_chunk_tokens
    return {
        "weights": float(shape.parameters * c),
        "activations": float(layer_activation_elements(shape) * tokens * c),
        "log-prob buffers": logprob_buffers(shape.vocab_size, tokens, chunk),
        "CUDA context": float(CUDA_CONTEXT_BYTES),
    }


def show(plan: Plan, node: NodeShape) -> None:
    """Print the plan; ``PlanError`` (the first refusal, one line) when it cannot fit (a plan
    that cannot be scheduled raised it while being built)."""
    refusals = [*plan.refusals, *memory_refusals(plan.actors, node)]
    print(render(plan, node), flush=True)
    if refusals:
        raise PlanError(refusals[0])
    unknown = [a.name for a in plan.actors if a.gpus > 0 and a.memory is None]
    if unknown:
        print(f"plan: schedulable; the memory of {', '.join(unknown)} cannot be estimated (nothing was started)")
    else:
        print("plan: fits (an estimate; nothing was started)", flush=True)


def _model_line(model: ModelConfig, shape: ModelShape | None, why: str) -> str:
    size = f"{shape.parameters / 1e9:.2f} B parameters ({why})" if shape else f"shape unknown ({why})"
    dtype = "bfloat16 (auto on GPU)" if model.dtype == "auto" else model.dtype
    return f"model {model.path}: {size}, {dtype}"


def _rollout_line(ro: RolloutConfig, colocated: bool) -> str:
    v = ro.vllm
    if colocated and ro.backend == "hf":
        return "rollout: HF generation in the learner's process, on its device (colocated: no weight sync)"
    if colocated:
        sleep = f"sleep_level {v.sleep_level}" if v.sleep_level else "no sleep (sleep_level 0)"
        return (
            f"rollout: 1 vLLM engine on the learner's GPU (colocated), gpu_memory_utilization "
            f"{v.gpu_memory_utilization:g}, max_model_len {v.max_model_len}, {sleep}"
        )
    if ro.backend != "vllm":
        return f"rollout: {ro.num_workers} HF worker(s), {ro.num_gpus_per_worker:g} GPU each"
    return (
        f"rollout: {ro.num_workers} vLLM engine(s), tensor_parallel_size {v.tensor_parallel_size}, "
        f"gpu_memory_utilization {v.gpu_memory_utilization:g}, max_model_len {v.max_model_len}"
    )


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    """The jobs' ``--dry-run``, ``--gpu-memory-gib`` and ``--gpus-per-node`` flags."""
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the config, data and paths and print the plan (actors, bundles, nodes, per-GPU memory "
        "estimate) without starting Ray or loading weights; exit 2 if it cannot be scheduled or cannot fit",
    )
    parser.add_argument(
        "--gpu-memory-gib", type=float, default=80.0, help="GPU memory the dry-run plans for (default 80)"
    )
    parser.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node the dry-run plans for (default 8)")


def dry_run(
    args: argparse.Namespace,
    load: Callable[[], Any],
    build: Callable[[Any, NodeShape], Plan],
    errors: tuple[type[BaseException], ...],
) -> int:
    """Load the config, build its plan and show it, as a command: bad input, a config that cannot be
    scheduled or cannot fit are ``error: ...`` on stderr and exit code 2; otherwise 0."""
    if args.gpus_per_node < 1 or args.gpu_memory_gib <= 0:
        print("error: --gpus-per-node must be at least 1 and --gpu-memory-gib above 0", file=sys.stderr)
        return 2
    node = NodeShape(args.gpus_per_node, args.gpu_memory_gib)
    return command_exit_code(load, lambda cfg: show(build(cfg, node), node), (*errors, PlanError, DatasetError))
