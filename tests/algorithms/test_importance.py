import math

import pytest
import torch

from algorithms.importance import rollout_correction_weights


def test_token_level_truncation_and_masking_by_hand() -> None:
    # prox - behav per token: ln 0.5, ln 1.5, ln 4 (sequence 0); ln 3 then padding (sequence 1).
    # Raw ratios 0.5, 1.5, 4, 3; cap 2.
    prox = torch.log(torch.tensor([[0.5, 1.5, 4.0], [3.0, 1.0, 1.0]]))
    behav = torch.zeros(2, 3)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    w, stats = rollout_correction_weights(prox, behav, mask, "token", "truncate", cap=2.0)
    # truncate: min(r, 2) -> 0.5, 1.5, 2, 2 (padding ratio 1, irrelevant)
    assert torch.allclose(w[mask.bool()], torch.tensor([0.5, 1.5, 2.0, 2.0]))
    # stats over the 4 real tokens: mean (0.5 + 1.5 + 4 + 3) / 4 = 2.25, max 4, 2 of 4 capped
    assert stats["is/ratio_mean"] == pytest.approx(2.25) and stats["is/ratio_max"] == pytest.approx(4.0)
    assert stats["is/clipped_frac"] == 0.5
    w, _ = rollout_correction_weights(prox, behav, mask, "token", "mask", cap=2.0)
    # mask: tokens above the cap leave the loss -> 0.5, 1.5, 0, 0
    assert torch.allclose(w[mask.bool()], torch.tensor([0.5, 1.5, 0.0, 0.0]))


def test_sequence_level_is_the_product_of_token_ratios() -> None:
    # Sequence 0: ratios 1.2 and 1.5 -> 1.8; sequence 1: 0.9 then padding (ratio 50, ignored) -> 0.9.
    prox = torch.log(torch.tensor([[1.2, 1.5], [0.9, 50.0]]))
    mask = torch.tensor([[1, 1], [1, 0]])
    w, stats = rollout_correction_weights(prox, torch.zeros(2, 2), mask, "sequence", "truncate", cap=1.5)
    assert w.shape == (2, 1)
    assert torch.allclose(w, torch.tensor([[1.5], [0.9]]))  # 1.8 truncated at 1.5
    assert stats["is/ratio_max"] == pytest.approx(1.8) and stats["is/ratio_mean"] == pytest.approx(1.35)
    assert stats["is/clipped_frac"] == 0.5
    w, _ = rollout_correction_weights(prox, torch.zeros(2, 2), mask, "sequence", "mask", cap=1.5)
    assert torch.allclose(w, torch.tensor([[0.0], [0.9]]))


def test_weights_are_detached_and_one_when_engines_agree() -> None:
    prox = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    w, stats = rollout_correction_weights(prox, prox.detach().clone(), torch.ones(1, 2))
    assert not w.requires_grad and torch.equal(w, torch.ones(1, 2))
    assert stats == {"is/ratio_mean": 1.0, "is/ratio_max": 1.0, "is/clipped_frac": 0.0}
    with pytest.raises(ValueError, match="cap"):
        rollout_correction_weights(prox, prox, torch.ones(1, 2), cap=1.0)


def test_huge_sequence_ratio_stays_finite() -> None:
    # 100 tokens each with log-ratio 1: the product e^100 would overflow float32; stats stay finite.
    w, stats = rollout_correction_weights(
        torch.ones(1, 100), torch.zeros(1, 100), torch.ones(1, 100), "sequence", "truncate", cap=3.0
    )
    assert w.item() == 3.0 and math.isfinite(stats["is/ratio_max"])
