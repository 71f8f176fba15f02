"""The learner and the rollout worker in one process, on one device (``pipeline.placement:
colocated`` with HF generation).

``ColocatedWorker`` holds a ``Learner`` (one rank) and a ``RolloutWorker`` whose generation
backend, ``PolicyGeneration``, samples with the learner's policy module itself: one copy of the
weights, no weight sync, and with LoRA the live adapter. The driver sees it twice, as the
learner group's only rank and as the only rollout worker (``ray_jobs/runtime/learner_group.py``,
``ray_jobs/rl/actor_set.py``).

Invariants:

- A generation and an optimiser step never overlap. Ray runs this actor's calls on one event
  loop and both block it (HF ``generate`` runs to completion inside its call, the learner's step
  too), so the device alternates between them in the order the calls arrive; with
  ``pipeline.max_staleness`` k >= 1 the next batches' generations fill the time the judge scores.
- Every sample is stamped with the learner version whose weights generated it: the generation
  backend's version is set in the same blocking call that changed the weights (``train``,
  ``load_checkpoint``), before any other call can run.
- Sampling draws from a random stream of its own, as a separate worker process would (the
  learner's dropout keeps the process's stream): ``rng_state`` saves it in checkpoints and a
  resumed run samples what the uninterrupted one would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from actors.learner.config import LearnerConfig
from actors.learner.learner import Learner
from actors.learner.sequence_objectives import SequenceObjective
from actors.messages import PromptItem, RolloutResult, TrainBatch, TrainResult, WeightsUpdate
from actors.model.loading import ModelConfig, eval_mode, load_tokenizer, resolve_model_path
from actors.rollout.generation import GeneratedSequence
from actors.rollout.hf_backend import HFGenerationBackend
from actors.rollout.worker import RolloutConfig, RolloutWorker
from actors.weights.broadcast import Plan
from algorithms.config import AlgorithmConfig


class PolicyGeneration:
    """HF generation on a learner's policy module (``bind``): in eval mode and without gradient
    for the call, under autocast to the learner's compute dtype when its weights are kept in
    float32 (mixed precision), drawing from a sampling random stream of its own."""

    def __init__(self, model: ModelConfig, rollout: RolloutConfig, sampling_seed: int) -> None:
        self.tokenizer = load_tokenizer(resolve_model_path(model))
        self.max_new_tokens, self.temperature = rollout.max_new_tokens, rollout.temperature
        self.version = 0
        self.updates_in_flight = False
        self._seed = sampling_seed
        self._cpu_rng = torch.Generator().manual_seed(sampling_seed).get_state()
        self._cuda_rng: torch.Tensor | None = None
        self._hf: HFGenerationBackend | None = None
        self._autocast: torch.dtype | None = None

    def bind(self, model: torch.nn.Module, compute_dtype: str, param_dtype: str) -> None:
        """Generate with ``model`` (the learner's policy) from now on."""
        self._hf = HFGenerationBackend(model, self.tokenizer, self.max_new_tokens, self.temperature)
        self._autocast = getattr(torch, compute_dtype) if compute_dtype != param_dtype else None
        if self._hf.device.type == "cuda" and self._cuda_rng is None:
            with torch.random.fork_rng(devices=[self._hf.device]):
                torch.cuda.manual_seed(self._seed)
                self._cuda_rng = torch.cuda.get_rng_state(self._hf.device)

    @property
    def model(self) -> torch.nn.Module:
        return self._bound().model

    def _bound(self) -> HFGenerationBackend:
        if self._hf is None:
            raise RuntimeError("PolicyGeneration.generate before bind: no policy to generate with")
        return self._hf

    @contextlib.contextmanager
    def _sampling_stream(self) -> Iterator[None]:
        """The process's random state swapped for the sampling stream's for the block, and back."""
        device = self._bound().device
        cuda = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.set_rng_state(self._cpu_rng)
            if cuda and self._cuda_rng is not None:
                torch.cuda.set_rng_state(self._cuda_rng, device)
            yield
            self._cpu_rng = torch.get_rng_state()
            if cuda:
                self._cuda_rng = torch.cuda.get_rng_state(device)

    async def generate(
        self, prompts: list[list[int]], n: int, temperature: float | None = None, seed: int | None = None
    ) -> list[GeneratedSequence]:
        hf = self._bound()
        hf.version = self.version
        precision = torch.autocast(hf.device.type, dtype=self._autocast) if self._autocast else contextlib.nullcontext()
        with eval_mode(hf.model), self._sampling_stream(), precision:  # no await inside: it blocks the loop
            return await hf.generate(prompts, n, temperature, seed)

    def rng_state(self) -> list[int]:
        return self._cpu_rng.tolist()

    def set_rng_state(self, state: list[int]) -> None:
        self._cpu_rng = torch.tensor(state, dtype=torch.uint8)

    async def load_weights(self, update: WeightsUpdate) -> None:
        raise RuntimeError("a colocated worker generates with the learner's weights: nothing is sent to it")

    async def join_weight_group(self, host: str, port: int, rank: int, world_size: int, backend: str) -> None:
        raise RuntimeError("a colocated worker generates with the learner's weights: it joins no broadcast")

    async def receive_weights(self, plan: Plan, version: int) -> None:
        raise RuntimeError("a colocated worker generates with the learner's weights: it receives no broadcast")

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def close(self) -> None:
        pass


class ColocatedWorker:
    """A ``Learner`` of one rank and a ``RolloutWorker`` generating with its policy (module
    docstring). Its methods are those of both that a run calls, by the same names."""

    def __init__(
        self,
        learner: LearnerConfig,
        model: ModelConfig,
        algorithm: AlgorithmConfig,
        temperature: float,
        seed: int,
        max_new_tokens: int | None,
        total_steps: int | None,
        objective: SequenceObjective | None,
        rollout: RolloutConfig,
    ) -> None:
        """The ``Learner``'s arguments, then the rollout section (``rollout.backend`` hf). The sampling
        stream is seeded as a separate worker 0's would be (``seed * 1000``)."""
        if rollout.backend != "hf":
            raise ValueError(f"a colocated worker generates with HF (got rollout.backend {rollout.backend!r})")
        self.generation = PolicyGeneration(model, rollout, sampling_seed=seed * 1000)
        self.rollout = RolloutWorker(rollout, model, 0, seed, backend=self.generation)
        self.learner = Learner(learner, model, algorithm, temperature, seed, max_new_tokens, total_steps, objective)
        backend = self.learner.backend
        self.generation.bind(backend.model, backend.compute_dtype, backend.param_dtype)

    async def generate(
        self,
        batch_index: int,
        call_index: int,
        prompts: list[PromptItem],
        min_version: int = 0,
        seq: int | None = None,
        n: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
    ) -> RolloutResult:
        return await self.rollout.generate(batch_index, call_index, prompts, min_version, seq, n, temperature, seed)

    async def train(self, batch: TrainBatch) -> TrainResult:
        result = self.learner.train(batch)  # blocks the loop: no generation runs meanwhile
        self.generation.version = self.learner.version
        await self.rollout.version_changed()
        return result

    def forward_ahead(self, step: int, *results: RolloutResult) -> float:
        return self.learner.forward_ahead(step, *results)

    async def load_checkpoint(self, path: str) -> int:
        step = self.learner.load_checkpoint(path)
        self.generation.version = self.learner.version
        await self.rollout.version_changed()
        return step

    def save_checkpoint(self, path: str) -> dict[str, float]:
        return self.learner.save_checkpoint(path)

    def save(self, path: str) -> None:
        self.learner.save(path)

    def rng_state(self) -> list[int]:
        """The sampling stream (the learner's own random state travels in its checkpoint)."""
        return self.generation.rng_state()

    def set_rng_state(self, state: list[int]) -> None:
        self.generation.set_rng_state(state)

    def close(self) -> None:
        self.rollout.close()
