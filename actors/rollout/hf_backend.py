"""The HF generation backend: transformers ``generate`` on the policy model, in the worker's process."""

from __future__ import annotations

import time
from typing import Any

import torch

from actors.messages import WeightsUpdate
from actors.model.loading import (
    CausalLM,
    default_device,
    load_causal_lm,
    load_tokenizer,
    resolve_attention,
    resolve_dtype,
)
from actors.rollout.generation import GeneratedSequence
from actors.weights.broadcast import BroadcastGroup, Plan, join_group, receive_buckets
from actors.weights.sync import ObjectStoreWeightSync, load_full_state
from algorithms.logprobs import token_logprobs


class HFGenerationBackend:
    """Sampling with ``transformers`` ``generate`` on the GPU Ray granted (else
    the CPU), pure temperature sampling, or greedy decoding at temperature 0.

    No top-k/top-p, so the recorded log-probs are exactly those of the
    temperature-scaled distribution the learner computes. Greedy decoding
    (``do_sample=False``) draws no random numbers; its recorded log-probs are
    those of the untempered distribution (``token_logprobs`` at temperature 1).
    """

    def __init__(self, model: CausalLM, tokenizer: Any, max_new_tokens: int, temperature: float) -> None:
        """Generation with ``model`` as it is (its device, dtype and weights); ``load`` builds one from a path."""
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id
        self.version = 0
        self.updates_in_flight = False
        self._sync = ObjectStoreWeightSync()
        self._group: BroadcastGroup | None = None

    @classmethod
    def load(
        cls, model_path: str, dtype: str, max_new_tokens: int, temperature: float, attention: str = "auto"
    ) -> HFGenerationBackend:
        """A backend with its own copy of the policy from ``model_path``, on the GPU Ray granted (else the CPU)."""
        device = default_device()
        dtype, attention = resolve_dtype(dtype, device), resolve_attention(attention, device)
        model = load_causal_lm(model_path, dtype, attention).to(device).eval()
        return cls(model, load_tokenizer(model_path), max_new_tokens, temperature)

    async def generate(
        self, prompts: list[list[int]], n: int, temperature: float | None = None, seed: int | None = None
    ) -> list[GeneratedSequence]:
        temperature = self.temperature if temperature is None else temperature
        if seed is None or temperature == 0:  # greedy decoding draws nothing
            return self._generate(prompts, n, temperature)  # blocking on purpose: calls run one at a time, in order
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # no await inside: nothing else draws meanwhile
            torch.manual_seed(seed)
            return self._generate(prompts, n, temperature)

    @torch.no_grad()
    def _generate(self, prompts: list[list[int]], n: int, temperature: float) -> list[GeneratedSequence]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        greedy = temperature == 0
        sampling = (
            {"do_sample": False}
            if greedy
            else {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
        )
        out = self.model.generate(
            input_ids=ids.repeat_interleave(n, dim=0).to(self.device),
            attention_mask=mask.repeat_interleave(n, dim=0).to(self.device),
            **sampling,
            max_new_tokens=self.max_new_tokens,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
        new_tokens = out.sequences[:, width:]
        logits = torch.stack(out.logits, dim=1)  # (B*n, T, V), raw (unprocessed) logits
        logps = token_logprobs(logits, new_tokens, 1.0 if greedy else temperature).cpu()
        new_tokens, finished_at = new_tokens.cpu(), time.time()  # a batched generate returns all at once
        return [self._trim(new_tokens[r], logps[r], finished_at) for r in range(new_tokens.shape[0])]

    def _trim(self, tokens: torch.Tensor, logps: torch.Tensor, finished_at: float) -> GeneratedSequence:
        """Cut at the first EOS (kept: the policy learns to stop)."""
        hits = (tokens == self.eos_id).nonzero()
        end = int(hits[0]) + 1 if len(hits) else len(tokens)
        return GeneratedSequence(
            tokens[:end].tolist(),
            logps[:end].tolist(),
            truncated=not len(hits),
            first_version=self.version,
            last_version=self.version,
            finished_at=finished_at,
        )

    async def load_weights(self, update: WeightsUpdate) -> None:
        self.model = self._sync.apply(update, self.model)  # an adapter update wraps the model with peft once
        self.version = update.version

    async def join_weight_group(self, host: str, port: int, rank: int, world_size: int, backend: str) -> None:
        self._group = join_group(host, port, rank, world_size, backend, self.device)

    async def receive_weights(self, plan: Plan, version: int) -> None:
        if self._group is None:
            raise RuntimeError("receive_weights before join_weight_group")
        state = dict(named for bucket in receive_buckets(self._group, plan, self.device) for named in bucket)
        load_full_state(self.model, state, f"weight broadcast v{version}")
        self.version = version

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def close(self) -> None:
        pass
