"""Per-token KL estimators between the policy and a frozen reference (pure torch).

With samples drawn from the policy pi and ``d = log ref - log pi`` per token
(Schulman, "Approximating KL divergence", 2020), each estimates KL(pi || ref):

- k1 = -d                 unbiased, can be negative per token;
- k2 = d^2 / 2            biased, >= 0; its gradient is the reverse-KL gradient;
- k3 = e^d - d - 1        unbiased, >= 0, low variance (GRPO's choice).
"""

from __future__ import annotations

from typing import Literal

import torch

KlEstimator = Literal["k1", "k2", "k3"]


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KlEstimator = "k3") -> torch.Tensor:
    """Per-token KL estimate, same shape as the inputs. Gradients flow through
    ``logprobs`` (the policy's); ``ref_logprobs`` are constants."""
    d = ref_logprobs.detach() - logprobs
    if estimator == "k1":
        return -d
    if estimator == "k2":
        return 0.5 * d**2
    if estimator == "k3":
        return torch.exp(d) - d - 1.0
    raise ValueError(f"unknown KL estimator {estimator!r}")
