"""DeepSpeed learner backend on CPU (gloo, one process) against the plain-torch one.

Every DeepSpeed engine in this module lives in the same one-rank process group,
created by the first engine. The first run in a fresh checkout compiles
DeepSpeed's shared-memory comm op (25-45 s on 2 cores) into ``TORCH_EXTENSIONS_DIR``;
later runs load it from there.

The key check is numerical: from the same initial weights and batches, ZeRO-2
and ZeRO-3 steps must give the same weights and gradient norms as the torch
backend, with one micro-batch per step and with gradients accumulated over
several (the batches have 4 and 5 rows, so micro_batch_size=2 means 2, then 3
micro-batches). Two steps are compared because Adam's first update is close to
lr * sign(grad) and hides a wrong gradient scale; the second step and the
reported gradient norm do not.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(_REPO / ".cache" / "torch_extensions"))
if shutil.which("ninja") is None:  # DeepSpeed compiles its comm op with the venv's ninja
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

import torch  # noqa: E402

from actors.learner.deepspeed_backend import (  # noqa: E402
    DeepSpeedLearnerBackend,
)
from actors.learner.learner import Learner, LearnerConfig, LoraConfig  # noqa: E402
from actors.messages import TrainBatch, TrainResult  # noqa: E402
from actors.model.loading import ModelConfig, load_causal_lm, resolve_model_path  # noqa: E402
from actors.weights.sync import merged_state_dict  # noqa: E402
from algorithms.config import AlgorithmConfig  # noqa: E402

LR = 1e-3  # every learner in this module
# Weights after a step are compared within a share of the learning rate, not of the weights.
# Adam moves each element by about lr * m/sqrt(v) per step, |m/sqrt(v)| ~ 1 in the first steps,
# whatever the gradient's size; ZeRO-3 reduces and partitions the fp32 gradients in another
# order than torch, and the few-ulp gradient differences this gives are amplified by that
# normalisation on elements whose gradient is tiny (near Adam's eps). Measured on two CPU
# types: up to 2.2e-5 = 0.022 lr after two steps. A real bug (a micro-batch left out, a step
# not applied) changes the update direction of many elements, by O(lr):
# test_tolerances_catch_broken_variants shows such variants fail these checks.
WEIGHT_ATOL = 0.1 * LR
# The gradient norm is not normalised away: a wrong loss normaliser scales it. DeepSpeed sums
# the squared norms in another order (observed ~4e-6 relative).
NORM_RTOL = 1e-4
LOSS_RTOL = 1e-5  # fp32 forwards of weights that agree within WEIGHT_ATOL (within 1e-5 on both CPU types)


@dataclass(frozen=True)
class StepRecord:
    """What one learner step produced: its result and the exported weights after it."""

    result: TrainResult
    weights: dict[str, torch.Tensor]


Reference = Callable[[int, bool], list[StepRecord]]  # (micro_batch_size, lora) -> the torch backend's steps


@pytest.fixture(scope="module", autouse=True)
def _restore_dist_env(restore_dist_env) -> None:
    """Every test here runs inside ``restore_dist_env`` (conftest)."""


@pytest.fixture(scope="module")
def model_config(tiny_model_config: ModelConfig) -> ModelConfig:
    return tiny_model_config  # the session's built-in tiny model (conftest), built once


@pytest.fixture(scope="module")
def model_path(model_config: ModelConfig) -> str:
    return resolve_model_path(model_config)


@pytest.fixture(scope="module")
def batches(model_path: str, make_train_batch) -> list[TrainBatch]:
    """Two steps' batches of 4 and 5 sequences, sampled (log-probs) from the initial model."""
    model = load_causal_lm(model_path, "float32")
    return [make_train_batch(0, 4, model, seed=0), make_train_batch(1, 5, model, seed=1)]


def _learner(
    model_config: ModelConfig, backend: str, micro_batch_size: int, lora: bool = False, zero_stage: int = 2
) -> Learner:
    config = LearnerConfig(
        backend=backend, zero_stage=zero_stage, lr=LR, micro_batch_size=micro_batch_size, lora=LoraConfig(enabled=lora)
    )
    return Learner(config, model_config, AlgorithmConfig(), temperature=1.0)


def _run(learner: Learner, batches: list[TrainBatch]) -> list[StepRecord]:
    """Train on each batch in turn, exporting the full weights after every step."""
    return [StepRecord(learner.train(b), learner.backend.full_state_dict()) for b in batches]


