"""The data of a layout: placement groups, their bundles, the actors that run in them or alone and
what each asks Ray for, with the one invariant every layout keeps (``check_fits``). Pure: Ray is
neither imported nor running. The layouts themselves are ``ray_jobs/runtime/placement.py``'s (which
re-exports these names) and ``ray_jobs/runtime/colocation.py``'s."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal

Strategy = Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]
Bundle = dict[str, float]


class PlacementError(ValueError):
    """A layout that Ray could not schedule (an actor asks more than its bundle) or nodes cannot hold."""


@dataclass(frozen=True)
class GroupSpec:
    """One placement group: its name in the plan, its bundles and its strategy."""

    name: str
    bundles: tuple[Bundle, ...]
    strategy: Strategy


@dataclass(frozen=True)
class ActorSpec:
    """One actor and what it asks Ray for. ``group``/``bundle``: the placement group (by name)
    and bundle it runs in, None for none. ``started_by``: ``relay`` (our Ray edge) or ``vllm``
    (the engine's Ray executor starts it). ``env``: variables its process is given."""

    name: str
    num_cpus: float
    num_gpus: float
    resources: dict[str, float] = field(default_factory=dict)
    group: str | None = None
    bundle: int | None = None
    started_by: Literal["relay", "vllm"] = "relay"
    env: dict[str, str] = field(default_factory=dict)

    def demand(self) -> Bundle:
        """Every resource it asks for, zero entries left out."""
        asked = {"CPU": self.num_cpus, "GPU": self.num_gpus, **self.resources}
        return {name: amount for name, amount in asked.items() if amount > 0}


@dataclass(frozen=True)
class Placement:
    """Placement groups, in creation order, and the actors that run in them or alone."""

    groups: tuple[GroupSpec, ...] = ()
    actors: tuple[ActorSpec, ...] = ()

    def __add__(self, other: Placement) -> Placement:
        return Placement(self.groups + other.groups, self.actors + other.actors)

    def group(self, name: str) -> GroupSpec:
        return next(g for g in self.groups if g.name == name)

    def actor(self, name: str) -> ActorSpec:
        return next(a for a in self.actors if a.name == name)


def nonzero(bundle: Bundle) -> Bundle:
    """``bundle`` without its zero entries (Ray refuses a bundle of zeros)."""
    return {name: amount for name, amount in bundle.items() if amount > 0}


def check_fits(plan: Placement) -> Placement:
    """``plan``, after checking that every actor names a bundle of its group and the actors
    of each bundle ask, together, for no more than it holds; else ``PlacementError``."""
    asked: dict[tuple[str, int], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    groups = {g.name: g for g in plan.groups}
    for actor in plan.actors:
        if actor.group is None:
            continue
        group = groups.get(actor.group)
        if group is None or actor.bundle is None or not 0 <= actor.bundle < len(group.bundles):
            raise PlacementError(f"{actor.name}: no bundle {actor.bundle} in placement group {actor.group!r}")
        for name, amount in actor.demand().items():
            asked[(actor.group, actor.bundle)][name] += amount
    for (group_name, index), demand in asked.items():
        bundle = groups[group_name].bundles[index]
        over = {name: amount for name, amount in demand.items() if amount > bundle.get(name, 0.0) + 1e-9}
        if over:
            raise PlacementError(
                f"{group_name} bundle {index} holds {bundle} but its actors ask for {dict(demand)}: "
                "Ray would never schedule them"
            )
    return plan
