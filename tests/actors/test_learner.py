import math

import pytest
import torch

from actors.learner import Learner, LearnerConfig, LoraConfig, collate
from actors.messages import TrainBatch
from actors.models import load_causal_lm, resolve_model_path
from actors.weight_sync import ObjectStoreWeightSync
from algorithms.config import AlgorithmConfig


def _batch(step: int = 0) -> TrainBatch:
    return TrainBatch(
        step=step,
        prompt_token_ids=[[1, 10, 11], [1, 12]],
        completion_token_ids=[[20, 21, 2], [22]],
        sampling_logprobs=[[-6.9, -6.9, -6.9], [-6.9]],
        advantages=[1.0, -1.0],
        policy_versions=[step, step],
    )


def test_collate_aligns_completion_mask_with_next_token() -> None:
    t = collate(_batch(), slice(0, 2))
    assert t["input_ids"].tolist() == [[1, 10, 11, 20, 21, 2], [1, 12, 22, 0, 0, 0]]
    # position t predicts token t+1: completion tokens start at index len(prompt) - 1
    assert t["completion_mask"].tolist() == [[0, 0, 1, 1, 1], [0, 1, 0, 0, 0]]
    assert t["old_logprobs"][1].tolist()[1] == pytest.approx(-6.9)
    assert t["attention_mask"].tolist()[1] == [1, 1, 1, 0, 0, 0]


def test_train_step_updates_weights_and_version(tiny_model_config) -> None:
    learner = Learner(LearnerConfig(lr=1e-2), tiny_model_config, AlgorithmConfig(), temperature=1.0)
    before = {k: v.clone() for k, v in learner.backend.model.state_dict().items()}
    result = learner.train(_batch(0))
    assert result.policy_version == learner.version == 1
    assert math.isfinite(result.metrics["loss"]) and result.metrics["grad_norm"] > 0
    after = learner.backend.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="learner is at version 1 but got the batch for step 0"):
        learner.train(_batch(0))


def test_micro_batches_give_the_same_gradient(tiny_model_config) -> None:
    """Accumulating two micro-batches equals one full batch (sequence-mean loss).

    Gradients are compared, not post-Adam weights: Adam's first step is about
    lr * sign(g), which turns float noise in near-zero gradients into lr-sized
    differences.
    """
    grads = []
    for micro in (2, 1):
        learner = Learner(LearnerConfig(lr=1e-2, micro_batch_size=micro), tiny_model_config, AlgorithmConfig(), 1.0)
        step = learner.backend.step
        learner.backend.step = lambda step=step, m=learner.backend.model: (
            grads.append({n: p.grad.clone() for n, p in m.named_parameters()}), step())[1]
        learner.train(_batch())
    for name in grads[0]:
        a, b = grads[0][name], grads[1][name]
        assert (a - b).norm() <= 1e-4 * a.norm(), name  # equal up to float summation order


def test_export_round_trip_reproduces_policy(tiny_model_config) -> None:
    learner = Learner(LearnerConfig(lr=1e-2), tiny_model_config, AlgorithmConfig(name="gspo"), 1.0)
    learner.train(_batch())
    update = learner.export_weights()
    assert update.version == 1
    target = load_causal_lm(resolve_model_path(tiny_model_config), "float32")
    ObjectStoreWeightSync().apply(update, target)
    ids = torch.tensor([[1, 10, 11, 20]])
    with torch.no_grad():
        assert torch.allclose(target(input_ids=ids).logits, learner.backend.model(input_ids=ids).logits, atol=1e-6)


def test_lora_export_is_merged_and_training_model_stays_unmerged(tiny_model_config) -> None:
    learner = Learner(LearnerConfig(lr=5e-2, lora=LoraConfig(enabled=True, r=4, alpha=8)),
                      tiny_model_config, AlgorithmConfig(), 1.0)
    learner.train(_batch())
    update = learner.export_weights()
    assert not any("lora" in k for k in update.tensors)
    target = load_causal_lm(resolve_model_path(tiny_model_config), "float32")
    ObjectStoreWeightSync().apply(update, target)
    ids = torch.tensor([[1, 10, 11, 20]])
    with torch.no_grad():
        assert torch.allclose(target(input_ids=ids).logits, learner.backend.model(input_ids=ids).logits, atol=1e-5)
    # only adapter weights are trainable, and a second step still works on the unmerged model
    trainable = [n for n, p in learner.backend.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    learner.train(_batch(1))


def test_bf16_weights_travel_through_numpy(tiny_model_config) -> None:
    net = load_causal_lm(resolve_model_path(tiny_model_config), "bfloat16")
    sync = ObjectStoreWeightSync()
    update = sync.export(net.state_dict(), version=3)
    target = load_causal_lm(resolve_model_path(tiny_model_config), "bfloat16")
    with torch.no_grad():
        for p in target.parameters():
            p.zero_()
    sync.apply(update, target)
    for (name, a), b in zip(net.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), name


def test_lora_export_never_modifies_the_training_model(tiny_model_config) -> None:
    """Exports compute W + delta on the side; in bf16 an in-place merge/unmerge would drift W."""
    from actors.models import ModelConfig

    cfg = ModelConfig(cache_dir=tiny_model_config.cache_dir, dtype="bfloat16")
    learner = Learner(LearnerConfig(lr=5e-2, lora=LoraConfig(enabled=True, r=4, alpha=8)), cfg, AlgorithmConfig(), 1.0)
    learner.train(_batch())
    before = {k: v.clone() for k, v in learner.backend.model.state_dict().items()}
    for _ in range(3):
        learner.export_weights()
    after = learner.backend.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
