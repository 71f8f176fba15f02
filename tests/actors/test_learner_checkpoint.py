"""Learner checkpoints and the LR schedule: a resumed learner continues exactly.

The contract, per backend: train k steps, ``save_checkpoint``, train steps
k+1 and k+2 (recording metrics and weights after each); build a fresh
``Learner`` from the same config, ``load_checkpoint``, train steps k+1 and
k+2: the same loss, gradient norm, learning rate and weights. (Step k+2 is
needed for the scheduler: the lr of step k+1 is in the restored optimiser's
param groups; a scheduler left at step 0 shows only in the next one.) Each
case is built so that a piece of state left out would show:

* Adam moments and the step count: k = 2 steps before the save (after one
  step Adam's moments are nearly ``g`` and ``g**2``; after two the bias
  correction and the history matter).
* LR scheduler: the cosine case warms up over 2 optimiser steps of an 8-step
  horizon, so the lr of step k+1 depends on the restored step count.
* RNG: LoRA dropout 0.1 draws random masks every forward; a fresh learner's
  generator would draw others.
* Reference policy (beta > 0): not saved; the fresh learner rebuilds it (the
  initial model, or adapters disabled), and the KL must agree.

Tolerances: the torch backend restores the same float32 tensors bit for bit
and repeats the same single-threaded CPU ops, so it is compared with ``==``.
DeepSpeed restores its fp32 master partitions, moments and scheduler from
its own files; the remaining step is the same engine code on the same data,
so 1e-6 (the brief's bound) only admits reduction-order noise, far below
what a lost state changes (lr = 1e-3 per weight per step).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(_REPO / ".cache" / "torch_extensions"))
if shutil.which("ninja") is None:  # DeepSpeed compiles its comm op with the venv's ninja
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

import torch  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from actors.learner.learner import Learner, LearnerConfig, LoraConfig  # noqa: E402
from actors.learner.state import MANIFEST, directory_bytes  # noqa: E402
from actors.messages import TrainBatch, TrainResult  # noqa: E402
from actors.model.loading import ModelConfig, load_causal_lm, resolve_model_path  # noqa: E402
from algorithms.config import AlgorithmConfig  # noqa: E402

DEEPSPEED_ATOL = 1e-6  # see the module docstring
STEPS_BEFORE_SAVE = 2
STEPS_AFTER_SAVE = 2


@dataclass(frozen=True)
class Case:
    """One resume scenario: the learner's config, the algorithm, and the run's length."""

    learner: LearnerConfig
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    total_steps: int | None = None


LORA = LoraConfig(enabled=True, dropout=0.1)
CASES = {
    "torch-full-kl": Case(LearnerConfig(micro_batch_size=2), AlgorithmConfig(beta=0.1)),
    "torch-lora-dropout-kl": Case(LearnerConfig(micro_batch_size=2, lora=LORA), AlgorithmConfig(beta=0.1)),
    "torch-cosine-warmup": Case(
        LearnerConfig(micro_batch_size=2, lr_scheduler="cosine", warmup_steps=2),
        AlgorithmConfig(num_minibatches=2),
        total_steps=4,
    ),
    "deepspeed-zero2": Case(LearnerConfig(backend="deepspeed", zero_stage=2, micro_batch_size=2)),
    "deepspeed-zero3-lora-linear": Case(
        LearnerConfig(
            backend="deepspeed", zero_stage=3, micro_batch_size=2, lora=LORA, lr_scheduler="linear", warmup_ratio=0.25
        ),
        total_steps=4,
    ),
    "deepspeed-zero3-offload": Case(
        LearnerConfig(backend="deepspeed", zero_stage=3, micro_batch_size=2, offload_optimizer=True)
    ),
}
TORCH_FILES = {MANIFEST, "trainable.safetensors", "optimizer.pt", "trainer_state.pt"}


@pytest.fixture(scope="module", autouse=True)
def _restore_dist_env(restore_dist_env) -> None:
    """Every test here runs inside ``restore_dist_env`` (conftest)."""


@pytest.fixture(scope="module")
def batches(tiny_model_config: ModelConfig, make_train_batch) -> list[TrainBatch]:
    """Four steps of 5 sequences (2 + 2 + 1 micro-batches), sampled from the initial model plus noise."""
    model = load_causal_lm(resolve_model_path(tiny_model_config), "float32")
    return [
        make_train_batch(step, 5, model, seed=10 + step, noise=0.3)
        for step in range(STEPS_BEFORE_SAVE + STEPS_AFTER_SAVE)
    ]


def _learner(case: Case, model: ModelConfig) -> Learner:
    return Learner(case.learner, model, case.algorithm, temperature=1.0, total_steps=case.total_steps)


def _weights(learner: Learner) -> dict[str, torch.Tensor]:
    """Every weight (LoRA merged) and, with LoRA, the adapter itself."""
    weights = dict(learner.backend.full_state_dict())
    if learner.config.lora.enabled:
        weights.update({f"adapter/{k}": v for k, v in learner.backend.adapter_state_dict()[0].items()})
    return weights


def _expected_lrs(case: Case, batches: int) -> list[float]:
    """The per-batch ``lr`` metric transformers' scheduler implies: the mean over each batch's optimiser steps."""
    from transformers import get_scheduler

    s, lc = case.algorithm.settings, case.learner
    per_batch = s.num_iterations * s.num_minibatches
    horizon = case.total_steps * per_batch
    optimizer = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=lc.lr)
    name = {"constant": "constant_with_warmup"}.get(lc.lr_scheduler, lc.lr_scheduler)
    schedule = get_scheduler(
        name,
        optimizer,
        num_warmup_steps=lc.warmup_steps or math.ceil(lc.warmup_ratio * horizon),
        num_training_steps=horizon,
    )
    lrs = []
    for _ in range(batches * per_batch):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return [sum(lrs[b * per_batch : (b + 1) * per_batch]) / per_batch for b in range(batches)]


def _assert_same_step(got: TrainResult, want: TrainResult, got_w: dict, want_w: dict, atol: float) -> None:
    assert got.policy_version == want.policy_version
    for key in ("loss", "grad_norm", "lr", *(("kl",) if "kl" in want.metrics else ())):
        assert abs(got.metrics[key] - want.metrics[key]) <= atol, key
    assert got_w.keys() == want_w.keys()
    diff = max(float((got_w[k].float() - want_w[k].float()).abs().max()) for k in want_w)
    assert diff <= atol, diff


@pytest.mark.parametrize("name", list(CASES))
def test_resume_continues_exactly(
    name: str, tiny_model_config: ModelConfig, batches: list[TrainBatch], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    case = CASES[name]
    if case.learner.backend == "deepspeed" and case.learner.zero_stage == 3:
        request.getfixturevalue("zero3_partitions_everything")
    path = str(tmp_path / "ckpt")
    first = _learner(case, tiny_model_config)
    before = [first.train(b) for b in batches[:STEPS_BEFORE_SAVE]]
    info = first.save_checkpoint(path)
    want = [(first.train(b), _weights(first)) for b in batches[STEPS_BEFORE_SAVE:]]

    resumed = _learner(case, tiny_model_config)
    assert resumed.load_checkpoint(path) == resumed.version == STEPS_BEFORE_SAVE
    exact = case.learner.backend == "torch"
    for batch, (want_result, want_weights) in zip(batches[STEPS_BEFORE_SAVE:], want):
        got = resumed.train(batch)
        _assert_same_step(got, want_result, _weights(resumed), want_weights, 0.0 if exact else DEEPSPEED_ATOL)

    assert info["bytes"] == directory_bytes(path) > 0 and info["seconds"] > 0
    files = set(os.listdir(path))
    if exact:
        assert files == TORCH_FILES
    else:
        assert {MANIFEST, "latest", "deepspeed"} <= files
        assert any(f.endswith("optim_states.pt") for f in os.listdir(Path(path, "deepspeed")))
    lrs = [r.metrics["lr"] for r in (*before, *(result for result, _ in want))]
    if case.total_steps is None:
        assert lrs == [case.learner.lr] * len(lrs)  # the default schedule: exactly learner.lr
    else:
        assert lrs == pytest.approx(_expected_lrs(case, len(lrs)), rel=1e-12, abs=0)
        assert len(set(lrs)) == len(lrs)  # precondition: the lr changes at every step


def test_lora_checkpoint_holds_only_the_adapter(
    tiny_model_config: ModelConfig, batches: list[TrainBatch], tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    learner = _learner(CASES["torch-lora-dropout-kl"], tiny_model_config)
    learner.train(batches[0])
    learner.save_checkpoint(str(tmp_path))
    saved = load_file(str(tmp_path / "trainable.safetensors"))
    assert saved and all("lora_A" in k or "lora_B" in k for k in saved)
    assert len(saved) == len(learner.backend.adapter_state_dict()[0])


def test_load_errors_are_one_clear_line(
    tiny_model_config: ModelConfig, batches: list[TrainBatch], tmp_path: Path
) -> None:
    torch_case = Case(LearnerConfig(micro_batch_size=2))
    saved = _learner(torch_case, tiny_model_config)
    saved.train(batches[0])
    path = tmp_path / "ckpt"
    saved.save_checkpoint(str(path))
    fresh = _learner(torch_case, tiny_model_config)

    with pytest.raises(ValueError, match=r"no learner checkpoint at .*missing: the directory does not exist"):
        fresh.load_checkpoint(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=f"not a complete learner checkpoint \\(no {MANIFEST}"):
        fresh.load_checkpoint(str(tmp_path / "empty"))
    lora = _learner(Case(LearnerConfig(micro_batch_size=2, lora=LoraConfig(enabled=True))), tiny_model_config)
    with pytest.raises(ValueError, match=r"another setup \(lora: checkpoint None, learner \{'r': 16"):
        lora.load_checkpoint(str(path))
    deepspeed = _learner(Case(LearnerConfig(backend="deepspeed")), tiny_model_config)
    with pytest.raises(
        ValueError, match="backend: checkpoint 'torch', learner 'deepspeed'; zero_stage: checkpoint None, learner 2"
    ):
        deepspeed.load_checkpoint(str(path))
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["layout"]["world_size"] = 2
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="world_size: checkpoint 2, learner 1") as error:
        fresh.load_checkpoint(str(path))
    assert "\n" not in str(error.value)
    assert fresh.version == 0  # nothing was restored


def test_schedule_config_validates(tiny_model_config: ModelConfig) -> None:
    with pytest.raises(ValidationError, match="warmup_steps=3 and learner.warmup_ratio=0.1 are both set"):
        LearnerConfig(warmup_steps=3, warmup_ratio=0.1)
    with pytest.raises(ValidationError):
        LearnerConfig(warmup_ratio=1.0)
    never_loaded = ModelConfig(path="/nonexistent/never-loaded")  # the check comes before any loading
    for config in (
        LearnerConfig(lr_scheduler="cosine"),
        LearnerConfig(warmup_steps=5),
        LearnerConfig(lr_scheduler="linear", warmup_ratio=0.1),
    ):
        with pytest.raises(ValueError, match="needs the run's length: pass total_steps"):
            Learner(config, never_loaded, AlgorithmConfig(), temperature=1.0)
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        Learner(LearnerConfig(), never_loaded, AlgorithmConfig(), temperature=1.0, total_steps=0)
