import pytest
import torch

from algorithms.shaping import soft_overlong_penalty


def test_soft_overlong_penalty_by_hand() -> None:
    # L_max 20, buffer 4: free up to 16 tokens, then (16 - len) / 4, -1 at 20, -1 beyond.
    lengths = torch.tensor([10, 16, 17, 18, 20, 25])
    out = soft_overlong_penalty(lengths, max_length=20, buffer=4)
    assert torch.allclose(out, torch.tensor([0.0, 0.0, -0.25, -0.5, -1.0, -1.0]))
    # factor scales it; buffer 0 disables it
    assert torch.allclose(soft_overlong_penalty(lengths, 20, 4, factor=0.5), out * 0.5)
    assert torch.equal(soft_overlong_penalty(lengths, 20, 0), torch.zeros(6))
    with pytest.raises(ValueError):
        soft_overlong_penalty(lengths, 20, 21)
