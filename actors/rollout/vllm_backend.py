"""vLLM generation backend: vLLM's async engine inside the rollout worker's Ray actor.

Token ids in, token ids and log-probs out. Each prompt is one request for its
``n`` samples, so a group stays on one engine and shares the prompt's KV
blocks (prefix caching). Sampling is pure temperature sampling and the engine
returns the *processed* log-probs (``logprobs_mode="processed_logprobs"``:
after temperature scaling), which is exactly the learner's
``token_logprobs(logits, tokens, temperature)``. A call may override the
temperature (per-request ``SamplingParams``); at 0 decoding is greedy and the
engine's processed log-probs are the untempered ones (temperature 1).

Weight updates, while requests are in flight:

- full weights: pause the scheduler keeping the in-flight requests
  (``mode="keep"``), load the new weights in place (``actors/rollout/vllm_worker.py``),
  reset the prefix cache including the paused requests' blocks, so no KV
  computed with the old weights is reused, bump the version, resume. A paused
  request continues with the new weights; its sample records both versions.
- a LoRA adapter: register it as a new adapter (id = version + 1) and send new
  requests to it. Requests in flight finish on the adapter they started with
  (vLLM's prefix cache is keyed by adapter, so nothing needs resetting); an old
  adapter is removed once its last request finishes.

Sleep mode (``VLLMConfig.sleep_level`` > 0, a colocated engine sharing the learner's GPU; vLLM's
documented API, CUDA/ROCm only, so it has never run on our CPU machines: its tests record
the engine's calls): ``sleep`` pauses the scheduler keeping the requests in flight and frees
the engine's weights (level 1: to CPU RAM; level 2: discarded) and KV cache while the learner
trains; ``wake_up(["weights"])``, a weight load, then ``wake_up(["kv_cache"])`` brings it back
with the new weights and resumes the kept requests, recomputed from their tokens so far.

Invariant: ``version`` only increases between restores (a resume's restore may set it to the
checkpoint's version, lower than an engine's); a request started at version v records
``first_version = v``, the lower bound used for staleness.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from actors.core_share import CoreShare
from actors.messages import WeightsUpdate
from actors.rollout.generation import GeneratedSequence
from actors.scratch import owned_dir
from actors.weights.sync import stage_update

log = logging.getLogger(__name__)
STAGING_PREFIX = "relay-weights"  # <staging_dir>/relay-weights-<pid>-<random>/v<version>/ (actors/scratch.py)
SLEEP_TAGS = ("weights", "kv_cache")
"""What a sleeping vLLM engine releases, in the order ``wake_up`` brings them back."""


class VLLMConfig(BaseModel):
    """vLLM engine options (``rollout.backend: vllm``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tensor_parallel_size: int = Field(
        default=1,
        ge=1,
        description="GPUs per engine (tensor parallelism, GPU only; needs rollout.num_gpus_per_worker equal to it). Each engine above 1 gets a STRICT_PACK placement group on one node: the worker's CPUs and one GPU bundle per shard, where vLLM's Ray executor starts its shard workers (ray_jobs/runtime/placement.py).",
    )
    gpu_memory_utilization: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Fraction of each GPU vLLM may use (weights + KV cache); leave room for a learner on the same GPU.",
    )
    max_model_len: int = Field(default=1024, ge=16, description="Longest prompt + completion, in tokens.")
    max_num_seqs: int = Field(default=256, ge=1, description="Most sequences the engine schedules at once.")
    enable_prefix_caching: bool = Field(
        default=True, description="Reuse the KV blocks of a prompt across its group's samples and across requests."
    )
    enforce_eager: bool = Field(default=False, description="Disable CUDA graphs (always on for CPU engines).")
    cpu_kvcache_gib: int = Field(
        default=1, ge=1, description="KV-cache size in GiB on CPU engines (VLLM_CPU_KVCACHE_SPACE)."
    )
    max_loras: int = Field(
        default=4,
        ge=1,
        description="Adapter versions an engine holds at once with LoRA adapter sync (in-flight requests keep theirs).",
    )
    staging_dir: str = Field(
        default="/dev/shm",
        description="Where weight updates are staged as files for the engine (shared memory skips the disk).",
    )
    sleep_level: Literal[0, 1, 2] = Field(
        default=0,
        description="vLLM sleep mode for an engine that shares the learner's GPU (pipeline.placement: colocated; "
        "GPU only). 0: never sleeps. 1: while the learner trains, the engine's weights move to CPU RAM (as much "
        "RAM as they take) and its KV cache is dropped. 2: both are dropped and the weights come back with the "
        "next weight sync (full weights only: with LoRA adapter sync use 1). Requests in flight are kept, "
        "paused, and finish after the engine wakes. Built against vLLM 0.32's documented API; not yet run on a GPU.",
    )