@pytest.fixture(scope="module")
def torch_reference(model_config: ModelConfig, batches: list[TrainBatch]) -> Reference:
    """The torch backend's steps per (micro_batch_size, lora), computed once each."""
    cache: dict[tuple[int, bool], list[StepRecord]] = {}

    def reference(micro_batch_size: int, lora: bool) -> list[StepRecord]:
        key = (micro_batch_size, lora)
        if key not in cache:
            cache[key] = _run(_learner(model_config, "torch", micro_batch_size, lora), batches)
        return cache[key]

    return reference


def _max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].shape == b[name].shape, name
    return max(float((a[name].float() - b[name].float()).abs().max()) for name in a)


def _mismatches(got: list[StepRecord], want: list[StepRecord]) -> list[str]:
    """The checks a DeepSpeed run fails against the torch backend's steps (empty: it matches)."""
    failed = []
    for step, (g, w) in enumerate(zip(got, want)):
        if g.result.metrics["loss"] != pytest.approx(w.result.metrics["loss"], rel=LOSS_RTOL, abs=1e-7):
            failed.append(f"step {step} loss")
        if g.result.metrics["grad_norm"] != pytest.approx(w.result.metrics["grad_norm"], rel=NORM_RTOL):
            failed.append(f"step {step} grad_norm")
        if _max_abs_diff(g.weights, w.weights) >= WEIGHT_ATOL:
            failed.append(f"step {step} weights ({_max_abs_diff(g.weights, w.weights):.2e})")
    return failed


@pytest.mark.parametrize(
    ("zero_stage", "micro_batch_size", "lora"),
    [(2, 8, False), (2, 2, False), (3, 2, False), (2, 2, True), (3, 2, True)],
    ids=["zero2-one-micro-batch", "zero2-accumulate", "zero3-accumulate", "zero2-lora", "zero3-lora"],
)
def test_deepspeed_steps_match_torch(
    model_config: ModelConfig,
    model_path: str,
    batches: list[TrainBatch],
    torch_reference: Reference,
    zero_stage: int,
    micro_batch_size: int,
    lora: bool,
) -> None:
    initial = merged_state_dict(load_causal_lm(model_path, "float32"))  # tied weights once, as exported
    learner = _learner(model_config, "deepspeed", micro_batch_size, lora, zero_stage)
    assert isinstance(learner.backend, DeepSpeedLearnerBackend)
    steps = _run(learner, batches)
    expected = torch_reference(micro_batch_size, lora)

    first = steps[0].result
    assert first.policy_version == 1 and learner.version == len(batches)
    assert math.isfinite(first.metrics["loss"]) and math.isfinite(first.metrics["grad_norm"])
    assert _max_abs_diff(steps[0].weights, initial) > 5 * WEIGHT_ATOL  # the step moved the weights
    assert _mismatches(steps, expected) == []
    from deepspeed.comm import comm

    assert comm.cdb.shm_comm_op is None  # the unused shared-memory op was not compiled (skip_shared_memory_op)


@pytest.mark.parametrize("broken", ["missed-micro-batch", "loss-scaled-twice"])
def test_tolerances_catch_broken_variants(
    model_config: ModelConfig,
    batches: list[TrainBatch],
    torch_reference: Reference,
    monkeypatch: pytest.MonkeyPatch,
    broken: str,
) -> None:
    """The comparison above is tight enough to fail a learner with a real bug: one that leaves
    the last micro-batch of every minibatch out, or one whose loss normaliser is off by 2
    (Adam hides a scale in the weights; the gradient norm shows it)."""
    import actors.learner.learner as learner_module

    want = torch_reference(2, False)  # before anything is broken
    learner = _learner(model_config, "deepspeed", micro_batch_size=2, zero_stage=3)
    if broken == "missed-micro-batch":
        plan = learner_module.micro_batch_plan
        monkeypatch.setattr(learner_module, "micro_batch_plan", lambda *args: plan(*args)[:-1])
    else:
        backward = learner.backend.backward
        monkeypatch.setattr(learner.backend, "backward", lambda loss: backward(2.0 * loss))
    failed = _mismatches(_run(learner, batches), want)
    expected = "weights" if broken == "missed-micro-batch" else "grad_norm"
    assert any(expected in check for check in failed), failed


