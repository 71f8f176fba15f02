"""Rollout worker: turns prompts into groups of samples with the current policy.

A ``RolloutWorker`` is a plain class (Ray wraps it at the edge). It owns one
generation backend and the policy version of the weights that backend holds;
every sample it returns is stamped with that version.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field

from actors.messages import PromptItem, RolloutResult, Sample, WeightsUpdate
from actors.models import ModelConfig, default_device, load_causal_lm, load_tokenizer, resolve_model_path
from actors.weight_sync import ObjectStoreWeightSync
from algorithms.logprobs import token_logprobs


class RolloutConfig(BaseModel):
    """Rollout workers and sampling."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["hf"] = Field(default="hf", description="Generation backend: hf (transformers generate). vllm comes with the scale-out backends.")
    num_workers: int = Field(default=1, ge=1, description="Number of rollout worker actors; calls are balanced by outstanding work.")
    num_cpus_per_worker: float = Field(default=1.0, ge=0, description="CPUs Ray reserves for each rollout worker.")
    num_gpus_per_worker: float = Field(default=0.0, ge=0, description="GPUs Ray reserves for each rollout worker.")
    torch_threads: int = Field(default=1, ge=1, description="torch intra-op threads in each worker.")
    group_size: int = Field(default=4, ge=2, description="Samples per prompt (G): the group whose rewards form the baseline.")
    max_new_tokens: int = Field(default=12, ge=1, description="Most tokens generated per sample; longer ones are truncated.")
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature; the learner scales logits by the same value.")


@dataclass(frozen=True)
class GeneratedSequence:
    """One sampled completion. Invariant: ``len(token_ids) == len(logprobs)``."""

    token_ids: list[int]
    logprobs: list[float]
    truncated: bool


class GenerationBackend(Protocol):
    """What a rollout worker needs from an inference engine."""

    def generate(self, prompts: list[list[int]], n: int) -> list[GeneratedSequence]:
        """``n`` samples per prompt, grouped: prompt i's samples at [i*n, (i+1)*n)."""
        ...

    def load_weights(self, update: WeightsUpdate) -> None:
        """Replace the engine's weights with ``update``."""
        ...

    def decode(self, token_ids: list[int]) -> str:
        """Text of a completion, special tokens removed."""
        ...


class HFGenerationBackend:
    """Sampling with ``transformers`` ``generate`` on the GPU Ray granted (else
    the CPU), pure temperature sampling.

    No top-k/top-p, so the recorded log-probs are exactly those of the
    temperature-scaled distribution the learner computes.
    """

    def __init__(self, model_path: str, dtype: str, max_new_tokens: int, temperature: float) -> None:
        self.tokenizer = load_tokenizer(model_path)
        self.device = default_device()
        self.model = load_causal_lm(model_path, dtype).to(self.device).eval()
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id
        self._sync = ObjectStoreWeightSync()

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], n: int) -> list[GeneratedSequence]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        out = self.model.generate(
            input_ids=ids.repeat_interleave(n, dim=0).to(self.device),
            attention_mask=mask.repeat_interleave(n, dim=0).to(self.device),
            do_sample=True, temperature=self.temperature, top_k=0, top_p=1.0,
            max_new_tokens=self.max_new_tokens, eos_token_id=self.eos_id, pad_token_id=self.pad_id,
            output_logits=True, return_dict_in_generate=True,
        )
        new_tokens = out.sequences[:, width:]
        logits = torch.stack(out.logits, dim=1)  # (B*n, T, V), raw (unprocessed) logits
        logps = token_logprobs(logits, new_tokens, self.temperature).cpu()
        new_tokens = new_tokens.cpu()
        return [self._trim(new_tokens[r], logps[r]) for r in range(new_tokens.shape[0])]

    def _trim(self, tokens: torch.Tensor, logps: torch.Tensor) -> GeneratedSequence:
        """Cut at the first EOS (kept: the policy learns to stop)."""
        hits = (tokens == self.eos_id).nonzero()
        end = int(hits[0]) + 1 if len(hits) else len(tokens)
        return GeneratedSequence(tokens[:end].tolist(), logps[:end].tolist(), truncated=not len(hits))

    def load_weights(self, update: WeightsUpdate) -> None:
        self._sync.apply(update, self.model)

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)


class RolloutWorker:
    """Generates groups of samples and tracks the policy version it holds.

    Invariant: every ``Sample`` returned carries the version of the weights that
    generated it; versions only increase.
    """

    def __init__(self, rollout: RolloutConfig, model: ModelConfig, worker_id: int = 0, seed: int = 0) -> None:
        torch.set_num_threads(rollout.torch_threads)
        torch.manual_seed(seed * 1000 + worker_id)
        self.config = rollout
        self.worker_id = worker_id
        self.version = 0
        self.backend: GenerationBackend = HFGenerationBackend(
            resolve_model_path(model), model.dtype, rollout.max_new_tokens, rollout.temperature
        )

    def generate(self, batch_index: int, call_index: int, prompts: list[PromptItem]) -> RolloutResult:
        """``group_size`` samples for each prompt, at the current version.

        Group ids are ``b<batch>c<call>p<position>``: unique per (call, prompt)
        even when a prompt repeats.
        """
        start = time.perf_counter()
        n = self.config.group_size
        seqs = self.backend.generate([p.prompt_token_ids for p in prompts], n)
        samples = [
            Sample(
                prompt=prompts[i // n],
                group_id=f"b{batch_index}c{call_index}p{i // n}",
                group_index=i % n,
                completion_text=self.backend.decode(s.token_ids),
                completion_token_ids=s.token_ids,
                sampling_logprobs=s.logprobs,
                policy_version=self.version,
                truncated=s.truncated,
            )
            for i, s in enumerate(seqs)
        ]
        return RolloutResult(batch_index, samples, time.perf_counter() - start, self.worker_id)

    def update_weights(self, update: WeightsUpdate) -> float:
        """Load newer weights; returns the seconds it took. Older versions are refused."""
        if update.version <= self.version:
            raise ValueError(f"weight update v{update.version} is not newer than v{self.version}")
        start = time.perf_counter()
        self.backend.load_weights(update)
        self.version = update.version
        return time.perf_counter() - start
