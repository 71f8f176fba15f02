"""The learner in bfloat16: float32 master weights (mixed precision), and log-prob passes without dropout.

bf16 runs on the CPU, so the GPU situation is constructed here: the built-in
model in ``model.dtype=bfloat16`` at a real run's learning rate (1e-5).
"""

from __future__ import annotations

import pytest
import torch

from actors.learner.learner import Learner, LearnerConfig
from actors.messages import TrainBatch
from actors.model.loading import ModelConfig, load_causal_lm, resolve_model_path
from algorithms.config import AlgorithmConfig

STEPS = 10


def _batch(step: int) -> TrainBatch:
    """Eight random 6 + 6-token sequences, advantages +-1 (a fixed seed per step)."""
    g = torch.Generator().manual_seed(step)
    ids = torch.randint(3, 1000, (8, 12), generator=g).tolist()
    return TrainBatch(
        step=step,
        prompt_token_ids=[r[:6] for r in ids],
        completion_token_ids=[r[6:] for r in ids],
        sampling_logprobs=[[-6.9] * 6] * 8,
        advantages=[1.0, -1.0] * 4,
        policy_versions=[step] * 8,
    )


def _layer_updates(model: ModelConfig, precision: str) -> tuple[Learner, torch.Tensor]:
    """The learner after ``STEPS`` steps at lr 1e-5, and the flat update of its layers' weights."""
    torch.manual_seed(0)
    learner = Learner(LearnerConfig(lr=1e-5, precision=precision), model, AlgorithmConfig(), 1.0)
    params = dict(learner.backend.model.named_parameters())
    names = [n for n in params if ".layers." in n]
    before = {n: params[n].detach().float().clone() for n in names}
    for step in range(STEPS):
        learner.train(_batch(step))
    return learner, torch.cat([(params[n].detach().float() - before[n]).flatten() for n in names])


@pytest.fixture(scope="module")
def fp32_updates(tiny_model_config) -> torch.Tensor:
    return _layer_updates(ModelConfig(cache_dir=tiny_model_config.cache_dir, dtype="float32"), "mixed")[1]


def test_bf16_mixed_precision_moves_the_weights_as_float32_does(tiny_model_config, fp32_updates) -> None:
    """Tolerance: pure bf16 drops every update below half a bf16 step (|dw| < 2^-9 |w|), which at
    lr 1e-5 is nearly all of them (relative error ~1; asserted below). Mixed precision keeps float32
    master weights and Adam state, so its updates differ from float32's only through gradients
    computed in bf16: Adam divides each gradient by its own running scale, so a relative gradient
    error of a few bf16 roundings (u = 2^-8 each) per layer gives an update error of the same order;
    0.1 allows about 25 u."""
    bf16 = ModelConfig(cache_dir=tiny_model_config.cache_dir, dtype="bfloat16")
    learner, mixed = _layer_updates(bf16, "mixed")
    assert learner.backend.param_dtype == "float32" and learner.backend.compute_dtype == "bfloat16"
    assert all(p.dtype == torch.float32 for p in learner.backend.model.parameters())  # the master weights
    assert all(v.dtype == torch.bfloat16 for v in learner.backend.full_state_dict().values())  # what engines run
    assert float((mixed - fp32_updates).norm() / fp32_updates.norm()) < 0.1
    assert float((mixed != 0).float().mean()) > 0.99  # every weight moved, as in float32

    _, pure = _layer_updates(bf16, "pure")
    assert float((pure - fp32_updates).norm() / fp32_updates.norm()) > 0.5  # what mixed precision fixes
    assert float((pure != 0).float().mean()) < 0.5


def test_pure_bf16_is_only_for_the_torch_backend() -> None:
    with pytest.raises(ValueError, match="precision=pure needs learner.backend=torch"):
        LearnerConfig(backend="deepspeed", precision="pure")


@pytest.fixture(scope="module")
def dropout_model(tiny_model_config, tmp_path_factory) -> ModelConfig:
    """The built-in model with attention dropout 0.5 in its config, as some checkpoints ship."""
    net = load_causal_lm(resolve_model_path(tiny_model_config), "float32")
    net.config.attention_dropout = 0.5
    path = tmp_path_factory.mktemp("dropout-model")
    net.save_pretrained(path)
    return ModelConfig(path=str(path), cache_dir=tiny_model_config.cache_dir)


def test_log_prob_passes_are_free_of_dropout(dropout_model) -> None:
    """The proximal pass (no gradient) is deterministic, and the gradient pass computes the same
    log-probs at the same weights: the first minibatch's ratio to the proximal policy is exactly 1."""
    from actors.learner.objectives import collate, forward_logprobs

    learner = Learner(LearnerConfig(), dropout_model, AlgorithmConfig(num_iterations=2), 1.0)
    learner.backend.model.train()  # as in a step
    batch = _batch(0)
    first = learner._no_grad_logprobs(batch, proximal=True, reference=False)["proximal_logprobs"]
    again = learner._no_grad_logprobs(batch, proximal=True, reference=False)["proximal_logprobs"]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    t = collate(batch, slice(0, len(batch)))
    with torch.no_grad():
        grad_pass, _ = forward_logprobs(learner.backend.model, t, 1.0, learner.backend.logprobs)
    keep = t["completion_mask"].bool()
    assert all(torch.allclose(grad_pass[i][keep[i]], first[i], atol=1e-6) for i in range(len(batch)))


def test_dropout_stays_on_when_asked_for(dropout_model) -> None:
    learner = Learner(LearnerConfig(disable_dropout=False), dropout_model, AlgorithmConfig(), 1.0)
    rates = [m.attention_dropout for m in learner.backend.model.modules() if hasattr(m, "attention_dropout")]
    assert rates and all(r == 0.5 for r in rates)
