"""Offline objectives: tensor alignment, hand-derived losses, micro-batch invariance, scoring on the learner."""

from __future__ import annotations

import math

import pytest
import torch

from actors.learner.learner import Learner, LearnerConfig, LoraConfig
from actors.learner.objectives import LossTotals
from actors.learner.sequence_objectives import SequenceObjective, collate_sequences, sequence_loss
from actors.messages import SequenceBatch
from algorithms.config import AlgorithmConfig


def test_collate_aligns_the_mask_with_the_predicting_logits() -> None:
    batch = SequenceBatch(0, [[5, 6, 7], [8, 9]], [[0, 1, 1], [0, 1]])
    t = collate_sequences(batch, slice(0, 2))
    assert t["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert t["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert t["loss_mask"].tolist() == [[1.0, 1.0], [1.0, 0.0]]  # logits[:, t] predict token t + 1


def test_sft_loss_is_the_token_mean_nll_of_the_minibatch() -> None:
    logps = torch.tensor([[-1.0, -2.0], [-3.0, -9.0]])
    t = {"loss_mask": torch.tensor([[1.0, 1.0], [1.0, 0.0]])}
    loss, _ = sequence_loss(logps, t, SequenceObjective(name="sft"), LossTotals(2, 3))
    assert loss.item() == pytest.approx(2.0)  # (1 + 2 + 3) / 3
    part, _ = sequence_loss(
        logps[:1], {"loss_mask": t["loss_mask"][:1]}, SequenceObjective(name="sft"), LossTotals(2, 3)
    )
    assert part.item() == pytest.approx(1.0)  # this micro-batch's share: (1 + 2) / 3


def test_simpo_pairs_by_hand_and_weighted_by_share() -> None:
    # pair: chosen mean log-prob -1 (2 tokens), rejected mean -2 (1 token); beta 2, gamma 1:
    # margin 2 * (-1) - 2 * (-2) = 2, loss = -log sigmoid(2 - 1) = log(1 + e^-1); share 1 of 2 pairs.
    logps = torch.tensor([[-1.0, -1.0], [-2.0, -5.0]])
    t = {"loss_mask": torch.tensor([[1.0, 1.0], [1.0, 0.0]])}
    loss, stats = sequence_loss(logps, t, SequenceObjective(name="simpo"), LossTotals(2, 3))
    assert loss.item() == pytest.approx(0.5 * math.log(1 + math.exp(-1)))
    assert stats["rewards/margin"] == pytest.approx(2.0) and stats["rewards/accuracy"] == 1.0
    assert stats["logps/chosen"] == -2.0 and stats["logps/rejected"] == -2.0


def test_dpo_needs_and_uses_the_reference() -> None:
    logps = torch.tensor([[-1.0], [-2.0]])
    ref = torch.tensor([[-1.5], [-1.5]])
    t = {"loss_mask": torch.ones(2, 1)}
    objective = SequenceObjective(name="dpo", beta=0.1)
    loss, stats = sequence_loss(logps, t, objective, LossTotals(1, 2), ref)
    # rewards 0.1 * 0.5 and 0.1 * -0.5: margin 0.1
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.1))))
    assert stats["rewards/chosen"] == pytest.approx(0.05) and stats["rewards/margin"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="reference"):
        sequence_loss(logps, t, objective, LossTotals(1, 2))


def _batch(step: int, pairs: bool) -> SequenceBatch:
    g = torch.Generator().manual_seed(step)
    ids = [torch.randint(3, 300, (int(n),), generator=g).tolist() for n in (9, 6, 12, 7, 8, 10)]
    masks = [[0] * 4 + [1] * (len(s) - 4) for s in ids]
    return SequenceBatch(step, ids, masks, pairs=pairs)


@pytest.mark.parametrize("name", ["sft", "simpo", "dpo"])
def test_micro_batches_do_not_change_the_step(tiny_model_config, name: str) -> None:
    objective = SequenceObjective(name=name, beta=0.1 if name == "dpo" else 2.0)
    results = []
    for micro in (1, 64):
        learner = Learner(
            LearnerConfig(micro_batch_size=micro), tiny_model_config, AlgorithmConfig(), 1.0, objective=objective
        )
        results.append(learner.train_sequences(_batch(0, objective.pairs)).metrics)
        results[-1]["weight"] = float(next(learner.backend.model.parameters()).detach().sum())
    for key in ("loss", "grad_norm", "weight"):
        assert results[0][key] == pytest.approx(results[1][key], rel=1e-5, abs=1e-6), key


def test_scoring_sums_and_normalises_and_turns_the_adapter_off(tiny_model_config) -> None:
    lora = LoraConfig(enabled=True, r=4, alpha=8)
    learner = Learner(
        LearnerConfig(lora=lora, lr=1e-2),
        tiny_model_config,
        AlgorithmConfig(),
        1.0,
        objective=SequenceObjective(name="sft"),
    )
    batch = _batch(0, pairs=False)
    before = learner.score_sequences(batch)
    assert before[0]["tokens"] == 5 and before[0]["logp_mean"] == pytest.approx(before[0]["logp_sum"] / 5)
    for _ in range(3):
        learner.train_sequences(SequenceBatch(learner.version, batch.input_ids, batch.loss_masks))
    after, base = learner.score_sequences(batch), learner.score_sequences(batch, adapter=False)
    assert sum(r["logp_sum"] for r in after) > sum(r["logp_sum"] for r in before) + 1.0  # trained on these rows
    assert [r["logp_sum"] for r in base] == pytest.approx([r["logp_sum"] for r in before], abs=1e-4)
