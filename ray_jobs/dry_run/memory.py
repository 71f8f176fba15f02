"""Per-GPU memory estimates for the dry-run plan (``ray_jobs/dry_run/plan.py``): pure functions of a
model's shape and the config's numbers.

Accuracy: a planning figure, meant to be within about 20 % of a real run's peak for the
shapes our recipes use (dominated by the exact terms: weights, gradients, optimiser
state); it is not a measurement. Allocator fragmentation, NCCL buffers and library
workspaces are covered only by the fixed ``CUDA_CONTEXT_BYTES`` per learner process.

Formulas (P: the model's parameters, T: trainable ones, W: learner ranks, c: bytes of the
compute dtype, 2 for bf16 and 4 for fp32):

* Learner state per rank (``learner_state``):
  - torch, fp32: weights 4 B/param, gradients 4 B and AdamW moments 8 B per trainable param.
  - torch, bf16 mixed: fp32 trainable weights 4 B, gradients 4 B, moments 8 B per trainable
    param (16 B), frozen weights (LoRA's base) c B/param.
  - torch, bf16 pure: weights, gradients 2 B and moments 4 B per trainable param (8 B).
  - deepspeed, bf16: weights 2 B/param, gradients 2 B and fp32 master + moments 12 B per
    trainable param; ZeRO-2 divides gradients and optimiser state by W, ZeRO-3 the weights
    too; ``offload_optimizer`` moves the optimiser state to CPU memory. deepspeed, fp32:
    4 + 4 + 8 B (no separate master copy).
  - The frozen reference (KL term, ``algorithm.beta > 0``, no LoRA: LoRA's reference is
    the base with adapters off) is c B/param, divided by W under ZeRO-3.
  - ZeRO buffers: one reduce bucket of min(T, 5e8) elements of c B (DeepSpeed's default
    bucket, capped at the model as ``actors/learner/deepspeed_backend.py`` configures it), and
    under ZeRO-3 twice the largest gathered module (the embedding or one layer) in c B.
* LoRA parameters (``lora_parameters``): r x (d_in + d_out) per adapted matrix per layer.
* Activations for a micro-batch of B sequences of L tokens (``training_activations``), with
  sdpa attention (no T x T matrix): one layer keeps about
  ``A = 4h + 2q + 2kv + 4i`` elements per token (h hidden, q = heads x head_dim,
  kv = kv heads x head_dim, i the MLP width: the two norms' inputs and outputs, q/k/v, the
  attention output, the SwiGLU gate, up, activation and product). Without activation
  checkpointing: layers x A x B x L x c. With it: layers x h x B x L x c (each layer's
  input) plus one layer's A x B x L x c (recomputed in the backward pass). ``model.attention:
  eager`` adds 2 x B x heads x L x L x c per layer kept (the scores and their softmax).
* Log-prob buffers (``logprob_buffers``): log-probs are computed at completion positions
  in chunks of ``learner.logprob_chunk_tokens`` tokens over the vocabulary, about three fp32
  (chunk, vocab) tensors at a time (logits, log-softmax, its gradient): 3 x min(chunk,
  tokens) x V x 4 B, each chunk recomputed in the backward pass; under ZeRO-3 chunks are not
  recomputed (``actors/model/logprobs.py``) and the backward keeps them all: 3 x tokens x V x 4 B.
* vLLM engine (``vllm_engine``): it takes ``gpu_memory_utilization`` x the GPU's memory on
  each of its GPUs whatever the model; inside that share, weights P x c / TP, a fixed
  ``VLLM_RUNTIME_BYTES`` for its activation peak and CUDA graphs, and the rest is KV cache
  at 2 x layers x (kv heads / TP, at least 1) x head_dim x c B per token, which must hold
  at least one ``max_model_len`` sequence (vLLM refuses to start otherwise).
* HF generation (``hf_generation``): a call's sequences (prompts x samples) hold a KV cache of
  2 x layers x kv heads x head_dim x c B per token, prompt and completion, and its prefill keeps
  about one layer's activations (A x sequences x prompt tokens x c); a process of its own adds
  its weights (P x c) and a ``CUDA_CONTEXT_BYTES``.
* Sharing one GPU (``pipeline.placement: colocated``). HF generation in the learner's process: one
  copy of the weights; a call's KV cache and prefill reuse what training frees between steps
  (gradients, set to None after each step by the torch backend, activations and log-prob
  buffers; the caching allocator hands the same blocks out again), so only what exceeds that
  adds to the learner's peak. A vLLM engine beside the learner: without sleep both peaks add up
  (the engine holds its share all the time). With ``rollout.vllm.sleep_level`` 1 or 2 they take
  turns, and the GPU's peak is the larger of two phases: the learner's step (its whole peak plus
  ``VLLM_ASLEEP_BYTES`` the sleeping engine keeps) and generation (the engine's share plus what
  the learner keeps between steps: weights, optimiser state, reference, ZeRO buffers and its CUDA
  context). Assumed: the learner's process returns its freed blocks to the device
  (``torch.cuda.empty_cache()``) before the engine wakes; otherwise its caching allocator keeps
  its whole peak reserved and the turns save nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from ray_jobs.dry_run.model_shapes import ModelShape

GIB = 1024**3
CUDA_CONTEXT_BYTES = 1 * GIB
"""A learner process's CUDA context, allocator slack and NCCL buffers (a round planning figure)."""
VLLM_RUNTIME_BYTES = 1 * GIB
"""A vLLM engine's activation peak and CUDA graphs inside its share (a round planning figure)."""
VLLM_ASLEEP_BYTES = VLLM_RUNTIME_BYTES
"""What a sleeping vLLM engine keeps on its GPU: sleep releases only its own memory pool (weights and
KV cache); its CUDA context, CUDA graphs and workspace stay (the same round figure)."""
ZERO_BUCKET_ELEMENTS = 500_000_000  # DeepSpeed's default reduce bucket (actors/learner/deepspeed_backend.py)