def engine_arguments(
    model_path: str, dtype: str, config: VLLMConfig, seed: int, on_cpu: bool, lora_rank: int | None
) -> dict[str, Any]:
    """vLLM's ``AsyncEngineArgs`` for one engine (``dtype`` resolved). ``enable_sleep_mode`` only with
    ``config.sleep_level`` > 0: it makes vLLM allocate weights and KV cache from its own CUDA memory
    pool, which ``sleep`` can release (CUDA/ROCm only; vLLM refuses it on CPU)."""
    return {
        "model": model_path,
        "dtype": dtype,
        "seed": seed,
        "max_model_len": config.max_model_len,
        "max_num_seqs": config.max_num_seqs,
        "enable_prefix_caching": config.enable_prefix_caching,
        "enforce_eager": config.enforce_eager or on_cpu,
        "gpu_memory_utilization": config.gpu_memory_utilization,
        "tensor_parallel_size": config.tensor_parallel_size,
        "distributed_executor_backend": "ray" if config.tensor_parallel_size > 1 else None,
        "logprobs_mode": "processed_logprobs",
        "worker_extension_cls": "actors.rollout.vllm_worker.RelayWorkerExtension",
        "enable_lora": lora_rank is not None,
        "max_lora_rank": lora_rank or 16,
        "max_loras": config.max_loras,
        "disable_log_stats": True,
        "enable_sleep_mode": config.sleep_level > 0,
    }


def exit_dead_engine(exc: BaseException) -> None:
    """End this process (Ray restarts the actor): a dead vLLM engine is never recovered in place."""
    import logging
    import os

    logging.getLogger(__name__).error("vLLM engine died (%s): exiting so that Ray restarts this rollout worker", exc)
    os._exit(1)


