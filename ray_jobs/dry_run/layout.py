"""The dry-run plan's actors, their simulated placement on identical GPU nodes, and its text
(``ray_jobs/dry_run/plan.py`` builds the actors of each job; see its docstring for the rules).

The bundles and the node assignment are ``ray_jobs/runtime/placement.py``'s (what the Ray edge
starts); nodes are added as needed, so only an actor or a STRICT_PACK group larger than a
node cannot be placed (``PlanError``, one line). GPU memory adds up per GPU where actors
share one (fractional GPUs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ray_jobs.runtime.placement import Placement, PlacementError, assign_nodes

GIB = 1024**3


class PlanError(ValueError):
    """A config that cannot be scheduled or cannot fit the GPUs named (one line)."""


@dataclass(frozen=True)
class NodeShape:
    """The cluster's nodes as the plan assumes them: identical, this many GPUs of this memory."""

    gpus_per_node: int = 8
    gpu_memory_gib: float = 80.0

    @property
    def gpu_bytes(self) -> float:
        return self.gpu_memory_gib * GIB


@dataclass
class Actor:
    """One Ray actor of the plan: what it reserves and its GPU memory on each GPU it uses."""

    name: str
    bundle: dict[str, float]
    gpus: float = 0.0  # GPUs it reserves: whole ones on one node, or a share of one
    key: str = ""  # the config key that sets ``gpus``
    memory: dict[str, float] | None = None  # bytes on each of its GPUs, by part; None: cannot be estimated
    note: str = ""
    group: str = ""  # its placement group, bundle and strategy (empty: none)
    placed: list[tuple[int, int]] = field(default_factory=list)  # (node, GPU) per GPU it gets
    node: int = 0  # the node it runs on


@dataclass
class Plan:
    """What a job would start: headline lines, input checks, its actors placed, refusals found while building."""

    lines: list[str]
    checks: list[str]
    actors: list[Actor]
    nodes: int
    refusals: list[str] = field(default_factory=list)


def _key(name: str) -> str:
    """The config key that sets an actor's GPUs, for messages."""
    if name.startswith("rollout worker"):
        return "rollout.vllm.tensor_parallel_size" if " shard " in name else "rollout.num_gpus_per_worker"
    return "learner.num_gpus"


def check_schedulable(placement: Placement, node: NodeShape) -> None:
    """``PlanError`` for an actor, or a STRICT_PACK group, that no node of ``node``'s size holds."""
    for a in placement.actors:
        if a.num_gpus > 1 and a.num_gpus != int(a.num_gpus):
            raise PlanError(
                f"cannot schedule {a.name}: {_key(a.name)}={a.num_gpus:g} (Ray needs a whole number of GPUs above 1)"
            )
        if a.num_gpus > node.gpus_per_node:
            raise PlanError(
                f"cannot schedule {a.name}: it needs {a.num_gpus:g} GPUs on one node ({_key(a.name)}); "
                f"nodes have {node.gpus_per_node} (--gpus-per-node)"
            )
    for g in placement.groups:
        gpus = sum(b.get("GPU", 0.0) for b in g.bundles)
        if g.strategy == "STRICT_PACK" and gpus > node.gpus_per_node:
            key = "rollout.vllm.tensor_parallel_size" if g.name.startswith("rollout") else "learner.world_size"
            raise PlanError(
                f"cannot schedule {g.name}: its {gpus:g} GPUs must share one node (STRICT_PACK, {key}); "
                f"nodes have {node.gpus_per_node} (--gpus-per-node)"
            )


Memory = dict[str, tuple[dict[str, float] | None, str]]
"""Per actor name: its GPU memory by part (None: cannot be estimated) and a note."""