@dataclass(frozen=True)
class LearnerSetup:
    """What decides a learner rank's state memory.

    ``compute_bytes``: 2 (bf16) or 4 (fp32); ``mixed``: fp32 master weights and optimiser
    state with bf16 compute (``learner.precision: mixed``); ignored in fp32.
    """

    backend: str  # "torch" or "deepspeed"
    zero_stage: int
    world_size: int
    compute_bytes: int
    mixed: bool
    offload_optimizer: bool
    reference: bool


def lora_parameters(shape: ModelShape, r: int, target_modules: list[str]) -> int:
    """Adapter parameters: r x (d_in + d_out) for each targeted projection in every layer."""
    h, q, kv, i = shape.hidden_size, shape.num_heads * shape.head_dim, shape.kv_dim, shape.intermediate_size
    dims = {
        "q_proj": (h, q),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (q, h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
    }
    per_layer = sum(r * (d_in + d_out) for name, (d_in, d_out) in dims.items() if name in target_modules)
    return shape.num_layers * per_layer


def learner_state(shape: ModelShape, trainable: int, setup: LearnerSetup) -> dict[str, float]:
    """GPU bytes per rank for weights, gradients, optimiser state, reference and ZeRO buffers
    (``trainable``: T; the base model's P is ``shape.parameters``; LoRA when T < P)."""
    p, t, c, w = shape.parameters, trainable, setup.compute_bytes, setup.world_size
    lora = t < p
    frozen = p if lora else 0
    if setup.backend == "deepspeed":
        param_b, grad_b, optim_b = (c, c, 12) if c == 2 else (4, 4, 8)
        weights = (frozen + t) * param_b / (w if setup.zero_stage == 3 else 1)
        grads, optim = t * grad_b / w, t * optim_b / w
        if setup.offload_optimizer:
            optim = 0.0
    else:
        full = 4 if c == 4 or setup.mixed else 2
        weights = frozen * c + t * full
        grads, optim = t * full, t * 2 * full
    parts = {"weights": float(weights), "gradients": float(grads), "optimiser": float(optim)}
    if setup.reference and not lora:
        parts["reference"] = p * c / (w if setup.backend == "deepspeed" and setup.zero_stage == 3 else 1)
    if setup.backend == "deepspeed":
        buffers = min(t, ZERO_BUCKET_ELEMENTS) * c
        if setup.zero_stage == 3:
            layer = (p - shape.vocab_size * shape.hidden_size) // shape.num_layers
            buffers += 2 * max(shape.vocab_size * shape.hidden_size, layer) * c
        parts["ZeRO buffers"] = float(buffers)
    return parts


def layer_activation_elements(shape: ModelShape) -> int:
    """A = 4h + 2q + 2kv + 4i: elements one layer keeps per token for its backward pass."""
    q = shape.num_heads * shape.head_dim
    return 4 * shape.hidden_size + 2 * q + 2 * shape.kv_dim + 4 * shape.intermediate_size


def training_activations(
    shape: ModelShape, sequences: int, seq_len: int, checkpointing: bool, compute_bytes: int, eager: bool = False
) -> float:
    """Activation bytes of one micro-batch's forward and backward (see the module docstring);
    ``eager`` attention adds its (B, heads, T, T) scores and probabilities per layer kept."""
    tokens = sequences * seq_len
    layer = layer_activation_elements(shape) * tokens
    if eager:
        layer += 2 * sequences * shape.num_heads * seq_len * seq_len
    if checkpointing:
        return float((shape.num_layers * shape.hidden_size * tokens + layer) * compute_bytes)
    return float(shape.num_layers * layer * compute_bytes)


def logprob_buffers(vocab_size: int, tokens: int, chunk_tokens: int, recompute: bool = True) -> float:
    """About three fp32 (chunk, vocab) tensors: 3 x min(chunk, tokens) x V x 4 B; without
    ``recompute`` (ZeRO-3) the backward keeps every chunk's: 3 x tokens x V x 4 B."""
    return float(3 * (min(chunk_tokens, tokens) if recompute else tokens) * vocab_size * 4)


@dataclass(frozen=True)
class VLLMFit:
    """One vLLM engine on each of its GPUs: the share it takes, its weights, and the KV cache left."""

    share: float  # bytes per GPU: gpu_memory_utilization x GPU memory
    weights: float  # bytes per GPU
    kv_bytes_per_token: float  # per GPU
    kv_tokens: int  # tokens the KV cache holds (0 when the weights leave no room)

    @property
    def kv_cache(self) -> float:
        return max(0.0, self.share - self.weights - VLLM_RUNTIME_BYTES)


def kv_bytes_per_token(shape: ModelShape, dtype_bytes: int, tp: int = 1) -> int:
    """KV-cache bytes of one token on each of ``tp`` shards: 2 x layers x (kv heads / tp, at least 1) x head_dim x c."""
    return 2 * shape.num_layers * max(1, shape.num_kv_heads // tp) * shape.head_dim * dtype_bytes


def hf_generation(shape: ModelShape, dtype_bytes: int, sequences: int, prompt_tokens: int, total_tokens: int) -> dict:
    """One HF ``generate`` call's memory by part: the KV cache of ``sequences`` of ``total_tokens`` and
    the prefill's activations over their ``prompt_tokens`` (module docstring)."""
    return {
        "KV cache": float(kv_bytes_per_token(shape, dtype_bytes) * sequences * total_tokens),
        "prefill activations": float(layer_activation_elements(shape) * sequences * prompt_tokens * dtype_bytes),
    }


def vllm_engine(shape: ModelShape, dtype_bytes: int, tp: int, utilization: float, gpu_bytes: float) -> VLLMFit:
    """A vLLM engine's share, weights and KV capacity per GPU (see the module docstring)."""
    share = utilization * gpu_bytes
    weights = shape.parameters * dtype_bytes / tp
    per_token = kv_bytes_per_token(shape, dtype_bytes, tp)
    free = max(0.0, share - weights - VLLM_RUNTIME_BYTES)
    return VLLMFit(share, weights, float(per_token), int(free // per_token))