def _partitioned(module: torch.nn.Module) -> bool:
    return all(p.numel() == 0 for p in module.parameters())


@pytest.mark.usefixtures("zero3_partitions_everything")
def test_zero3_full_state_dict_gathers_partitioned_weights(
    model_config: ModelConfig, model_path: str, batches: list[TrainBatch], torch_reference: Reference
) -> None:
    learner = _learner(model_config, "deepspeed", micro_batch_size=8, zero_stage=3)
    learner.train(batches[0])
    module = learner.backend.module
    assert _partitioned(module), "precondition: ZeRO-3 holds no full weight outside a gather"
    full = learner.backend.full_state_dict()
    initial = merged_state_dict(load_causal_lm(model_path, "float32"))  # tied weights once
    assert full.keys() == initial.keys()
    for name, tensor in full.items():
        assert tensor.shape == initial[name].shape, name
        assert tensor.device.type == "cpu"
    assert _max_abs_diff(full, torch_reference(8, False)[0].weights) < WEIGHT_ATOL  # see WEIGHT_ATOL
    assert _partitioned(module), "the gather must not leave weights materialised"
    on_device = learner.backend.full_state_dict(on_device=True)  # the broadcast's: copies that outlive the gather
    assert on_device.keys() == full.keys() and all(torch.equal(on_device[k], full[k]) for k in full)
    assert _partitioned(module)


@pytest.mark.usefixtures("zero3_partitions_everything")
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_zero3_save_pretrained_round_trips(
    model_config: ModelConfig, model_path: str, batches: list[TrainBatch], tmp_path: Path, lora: bool
) -> None:
    learner = _learner(model_config, "deepspeed", micro_batch_size=8, lora=lora, zero_stage=3)
    learner.train(batches[0])
    assert _partitioned(learner.backend.module), "precondition: ZeRO-3 holds no full weight outside a gather"
    learner.save(str(tmp_path))
    files = set(os.listdir(tmp_path))
    if lora:
        from peft import PeftModel

        assert {"adapter_config.json", "adapter_model.safetensors"} <= files and "model.safetensors" not in files
        reloaded = merged_state_dict(PeftModel.from_pretrained(load_causal_lm(model_path, "float32"), str(tmp_path)))
    else:
        assert {"config.json", "model.safetensors"} <= files
        reloaded = merged_state_dict(load_causal_lm(str(tmp_path), "float32"))
    assert _max_abs_diff(reloaded, learner.backend.full_state_dict()) < 1e-6


def test_step_without_backward_is_an_error(model_config: ModelConfig) -> None:
    learner = _learner(model_config, "deepspeed", micro_batch_size=8)
    with pytest.raises(RuntimeError, match="without a backward"):
        learner.backend.step()