class VLLMGenerationBackend:
    """One ``AsyncLLM`` engine; see the module docstring for the update protocol."""

    def __init__(
        self,
        model_path: str,
        dtype: str,
        max_new_tokens: int,
        temperature: float,
        config: VLLMConfig,
        seed: int,
        torch_threads: int | str | CoreShare,
        lora_rank: int | None = None,
    ) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        from actors.model.loading import load_tokenizer, resolve_dtype

        # vLLM's own platform (NVML, blind to CUDA_VISIBLE_DEVICES): a tensor-parallel engine's
        # worker actor holds no GPU (ray_jobs/runtime/placement.py), its shard workers do.
        on_cpu = current_platform.is_cpu()
        dtype = resolve_dtype(dtype, torch.device("cpu" if on_cpu else "cuda"))  # auto: bf16 on a GPU
        if on_cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.cpu_kvcache_gib))
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # Ray already placed this process
            if config.tensor_parallel_size == 1:
                # One rank: the engine-core process runs the model itself. vLLM's CPU default
                # spawns a third process for it, which imports vLLM again (~18 s of a 2-core start).
                os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            if isinstance(torch_threads, int):  # unresolved 'auto' keeps the process's own setting
                os.environ.setdefault("OMP_NUM_THREADS", str(torch_threads))
        args = AsyncEngineArgs(**engine_arguments(model_path, dtype, config, seed, on_cpu, lora_rank))
        engine = AsyncLLM.from_engine_args(args)
        self._attach(engine, load_tokenizer(model_path), max_new_tokens, temperature, config)

    @classmethod
    def around(
        cls, engine: Any, tokenizer: Any, max_new_tokens: int, temperature: float, config: VLLMConfig
    ) -> VLLMGenerationBackend:
        """A backend around an engine built elsewhere (anything with ``AsyncLLM``'s methods: the
        tests' recording fake)."""
        backend = cls.__new__(cls)
        backend._attach(engine, tokenizer, max_new_tokens, temperature, config)
        return backend

    def _attach(self, engine: Any, tokenizer: Any, max_new_tokens: int, temperature: float, config: VLLMConfig) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.eos_id = self.tokenizer.eos_token_id
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.version = 0
        self.updates_in_flight = True
        self._staging, orphans = owned_dir(Path(config.staging_dir), STAGING_PREFIX)
        if orphans:
            log.info("removed %d weight-staging directories of rollout workers that are gone", len(orphans))
        self._request_ids = itertools.count()
        self._adapter = None  # the LoRARequest new requests use; None = base weights
        self._adapter_users: Counter[int] = Counter()  # adapter id -> requests in flight on it
        self._retired: dict[int, Path] = {}  # replaced adapters still used by a request
        self.sleep_level = config.sleep_level
        self._asleep: set[str] = set()  # SLEEP_TAGS the engine holds released
        self._weights_discarded = False  # level 2 dropped the weights; no full load since

    async def generate(
        self, prompts: list[list[int]], n: int, temperature: float | None = None, seed: int | None = None
    ) -> list:
        """``n`` samples per prompt, grouped like ``GenerationBackend.generate``, at
        ``temperature`` (None: the backend's; 0: greedy, whose processed log-probs are
        then the untempered ones) with per-request ``SamplingParams`` (``seed``: a
        per-request generator, the engine's own RNG untouched).

        A dead engine (its process crashed) cannot come back inside this actor, and
        an exception would leave the actor alive and useless: the process exits,
        so that Ray restarts the actor with a new engine (the driver then sends
        the calls again, see ``ray_jobs/rl/actor_set.py``).
        """
        from vllm.v1.engine.exceptions import EngineDeadError

        try:
            temperature = self.temperature if temperature is None else temperature
            groups = await asyncio.gather(
                *(self._request(p, n, temperature, None if seed is None else seed + i) for i, p in enumerate(prompts))
            )
        except EngineDeadError as exc:
            exit_dead_engine(exc)
        return [seq for group in groups for seq in group]

    async def _request(self, prompt: list[int], n: int, temperature: float, seed: int | None) -> list:
        """One engine request for a prompt's ``n`` samples. vLLM refuses ``n > 1`` when
        greedy: a greedy request asks for one sample and repeats it (all ``n`` are equal)."""
        if temperature == 0 and n > 1:
            return (await self._request(prompt, 1, temperature, seed)) * n
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(
            n=n,
            temperature=temperature,
            top_p=1.0,
            top_k=0,
            max_tokens=self.max_new_tokens,
            logprobs=0,
            stop_token_ids=[self.eos_id],
            detokenize=False,
            seed=seed,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        first, adapter = self.version, self._adapter
        if adapter is not None:
            self._adapter_users[adapter.lora_int_id] += 1
        completions = {}  # sample index -> its final output (vLLM reports the n samples as each finishes)
        try:
            async for out in self.engine.generate(
                TokensPrompt(prompt_token_ids=prompt),
                params,
                request_id=f"r{next(self._request_ids)}",
                lora_request=adapter,
            ):
                completions.update({c.index: c for c in out.outputs if c.finish_reason is not None})
        finally:
            if adapter is not None:
                self._release_adapter(adapter.lora_int_id)
        if sorted(completions) != list(range(n)):
            raise RuntimeError(f"vLLM returned samples {sorted(completions)} of {n} for a request")
        last = first if adapter is not None else self.version  # an adapter request never changes weights
        finished_at = time.time()
        return [
            GeneratedSequence(
                list(c.token_ids),
                [c.logprobs[t][tok].logprob for t, tok in enumerate(c.token_ids)],
                truncated=c.finish_reason == "length",
                first_version=first,
                last_version=last,
                finished_at=finished_at,
            )
            for c in (completions[i] for i in range(n))
        ]

    async def load_weights(self, update: WeightsUpdate) -> None:
        """Apply ``update`` while generation continues (module docstring)."""
        self._check_weights_awake(f"load v{update.version}")
        staged = await asyncio.to_thread(stage_update, update, self._staging / f"v{update.version}")
        if update.is_adapter:
            await self._add_adapter(update.version, staged)
            return
        try:
            await self._load_paused("relay_load_weights", (str(staged),), update.version)
        finally:
            shutil.rmtree(staged.parent, ignore_errors=True)

    async def _load_paused(self, method: str, args: tuple, version: int) -> None:
        """Pause keeping in-flight requests, run the worker's loader ``method``, mark
        ``version``, reset the prefix cache (paused requests' blocks included), resume (not while
        the KV cache sleeps: ``wake_up`` resumes once everything is awake)."""
        self._check_weights_awake(f"load v{version}")
        await self.engine.pause_generation(mode="keep", clear_cache=False)
        try:
            await self.engine.collective_rpc(method, args=args)
            self.version = version
            self._weights_discarded = False
            if not await self.engine.reset_prefix_cache(reset_running_requests=True):
                raise RuntimeError(f"vLLM could not reset its prefix cache after loading v{version}")
        finally:
            if not self._asleep:
                await self.engine.resume_generation()

    async def sleep(self) -> None:
        """Release the engine's GPU memory while the learner trains (``VLLMConfig.sleep_level``:
        1 moves the weights to CPU RAM, 2 drops them; both drop the KV cache). The scheduler
        pauses keeping every request in flight (vLLM's ``mode="keep"``; its default would abort
        them); new requests queue. Nothing at level 0 or when already asleep.

        Invariant: asleep, the engine schedules nothing until ``wake_up`` has woken every tag."""
        if self.sleep_level == 0 or self._asleep == set(SLEEP_TAGS):
            return
        if self._asleep:
            raise RuntimeError(f"sleep() while the engine is partly awake ({sorted(self._asleep)} asleep)")
        await self.engine.sleep(self.sleep_level, mode="keep")
        self._asleep = set(SLEEP_TAGS)
        self._weights_discarded = self.sleep_level == 2

    async def wake_up(self, tags: list[str] | None = None) -> None:
        """Bring back ``tags`` (``SLEEP_TAGS``; None: all of them) in vLLM's order for RL: the
        weights first (``wake_up(["weights"])``), then new weights loaded (``load_weights`` or
        ``receive_weights``: the KV cache is not yet reallocated, so both fit), then
        ``wake_up(["kv_cache"])``; generation resumes once every tag is awake. Tags already awake
        are skipped (vLLM would ignore the whole call for one of them).

        A KV cache cannot wake while level 2's dropped weights have not been loaded again (the
        engine would generate from uninitialised memory): ``RuntimeError``."""
        wanted = list(SLEEP_TAGS) if tags is None else list(tags)
        unknown = [t for t in wanted if t not in SLEEP_TAGS]
        if unknown:
            raise ValueError(f"wake_up tags {unknown}: vLLM's are {list(SLEEP_TAGS)}")
        waking = [t for t in SLEEP_TAGS if t in wanted and t in self._asleep]
        if not waking:
            return
        if "kv_cache" in waking and self._weights_discarded:
            raise RuntimeError(
                "rollout.vllm.sleep_level 2 dropped the engine's weights: wake 'weights', load new weights, "
                "then wake 'kv_cache'"
            )
        await self.engine.wake_up(waking)
        self._asleep -= set(waking)
        if not self._asleep:
            await self.engine.resume_generation()

    def _check_weights_awake(self, what: str) -> None:
        if "weights" in self._asleep:
            raise RuntimeError(f"cannot {what} while the engine's weights sleep: wake_up(['weights']) first")

    async def _add_adapter(self, version: int, directory: Path) -> None:
        from vllm.lora.request import LoRARequest

        adapter = LoRARequest(f"policy-v{version}", version + 1, str(directory))
        if not await self.engine.add_lora(adapter):
            raise RuntimeError(f"vLLM refused LoRA adapter v{version}")
        previous, self._adapter, self.version = self._adapter, adapter, version
        if previous is not None:
            self._retired[previous.lora_int_id] = Path(previous.lora_path)
            self._release_adapter(previous.lora_int_id, requests=0)

    def _release_adapter(self, adapter_id: int, requests: int = 1) -> None:
        """One request on ``adapter_id`` finished; a retired adapter with none left is removed."""
        self._adapter_users[adapter_id] -= requests
        if self._adapter_users[adapter_id] <= 0 and adapter_id in self._retired:
            del self._adapter_users[adapter_id]
            shutil.rmtree(self._retired.pop(adapter_id), ignore_errors=True)
            asyncio.get_running_loop().create_task(self.engine.remove_lora(adapter_id))

    async def join_weight_group(self, host: str, port: int, rank: int, world_size: int, backend: str) -> None:
        await self.engine.collective_rpc("relay_join_weight_group", args=(host, port, rank, world_size, backend))

    async def receive_weights(self, plan: list, version: int) -> None:
        """Receive a broadcast of full weights (``actors/weights/broadcast.py``), paused like ``load_weights``."""
        await self._load_paused("relay_receive_weights", (plan,), version)

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def close(self) -> None:
        """Shut the engine down. Call it from the engine's event loop (a Ray actor's methods
        run there): from outside it, vLLM leaves closing its sockets to that loop."""
        self.engine.shutdown()
        shutil.rmtree(self._staging, ignore_errors=True)
