"""The first stage of ``Learner.train``: what the settings need before any gradient.

``TrainPreparation`` is a mixin of ``actors.learner.learner.Learner``: it uses the
learner's ``backend``, ``config``, ``settings``, ``rank``, ``world_size`` and
``temperature``. Without gradients, and only as the settings ask, it computes
the *proximal* log-probs (the learner's own under the pre-update weights), the
*reference* log-probs, and per-token advantages with ``-beta * KL`` folded
into the reward (``kl_penalty: reward``).

Its forwards use the gradient pass's micro-batches (``_batching``: by row count
or by token budget, ``micro_batch_plan``). With several ranks each rank forwards
only its ``shard`` of the rows (padding micro-batches keep the collectives in
step) and the shares are summed into every rank's copy; each token has one writer, so the
values arrive unchanged. Invariant: every rank returns the same ``PerToken``
for all rows of the batch.
"""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pad_sequence

from actors.learner.config import LearnerBackend, LearnerConfig
from actors.learner.data_parallel import all_reduce_metrics, micro_batch_plan, row_indices, shard, split_rows
from actors.learner.objectives import PerToken, collate, sequence_lengths
from actors.messages import TrainBatch
from actors.model.loading import eval_mode
from actors.model.logprobs import masked_logprobs
from algorithms.advantages import token_advantages
from algorithms.config import AlgorithmSettings
from algorithms.kl import kl_estimate


class TrainPreparation:
    """Proximal and reference log-probs and KL-reward advantages of a ``TrainBatch`` (module docstring)."""

    backend: LearnerBackend
    config: LearnerConfig
    settings: AlgorithmSettings
    rank: int
    world_size: int
    temperature: float

    def _batching(self, batch: TrainBatch) -> tuple[int, int | None, list[int]]:
        """``micro_batch_plan``'s arguments after rank and world size, for ``batch``: the row cap,
        the token budget and each row's tokens."""
        return self.config.micro_batch_size, self.config.max_tokens_per_micro_batch, sequence_lengths(batch)

    def _prepare(self, batch: TrainBatch, held_reference: list[torch.Tensor] | None = None) -> PerToken:
        """Proximal and reference log-probs and per-token advantages, as the settings need them;
        ``held_reference``: the batch rows' reference log-probs, computed ahead (``forward_ahead``)."""
        s = self.settings
        steps = s.num_iterations * len(split_rows(slice(0, len(batch)), s.num_minibatches))
        reference = s.needs_reference and held_reference is None  # held only when the KL term is on
        per_token = self._no_grad_logprobs(batch, proximal=s.uses_proximal and steps > 1, reference=reference)
        if held_reference is not None:
            per_token["ref_logprobs"] = held_reference
        if s.needs_reference and s.kl_penalty == "reward":
            per_token["advantages"] = self._kl_reward_advantages(batch, per_token["ref_logprobs"])
        return per_token

    @torch.no_grad()
    def _no_grad_logprobs(self, batch: TrainBatch, proximal: bool, reference: bool) -> PerToken:
        """Per-sequence completion log-probs of the current (pre-update) policy and of the reference.

        Every rank returns them for all rows of ``batch``; it computes only its
        ``shard`` of the rows (with padding forwards, see ``micro_batch_plan``)
        and gets the others' through ``_share_rows``.
        """
        out: PerToken = {name: [] for name, on in (("proximal_logprobs", proximal), ("ref_logprobs", reference)) if on}
        if not out:
            return out
        everything = slice(0, len(batch))
        by_row: dict[str, dict[int, torch.Tensor]] = {name: {} for name in out}
        for micro in micro_batch_plan(everything, self.rank, self.world_size, *self._batching(batch)):
            t = {k: v.to(self.backend.device) for k, v in collate(batch, micro.rows).items()}
            keep = t["completion_mask"].bool()
            for name in out:
                logps = self._policy_logprobs(t) if name == "proximal_logprobs" else self._reference_logprobs(t)
                if not micro.padding:
                    by_row[name].update((r, logps[i][keep[i]].cpu()) for i, r in enumerate(row_indices(micro.rows)))
        mine = shard(everything, self.rank, self.world_size)
        for name, values in by_row.items():  # the plan may have sorted the rows: back in row order
            out[name] = [values[r] for r in range(mine.start, mine.stop)]
        return self._share_rows(batch, mine, out)

    def _policy_logprobs(self, t: dict[str, torch.Tensor]) -> torch.Tensor:
        """The current policy's log-probs (B, T-1) at ``t``'s completion positions, in eval mode (no
        dropout), without gradient."""
        with eval_mode(self.backend.model) as model:
            return self._completion_logprobs(model, t)

    def _reference_logprobs(self, t: dict[str, torch.Tensor]) -> torch.Tensor:
        """The frozen reference's log-probs (B, T-1) at ``t``'s completion positions (eval mode)."""
        with self.backend.reference_model() as model:
            return self._completion_logprobs(model, t)

    @torch.no_grad()
    def _completion_logprobs(self, model: torch.nn.Module, t: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, attention, mask = t["input_ids"], t["attention_mask"], t["completion_mask"]
        return masked_logprobs(model, ids, attention, mask, self.temperature, self.backend.logprobs)[0]

    def _share_rows(self, batch: TrainBatch, mine: slice, local: PerToken) -> PerToken:
        """All ranks' rows on every rank, from ``local`` holding rows ``mine`` (unchanged with one rank).

        One flat buffer over every completion token of the batch: each rank
        writes its rows' values, zeros elsewhere, and the buffers are summed
        over ranks. Every token has exactly one writer, so each value arrives
        unchanged (x + 0 == x), in float32.
        """
        if self.world_size == 1:
            return local
        lengths = [len(c) for c in batch.completion_token_ids]
        start = sum(lengths[: mine.start])
        flat = torch.zeros(len(local), sum(lengths))
        for j, values in enumerate(local.values()):
            if values:
                flat[j, start : start + sum(lengths[mine])] = torch.cat(values).float()
        summed = all_reduce_metrics(flat, torch.distributed.ReduceOp.SUM, self.backend.device)
        return {name: list(summed[j].split(lengths)) for j, name in enumerate(local)}

    def _kl_reward_advantages(self, batch: TrainBatch, ref_logprobs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-token advantages with ``-beta * KL(behaviour || reference)`` folded into the reward."""
        s = self.settings
        if len(batch.rewards) != len(batch) or len(batch.group_ids) != len(batch):
            raise ValueError("algorithm.kl_penalty 'reward' needs TrainBatch.rewards and group_ids for every sequence")
        lengths = [len(c) for c in batch.completion_token_ids]
        mask = pad_sequence([torch.ones(n) for n in lengths], batch_first=True)
        behaviour = pad_sequence(
            [torch.tensor(lp, dtype=torch.float32) for lp in batch.sampling_logprobs], batch_first=True
        )
        kl = kl_estimate(behaviour, pad_sequence(ref_logprobs, batch_first=True), s.kl_estimator)
        adv = token_advantages(
            torch.tensor(batch.rewards),
            torch.tensor(batch.group_ids),
            mask,
            kl,
            s.beta,
            s.baseline,
            s.scale_rewards,
            s.whiten_advantages,
        )
        return [adv[i, :n] for i, n in enumerate(lengths)]