def layout(placement: Placement, memory: Memory, node: NodeShape) -> tuple[list[Actor], int]:
    """``placement``'s actors on nodes of ``node``'s shape (``ray_jobs.runtime.placement.assign_nodes``),
    each with its memory and note from ``memory`` (by name; a vLLM shard takes its worker's),
    and the number of nodes used."""
    check_schedulable(placement, node)
    try:
        placed = assign_nodes(placement, node.gpus_per_node)
    except PlacementError as exc:
        raise PlanError(f"cannot schedule: {exc}") from None
    groups = {g.name: g for g in placement.groups}
    actors = []
    for p in placed:
        spec = p.actor
        owner = spec.name.split(" shard ")[0]
        mem, note = memory.get(spec.name) or memory.get(owner) or (None, "")
        group = groups.get(spec.group) if spec.group is not None else None
        where = f"{group.name}[{spec.bundle}] {group.strategy}" if group is not None else ""
        if " shard " in spec.name:
            note = "vLLM shard, started by the engine"
        elif spec.num_gpus == 0 and mem is not None:
            engine = group is not None and any(" shard " in a.name for a in placement.actors if a.group == group.name)
            note, mem = (f"{note}; its GPUs are its shards'" if engine else "on CPU"), None
        actors.append(
            Actor(
                spec.name,
                spec.demand(),
                spec.num_gpus,
                key=_key(spec.name),
                memory=mem if spec.num_gpus > 0 else None,
                note=note,
                group=where,
                placed=[(p.node, g) for g in p.gpus],
                node=p.node,
            )
        )
    return actors, 1 + max((p.node for p in placed), default=0)


def gpu_loads(actors: list[Actor]) -> dict[tuple[int, int], list[tuple[str, float | None]]]:
    """Per (node, GPU): each occupant's estimate in bytes (None where it cannot be estimated)."""
    loads: dict[tuple[int, int], list[tuple[str, float | None]]] = {}
    for a in actors:
        total = sum(a.memory.values()) if a.memory is not None else None
        for slot in a.placed:
            loads.setdefault(slot, []).append((a.name, total))
    return loads


def memory_refusals(actors: list[Actor], node: NodeShape) -> list[str]:
    """One line per GPU whose estimate exceeds its memory."""
    out = []
    for (n, g), occupants in sorted(gpu_loads(actors).items()):
        total = sum(b for _, b in occupants if b is not None)
        if total > node.gpu_bytes:
            parts = " + ".join(f"{name} {b / GIB:.1f}" for name, b in occupants if b is not None)
            out.append(
                f"cannot fit node {n} GPU {g}: about {total / GIB:.1f} GiB ({parts}) of "
                f"{node.gpu_memory_gib:g} GiB (--gpu-memory-gib)"
            )
    return out


def _bundle_text(bundle: dict[str, float]) -> str:
    return "{" + (", ".join(f"{k}: {v:g}" for k, v in bundle.items()) or "CPU: 0") + "}"


def _memory_text(a: Actor) -> str:
    if a.gpus <= 0:
        return "-"
    if a.memory is None:
        return "cannot be estimated"
    parts = " + ".join(f"{k} {v / GIB:.1f}" for k, v in a.memory.items())
    return f"{sum(a.memory.values()) / GIB:.1f}" + (f" = {parts}" if len(a.memory) > 1 else "")


def render(plan: Plan, node: NodeShape) -> str:
    """The plan as text: headline, checks, one line per actor, one per GPU used."""
    out = [*plan.lines, "checks:", *(f"  {c}" if c.startswith("note:") else f"  ok  {c}" for c in plan.checks)]
    out.append("actors (bundle -> node/GPU: GPU memory estimate in GiB per GPU):")
    for a in plan.actors:
        where = ", ".join(f"node {n} GPU {g}" for n, g in a.placed) or f"node {a.node} (no GPU)"
        note = f"  [{a.note}]" if a.note else ""
        group = f" in {a.group}" if a.group else ""
        out.append(f"  {a.name:<26} {_bundle_text(a.bundle) + group:<40} -> {where}: {_memory_text(a)}{note}")
    gpus = sum(len(a.placed) for a in plan.actors if a.gpus >= 1) + len(
        {s for a in plan.actors if 0 < a.gpus < 1 for s in a.placed}
    )
    out.append(
        f"GPUs: {gpus} on {plan.nodes} node(s) of {node.gpus_per_node} x {node.gpu_memory_gib:g} GiB "
        "(--gpus-per-node, --gpu-memory-gib)"
    )
    for (n, g), occupants in sorted(gpu_loads(plan.actors).items()):
        known = sum(b for _, b in occupants if b is not None)
        unknown = " + unknown" if any(b is None for _, b in occupants) else ""
        out.append(
            f"  node {n} GPU {g}: {known / GIB:.1f}{unknown} of {node.gpu_memory_gib:g} GiB "
            f"({', '.join(name for name, _ in occupants)})"
        )
    return "\n".join(out)
