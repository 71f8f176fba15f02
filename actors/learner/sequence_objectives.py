"""Supervised and preference objectives on whole sequences: their config, tensors and loss.

The offline counterpart of ``actors/learner/objectives.py``: ``collate_sequences``
turns rows of a ``SequenceBatch`` into right-padded tensors with the loss mask
aligned to the logits that predict each token, and ``sequence_loss`` is the one
place the pure losses of ``algorithms/supervised.py`` and
``algorithms/preference.py`` are composed, identically for every backend.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from actors.learner.objectives import LossTotals
from actors.messages import SequenceBatch
from algorithms.logprobs import sequence_logprobs
from algorithms.preference import dpo_loss, simpo_loss
from algorithms.supervised import sft_loss


class SequenceObjective(BaseModel):
    """Which offline objective the learner optimises, with its constants.

    ``sft``: token-mean NLL of the target tokens. ``simpo``: SimPO on pairs,
    ``-log sigmoid(beta/|y_w| log pi(y_w) - beta/|y_l| log pi(y_l) - gamma)``, no
    reference. ``dpo``: sigmoid DPO on pairs against a frozen reference
    (``gamma`` unused).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["sft", "simpo", "dpo"] = Field(default="sft", description="sft, simpo or dpo.")
    beta: float = Field(default=2.0, gt=0, description="Preference temperature beta (simpo, dpo).")
    gamma: float = Field(default=1.0, ge=0, description="SimPO target reward margin gamma.")

    @property
    def pairs(self) -> bool:
        """True when the objective trains on chosen/rejected pairs."""
        return self.name != "sft"

    @property
    def needs_reference(self) -> bool:
        """True when a frozen reference policy must be loaded (DPO)."""
        return self.name == "dpo"


def collate_sequences(batch: SequenceBatch, units: slice) -> dict[str, torch.Tensor]:
    """Right-padded tensors for ``units`` of ``batch`` (both rows of a pair).

    ``loss_mask[b, t]`` is ``loss_masks[b][t + 1]``, so that ``logits[:, t]``
    predict the target it marks; padding has mask 0 and attention 0.
    """
    rows = batch.rows(units)
    seqs, masks = batch.input_ids[rows], batch.loss_masks[rows]
    width = max(len(s) for s in seqs)
    input_ids = torch.zeros(len(seqs), width, dtype=torch.long)
    attention = torch.zeros(len(seqs), width, dtype=torch.long)
    loss_mask = torch.zeros(len(seqs), width - 1)
    for i, (seq, mask) in enumerate(zip(seqs, masks)):
        input_ids[i, : len(seq)] = torch.tensor(seq)
        attention[i, : len(seq)] = 1
        loss_mask[i, : len(seq) - 1] = torch.tensor(mask[1:], dtype=torch.float32)
    return {"input_ids": input_ids, "attention_mask": attention, "loss_mask": loss_mask}


def sequence_loss(
    logps: torch.Tensor,
    tensors: dict[str, torch.Tensor],
    objective: SequenceObjective,
    totals: LossTotals,
    ref_logps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One micro-batch's share of the minibatch loss, and its statistics (means over its units).

    ``logps`` (B, T) are the target tokens' log-probs under the policy,
    ``ref_logps`` under the reference (DPO). ``totals.sequences`` counts the
    minibatch's units, ``totals.tokens`` its target tokens: SFT divides the
    summed NLL by the tokens, a pair loss's mean is weighted by this
    micro-batch's units over the minibatch's, so the parts add up.
    """
    mask = tensors["loss_mask"]
    if objective.name == "sft":
        loss = sft_loss(logps, mask, totals.tokens)
        return loss, {}
    summed, lengths = sequence_logprobs(logps, mask)
    chosen, rejected = summed[0::2], summed[1::2]
    if objective.name == "simpo":
        loss, stats = simpo_loss(chosen, lengths[0::2], rejected, lengths[1::2], objective.beta, objective.gamma)
    else:
        if ref_logps is None:
            raise ValueError("dpo needs the reference policy's log-probs")
        ref, _ = sequence_logprobs(ref_logps, mask)
        loss, stats = dpo_loss(chosen, rejected, ref[0::2], ref[1::2], objective.beta)
    share = len(chosen) / totals.sequences
    stats["logps/chosen"] = float(chosen.detach().mean())
    stats["logps/rejected"] = float(rejected.detach().mean())
    return loss * share, stats
