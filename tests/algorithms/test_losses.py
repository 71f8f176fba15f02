import math

import torch

from algorithms.logprobs import masked_mean, token_logprobs
from algorithms.losses import grpo_loss, gspo_loss


def test_token_logprobs_by_hand() -> None:
    # Two-token vocabulary, logits (0, ln 3): probabilities 1/4, 3/4.
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    lp = token_logprobs(logits, torch.tensor([[1]]))
    assert torch.allclose(lp, torch.tensor([[math.log(0.75)]]))
    # Temperature 2 halves the logits: (0, ln 3 / 2) -> p1 = sqrt3 / (1 + sqrt3).
    lp_t = token_logprobs(logits, torch.tensor([[1]]), temperature=2.0)
    s3 = math.sqrt(3.0)
    assert torch.allclose(lp_t, torch.tensor([[math.log(s3 / (1 + s3))]]))


def test_masked_mean_ignores_padding() -> None:
    v = torch.tensor([[1.0, 2.0, 100.0], [4.0, 100.0, 100.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert torch.allclose(masked_mean(v, m, dim=-1), torch.tensor([1.5, 4.0]))
    assert torch.allclose(masked_mean(v, m), torch.tensor(7.0 / 3.0))


def test_grpo_on_policy_loss_and_gradient() -> None:
    # With ratio 1 the loss value is -mean(A) and d loss / d logp_t = -A / (n_i * B).
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.7, 0.0]], requires_grad=True)
    old = logp.detach().clone()
    adv = torch.tensor([2.0, -1.0])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    loss, stats = grpo_loss(logp, old, adv, mask)
    assert torch.isclose(loss, torch.tensor(-0.5))  # -(2 + -1) / 2
    loss.backward()
    expected = torch.tensor([[-2 / 6, -2 / 6, -2 / 6], [1 / 4, 1 / 4, 0.0]])
    assert torch.allclose(logp.grad, expected)
    assert stats["clip/frac"] == 0.0


def test_grpo_clipping_by_hand() -> None:
    # ratio = e^0.5 ~ 1.6487 > 1.2 with A = 1: clipped term 1.2 is the min -> loss -1.2,
    # and no gradient flows through the clipped token.
    logp = torch.tensor([[0.5]], requires_grad=True)
    loss, stats = grpo_loss(logp, torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1))
    assert torch.isclose(loss, torch.tensor(-1.2))
    loss.backward()
    assert logp.grad.abs().sum() == 0
    assert stats["clip/frac"] == 1.0
    # With A = -1 the unclipped term -1.6487 is the min -> loss +1.6487, gradient e^0.5.
    logp2 = torch.tensor([[0.5]], requires_grad=True)
    loss2, _ = grpo_loss(logp2, torch.zeros(1, 1), torch.tensor([-1.0]), torch.ones(1, 1))
    assert torch.isclose(loss2, torch.tensor(math.exp(0.5)))
    loss2.backward()
    assert torch.isclose(logp2.grad, torch.tensor([[math.exp(0.5)]]))


def test_gspo_sequence_ratio_by_hand() -> None:
    # Sequence 0: token log-ratios 1e-4 and 3e-4 (mean 2e-4), padding ignored;
    # s = e^2e-4 is inside [1-3e-4, 1+4e-4], A = 1 -> term s.
    # Sequence 1: log-ratio 1e-3 -> s = e^1e-3 > 1+4e-4, A = 1 -> clipped to 1.0004.
    logp = torch.tensor([[1e-4, 3e-4, 5.0], [1e-3, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    loss, stats = gspo_loss(logp, torch.zeros(2, 3), torch.tensor([1.0, 1.0]), mask)
    expected = -(math.exp(2e-4) + 1.0004) / 2
    assert abs(float(loss) - expected) < 1e-6
    assert stats["clip/frac"] == 0.5


def test_gspo_equals_grpo_gradient_at_ratio_one_for_equal_lengths() -> None:
    # At ratio 1 both gradients are -A_i / (n_i * B) per token.
    logp = torch.randn(3, 4)
    mask = torch.ones(3, 4)
    adv = torch.tensor([1.0, -0.5, 2.0])
    a = logp.clone().requires_grad_(True)
    b = logp.clone().requires_grad_(True)
    grpo_loss(a, logp, adv, mask)[0].backward()
    gspo_loss(b, logp, adv, mask)[0].backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-6)
