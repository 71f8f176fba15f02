"""The dry-run plan's actors, their simulated placement on identical GPU nodes, and its text
(``ray_jobs/dry_run/plan.py`` builds the actors of each job; see its docstring for the rules).

The bundles and the node assignment are ``ray_jobs/runtime/placement.py``'s (what the Ray edge
starts); nodes are added as needed, so only an actor or a STRICT_PACK group larger than a
node cannot be placed (``PlanError``, one line). GPU memory adds up per GPU where actors
share one (fractional GPUs), unless a sleeping vLLM engine and a learner take turns on it: its peak is
then the larger of the two phases (``ray_jobs/dry_run/memory.py``'s docstring states the model).
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
    kept: float | None = None  # a learner: bytes it keeps between steps (None: its whole estimate)
    asleep: float | None = None  # a vLLM engine beside a learner: bytes it keeps asleep (None: never sleeps there)
    sleeps: bool = False  # that engine does sleep (rollout.vllm.sleep_level > 0)

    @property
    def total(self) -> float | None:
        return sum(self.memory.values()) if self.memory is not None else None


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


def gpu_loads(actors: list[Actor]) -> dict[tuple[int, int], list[Actor]]:
    """Per (node, GPU): the actors on it."""
    loads: dict[tuple[int, int], list[Actor]] = {}
    for a in actors:
        for slot in a.placed:
            loads.setdefault(slot, []).append(a)
    return loads


Phase = tuple[str, float, str]  # (when, bytes, whose)


def turns(occupants: list[Actor], assume_sleep: bool = False) -> list[Phase] | None:
    """The two phases of a GPU where a vLLM engine sleeps while the learner trains (``assume_sleep``:
    as if it did), each with its bytes and whose they are; None when nothing there takes turns."""
    engines = [a for a in occupants if a.asleep is not None]
    if not engines or not (assume_sleep or all(a.sleeps for a in engines)):
        return None
    training = [(a.name + " asleep", a.asleep) if a.asleep is not None else (a.name, a.total or 0.0) for a in occupants]
    generating = [
        (a.name + (" between steps" if a.kept is not None else ""), a.kept if a.kept is not None else a.total or 0.0)
        for a in occupants
    ]
    return [
        (when, sum(b for _, b in parts), " + ".join(f"{n} {b / GIB:.1f}" for n, b in parts))
        for when, parts in (("while the learner trains", training), ("while the engine generates", generating))
    ]


def gpu_peak(occupants: list[Actor], assume_sleep: bool = False) -> float:
    """A GPU's estimated peak: the larger phase where its occupants take turns, else the sum of their estimates."""
    phases = turns(occupants, assume_sleep)
    if phases is not None:
        return max(b for _, b, _ in phases)
    return sum(a.total or 0.0 for a in occupants)


def memory_refusals(actors: list[Actor], node: NodeShape) -> list[str]:
    """One line per GPU whose estimate exceeds its memory; where a vLLM engine that could sleep
    shares it with the learner, what sleep mode would make of it."""
    out = []
    for (n, g), occupants in sorted(gpu_loads(actors).items()):
        peak = gpu_peak(occupants)
        if peak <= node.gpu_bytes:
            continue
        parts = " + ".join(f"{a.name} {a.total / GIB:.1f}" for a in occupants if a.total is not None)
        line = f"cannot fit node {n} GPU {g}: about {peak / GIB:.1f} GiB ({parts}) of {node.gpu_memory_gib:g} GiB (--gpu-memory-gib)"
        if turns(occupants) is not None:
            line += "; at the peak of their turns"
        elif turns(occupants, assume_sleep=True) is not None:
            line += (
                f"; with rollout.vllm.sleep_level 1 (or 2) the engine sleeps while the learner trains "
                f"and the peak is about {gpu_peak(occupants, assume_sleep=True) / GIB:.1f} GiB"
            )
        out.append(line)
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
        unknown = " + unknown" if any(a.total is None for a in occupants) else ""
        out.append(
            f"  node {n} GPU {g}: {gpu_peak(occupants) / GIB:.1f}{unknown} of {node.gpu_memory_gib:g} GiB "
            f"({', '.join(a.name for a in occupants)})"
        )
        known_all = all(a.total is not None for a in occupants)
        for when, total, whose in (turns(occupants) if known_all else None) or []:
            out.append(f"    {when}: {total / GIB:.1f} ({whose})")
    return "\n".join(out)