def _with_rewards(batch: TrainBatch) -> TrainBatch:
    """The batch with rewards (its advantages) and groups of two, for the KL-in-reward path."""
    return dataclasses.replace(batch, rewards=list(batch.advantages), group_ids=[i // 2 for i in range(len(batch))])


@pytest.mark.parametrize(
    ("zero_stage", "lora", "knobs"),
    [
        (2, False, {}),
        (3, False, {}),
        (3, True, {}),
        (2, False, {"name": "rloo"}),
        (3, False, {"num_iterations": 2, "rollout_correction": "truncate"}),
    ],
    ids=["zero2-kl-loss", "zero3-kl-loss", "zero3-lora-kl-loss", "zero2-kl-reward", "zero3-proximal-2-iterations"],
)
def test_deepspeed_reference_and_kl_match_torch(
    model_config: ModelConfig, batches: list[TrainBatch], zero_stage: int, lora: bool, knobs: dict
) -> None:
    """With beta > 0 the frozen reference (a separate frozen module, an optimiser-less ZeRO-3
    engine, or the LoRA model with adapters disabled) gives the torch backend's KL, loss and
    weights; so do the proximal log-probs recomputed through the engine for several iterations."""
    algorithm = AlgorithmConfig(**{"beta": 0.1, **knobs})
    data = [_with_rewards(b) for b in batches]

    def learner(backend: str) -> Learner:
        config = LearnerConfig(
            backend=backend, zero_stage=zero_stage, lr=LR, micro_batch_size=2, lora=LoraConfig(enabled=lora)
        )
        return Learner(config, model_config, algorithm, temperature=1.0)

    deepspeed_learner = learner("deepspeed")
    assert (deepspeed_learner.backend.reference is None) == lora  # LoRA: no second copy
    got, want = _run(deepspeed_learner, data), _run(learner("torch"), data)
    if algorithm.settings.num_iterations == 1:  # (a second pass sees the updated policy)
        assert got[0].result.metrics["kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference at first
    assert got[1].result.metrics["kl"] != 0  # k1 (rloo) may be negative
    for step, (g, w) in enumerate(zip(got, want)):
        assert g.result.metrics["optim/steps"] == w.result.metrics["optim/steps"] == algorithm.settings.num_iterations
        for key in ("loss", "kl", "is/ratio_mean"):
            assert g.result.metrics[key] == pytest.approx(w.result.metrics[key], rel=1e-4, abs=1e-7), (step, key)
        assert _max_abs_diff(g.weights, w.weights) < WEIGHT_ATOL, f"step {step}"


def test_world_size_must_match_the_launch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A multi-rank config in a process nobody launched as a rank fails before loading anything
    (the model path does not exist: loading it would raise OSError instead)."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    config = LearnerConfig(backend="deepspeed", world_size=2)
    never_loaded = ModelConfig(path=str(tmp_path / "never-loaded"))
    with pytest.raises(RuntimeError, match="learner.world_size=2 but this process was started with WORLD_SIZE=1"):
        Learner(config, never_loaded, AlgorithmConfig(), temperature=1.0)


@pytest.mark.parametrize(
    ("zero_stage", "offload", "checkpointing"),
    [(2, True, False), (3, True, True), (3, False, True)],
    ids=["zero2-offload", "zero3-offload-checkpointing", "zero3-checkpointing"],
)
def test_offload_and_checkpointing_match_torch(
    model_config: ModelConfig,
    batches: list[TrainBatch],
    torch_reference: Reference,
    zero_stage: int,
    offload: bool,
    checkpointing: bool,
) -> None:
    """Optimiser offload (torch's AdamW on the CPU-held state) and activation checkpointing
    change where state lives and what is recomputed, not the steps."""
    config = LearnerConfig(
        backend="deepspeed",
        zero_stage=zero_stage,
        lr=LR,
        micro_batch_size=2,
        offload_optimizer=offload,
        gradient_checkpointing=checkpointing,
    )
    learner = Learner(config, model_config, AlgorithmConfig(), temperature=1.0)
    engine = learner.backend.engine
    assert engine.zero_cpu_offload() is offload
    offloading = engine.optimizer.cpu_offload if zero_stage == 2 else engine.optimizer.offload_optimizer
    assert offloading is offload  # the ZeRO optimiser took its offload path
    assert learner.backend.module.is_gradient_checkpointing is checkpointing
    assert isinstance(engine.optimizer.optimizer, torch.optim.AdamW)  # not DeepSpeed's compiled CPUAdam
    assert _mismatches(_run(learner, batches), torch_reference(2, False)) == []


def test_bf16_steps_update_float32_master_weights(model_config: ModelConfig, batches: list[TrainBatch]) -> None:
    """DeepSpeed's bf16 mode (``deepspeed_config``: ``bf16.enabled``, no bf16 master weights) keeps the
    optimiser's weights in float32: at a real run's lr (1e-5) nearly every master element moves, while
    most of the bf16 module weights cannot (an update below half a bf16 step rounds away: |w| > ~5e-3)."""
    bf16 = model_config.model_copy(update={"dtype": "bfloat16"})
    config = LearnerConfig(backend="deepspeed", zero_stage=2, lr=1e-5, micro_batch_size=8)
    learner = Learner(config, bf16, AlgorithmConfig(), temperature=1.0)
    masters = learner.backend.engine.optimizer.single_partition_of_fp32_groups
    assert masters and all(m.dtype == torch.float32 for m in masters)
    before = torch.cat([m.detach().clone() for m in masters])
    weights = torch.cat([p.detach().float().flatten().clone() for p in learner.backend.module.parameters()])
    for batch in batches:
        learner.train(batch)
    moved = torch.cat([m.detach() for m in masters]) != before
    module_moved = torch.cat([p.detach().float().flatten() for p in learner.backend.module.parameters()]) != weights
    assert float(moved.float().mean()) > 0.99
    assert float(module_moved.float().mean()) < 0.5
