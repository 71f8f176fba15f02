import math

import torch
import torch.nn.functional as F

from algorithms.logprobs import sequence_logprobs
from algorithms.preference import dpo_loss, simpo_loss


def test_simpo_by_hand_with_padding_and_different_lengths() -> None:
    # Chosen: 2 tokens, log-probs -1, -3 (sum -4, mean -2); rejected: 4 tokens summing to -12 (mean -3).
    # beta 2, gamma 1: margin = 2 * (-2) - 2 * (-3) = 2 -> loss = -log sigmoid(2 - 1) = log(1 + e^-1).
    chosen = torch.tensor([[-1.0, -3.0, -9.0, -9.0]])  # padding -9 ignored
    rejected = torch.tensor([[-3.0, -3.0, -3.0, -3.0]])
    cw, lw = sequence_logprobs(chosen, torch.tensor([[1, 1, 0, 0]]))
    cl, ll = sequence_logprobs(rejected, torch.ones(1, 4))
    loss, stats = simpo_loss(cw, lw, cl, ll, beta=2.0, gamma=1.0)
    assert torch.isclose(loss, torch.tensor(math.log(1 + math.exp(-1))))
    assert stats["rewards/margin"] == 2.0 and stats["rewards/accuracy"] == 1.0


def test_simpo_is_length_normalised_and_gradient_favours_chosen() -> None:
    # Repeating every token of both answers (double length, same per-token log-probs) leaves SimPO unchanged.
    a, b = simpo_loss(torch.tensor([-4.0]), torch.tensor([2.0]), torch.tensor([-12.0]), torch.tensor([4.0]))
    c, _ = simpo_loss(torch.tensor([-8.0]), torch.tensor([4.0]), torch.tensor([-24.0]), torch.tensor([8.0]))
    assert torch.isclose(a, c)
    # d loss / d log pi(y_w) < 0 (raise chosen), d loss / d log pi(y_l) > 0 (lower rejected).
    w = torch.tensor([-4.0], requires_grad=True)
    lo = torch.tensor([-12.0], requires_grad=True)
    simpo_loss(w, torch.tensor([2.0]), lo, torch.tensor([4.0]))[0].backward()
    # sigma(-(margin - gamma)) = sigma(-1); d/dw = -sigma(-1) * beta / |y_w| = -sigma(-1)
    assert torch.isclose(w.grad, -torch.sigmoid(torch.tensor([-1.0])))
    assert torch.isclose(lo.grad, torch.sigmoid(torch.tensor([-1.0])) * 2.0 / 4.0)


def test_dpo_by_hand() -> None:
    # Policy vs reference: chosen -10 vs -12 (+2), rejected -15 vs -14 (-1); beta 0.1:
    # logits = 0.1 * (2 - (-1)) = 0.3 -> loss = -log sigmoid(0.3).
    loss, stats = dpo_loss(
        torch.tensor([-10.0]), torch.tensor([-15.0]), torch.tensor([-12.0]), torch.tensor([-14.0]), beta=0.1
    )
    assert torch.isclose(loss, -F.logsigmoid(torch.tensor(0.3)))
    assert math.isclose(stats["rewards/chosen"], 0.2, rel_tol=1e-6)
    assert math.isclose(stats["rewards/rejected"], -0.1, rel_tol=1e-5)


def test_dpo_at_the_reference_is_log2_and_pushes_the_right_way() -> None:
    w = torch.tensor([-10.0, -3.0], requires_grad=True)
    lo = torch.tensor([-11.0, -4.0], requires_grad=True)
    loss, stats = dpo_loss(w, lo, w.detach().clone(), lo.detach().clone(), beta=0.1)
    assert torch.isclose(loss, torch.tensor(math.log(2.0)))  # policy == reference
    loss.backward()
    # d/dw = -beta * sigma(0) / B = -0.1 * 0.5 / 2 per pair; opposite sign for rejected.
    assert torch.allclose(w.grad, torch.full((2,), -0.025)) and torch.allclose(lo.grad, torch.full((2,), 0.025))
    assert stats["rewards/accuracy"] == 0.0  # zero margin is not a win
