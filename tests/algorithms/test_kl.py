import math

import pytest
import torch

from algorithms.kl import kl_estimate


def test_kl_estimators_by_hand() -> None:
    # log pi = -1, log ref = -2 -> d = log ref - log pi = -1:
    #   k1 = 1, k2 = 1/2, k3 = e^-1 + 1 - 1 = e^-1.
    # log pi = -2, log ref = -1 -> d = +1: k1 = -1 (negative per token), k2 = 1/2, k3 = e - 2.
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-2.0, -1.0]])
    assert torch.allclose(kl_estimate(logp, ref, "k1"), torch.tensor([[1.0, -1.0]]))
    assert torch.allclose(kl_estimate(logp, ref, "k2"), torch.tensor([[0.5, 0.5]]))
    assert torch.allclose(kl_estimate(logp, ref, "k3"), torch.tensor([[math.exp(-1), math.e - 2]]))
    with pytest.raises(ValueError):
        kl_estimate(logp, ref, "k4")


def test_kl_estimators_vanish_when_policy_equals_reference() -> None:
    logp = torch.tensor([[-0.3, -1.7, -4.0]])
    for est in ("k1", "k2", "k3"):
        assert torch.equal(kl_estimate(logp, logp.clone(), est), torch.zeros(1, 3)), est


def test_kl_gradients_by_hand() -> None:
    # d/dlogp with d = ref - logp: k1 -> 1; k2 -> -(d) = logp - ref; k3 -> 1 - e^d.
    # At logp = -1, ref = -2 (d = -1): k1 1, k2 1, k3 1 - e^-1 (pushes logp down toward ref).
    for est, expected in (("k1", 1.0), ("k2", 1.0), ("k3", 1 - math.exp(-1))):
        logp = torch.tensor([-1.0], requires_grad=True)
        kl_estimate(logp, torch.tensor([-2.0]), est).sum().backward()
        assert torch.isclose(logp.grad, torch.tensor([expected])), est
    # At logp = ref, k3's gradient is 0 (a minimum); the reference never gets a gradient.
    logp = torch.tensor([-1.0], requires_grad=True)
    ref = torch.tensor([-1.0], requires_grad=True)
    kl_estimate(logp, ref, "k3").sum().backward()
    assert logp.grad.item() == 0.0 and ref.grad is None
