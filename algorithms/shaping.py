"""Reward shaping applied before advantages (pure torch)."""

from __future__ import annotations

import torch


def soft_overlong_penalty(lengths: torch.Tensor, max_length: int, buffer: int, factor: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), times ``factor``.

    With ``L = max_length`` and the ramp over the last ``buffer`` tokens:
    0 for ``len <= L - buffer``; ``((L - buffer) - len) / buffer`` for
    ``L - buffer < len <= L`` (falling linearly to -1 at ``len = L``); -1 beyond L.
    ``buffer = 0`` disables it (all zeros). Shape of ``lengths``.
    """
    if buffer < 0 or buffer > max_length:
        raise ValueError(f"overlong buffer must be in [0, max_length={max_length}], got {buffer}")
    lengths = lengths.float()
    if buffer == 0:
        return torch.zeros_like(lengths)
    start = max_length - buffer
    ramp = (start - lengths) / buffer
    penalty = torch.where(lengths <= start, torch.zeros_like(lengths), ramp)
    return factor * torch.where(lengths > max_length, torch.full_like(lengths, -1.0), penalty)
