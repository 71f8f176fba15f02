"""Fail on any import cycle between the project's modules, and on any import that points up a
layer of ``LAYERS`` (a CI gate: ``.ci/run``).

Every import counts: at module level, inside a function, and under
``if TYPE_CHECKING:``. A lazy or type-only import does not fail at import time,
but it still ties two modules together (neither can be read, tested or moved
without the other), which is what the house style forbids.

The import graph is grimp's (the library under import-linter), which records
exactly those imports: every ``import``/``from ... import`` statement anywhere
in a module, TYPE_CHECKING blocks included unless asked otherwise, with
relative imports and ``from package import module`` resolved. This script adds
the one thing no maintained tool gives as a check: the strongly connected
components of that graph across all our packages. import-linter's
``acyclic_siblings`` contract looks at the children of one package at a time
(so a cycle through another of our top-level packages is not its concern), and
pylint's ``cyclic-import`` leaves out imports under ``TYPE_CHECKING``.

The layers are this project's own rule, so no tool knows them: ``LAYERS`` lists the
rooms (a sub-package, or a module directly inside a top-level package) from the top
down. A module may import its own room and the rooms of the layers below its own,
never a room above it or beside it in its layer. docs/concepts/architecture.md
describes each room; a test holds that page and this table together.

Usage: ``python -m scripts.tools.check_imports [PACKAGE ...]`` (default: the
project's packages, with the layer check). Prints one block per cycle, naming each
import that closes it, one line per import against the layers, and exits 1; prints
a one-line summary and exits 0 when there is none.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping, Sequence

import grimp

PACKAGES = ("actors", "algorithms", "rewards", "ray_jobs", "scripts")

LAYERS: tuple[tuple[str, ...], ...] = (
    ("scripts.bench", "scripts.data", "scripts.tools"),  # run from a checkout, never imported at run time
    # ray_jobs: the commands (python -m ray_jobs.<job>), then what they are made of
    (
        "ray_jobs.cli",
        "ray_jobs.init_task",
        "ray_jobs.train",
        "ray_jobs.sft",
        "ray_jobs.preference",
        "ray_jobs.evaluate",
    ),
    ("ray_jobs.job_command",),
    ("ray_jobs.rl", "ray_jobs.offline", "ray_jobs.evaluation", "ray_jobs.dry_run"),
    ("ray_jobs.runtime",),
    ("ray_jobs.config",),
    ("ray_jobs.data",),
    # actors: the plain classes the Ray actors run
    ("actors.judge_pool", "actors.colocated"),
    ("actors.rollout", "actors.learner"),
    ("actors.weights", "actors.model"),
    ("actors.messages", "actors.core_share", "actors.scratch"),
    # rewards: stand-in servers and recipes over the terms, the judge and its HTTP client
    ("rewards.stand_in",),
    ("rewards.recipes",),
    ("rewards.composer",),
    ("rewards.terms",),
    ("rewards.context",),
    ("rewards.llm",),
    ("rewards.trl_terms", "rewards.rules"),
    ("rewards.judge",),
    ("rewards.config",),
    ("rewards.client",),
    ("rewards.errors", "rewards.metrics"),
    ("algorithms",),  # pure torch
)
"""The rooms from the top down (see the module docstring)."""


def import_graph(packages: Sequence[str]) -> grimp.ImportGraph:
    """grimp's graph of ``packages`` (every import in their source; no cache written)."""
    return grimp.build_graph(*packages, cache_dir=None)


def module_imports(graph: grimp.ImportGraph) -> dict[str, set[str]]:
    """Module -> the modules of the graph it imports."""
    return {m: set(graph.find_modules_directly_imported_by(m)) for m in sorted(graph.modules)}


def cycles(edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (or a module importing
    itself), each sorted, in sorted order. Tarjan's algorithm, iterative (no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, targets = work[-1]
            target = next((t for t in targets if t in edges), None)
            if target is not None:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(edges[target]))))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges[node]:
                    found.append(sorted(component))
    return sorted(found)


def describe(graph: grimp.ImportGraph, component: list[str]) -> str:
    """A cycle's modules and the import statements between them (with line numbers)."""
    lines = [f"import cycle between {len(component)} modules: {', '.join(component)}"]
    for importer in component:
        for imported in sorted(set(component) & graph.find_modules_directly_imported_by(importer)):
            for detail in graph.get_import_details(importer=importer, imported=imported):
                lines.append(f"  {importer}:{detail['line_number']}: {detail['line_contents']}")
    return "\n".join(lines)


def room_of(module: str, layers: Sequence[Sequence[str]] = LAYERS) -> str | None:
    """The longest room of ``layers`` that is ``module`` or a package holding it (None: none is)."""
    rooms = [r for layer in layers for r in layer if module == r or module.startswith(r + ".")]
    return max(rooms, key=len, default=None)


def layer_violations(edges: Mapping[str, Iterable[str]], layers: Sequence[Sequence[str]] = LAYERS) -> list[str]:
    """One line per import against ``layers``: up a layer, across to another room of the same
    layer, or to or from a module no room holds. Top-level packages themselves (their
    ``__init__``, which hold nothing) are left out."""
    depth = {room: i for i, layer in enumerate(layers) for room in layer}
    found = []
    for importer in sorted(edges):
        for imported in sorted(set(edges[importer]) & set(edges)):
            if "." not in importer or "." not in imported:
                continue
            here, there = room_of(importer, layers), room_of(imported, layers)
            if here is None or there is None:
                found.append(
                    f"{importer} -> {imported}: {importer if here is None else imported} is in no room of LAYERS"
                )
            elif here != there and depth[there] <= depth[here]:
                way = "beside it in its layer" if depth[there] == depth[here] else "up a layer"
                found.append(f"{importer} -> {imported}: {here} imports {there}, {way}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fail on import cycles and on imports against the layers.")
    parser.add_argument("packages", nargs="*", default=list(PACKAGES), help="top-level packages to check")
    args = parser.parse_args(argv)
    return check(import_graph(args.packages), args.packages, layers=set(args.packages) == set(PACKAGES))


def check(graph: grimp.ImportGraph, packages: Sequence[str], layers: bool = True) -> int:
    """Print every cycle of ``graph`` and (``layers``) every import against ``LAYERS``; 1 if any, else 0."""
    edges = module_imports(graph)
    found = cycles(edges)
    for component in found:
        print(describe(graph, component))
    against = layer_violations(edges) if layers else []
    for line in against:
        print(f"import against the layers: {line}")
    if found or against:
        print(f"{len(found)} import cycle(s), {len(against)} import(s) against the layers, in {', '.join(packages)}")
        return 1
    checked = " or against the layers" if layers else ""
    print(f"no import cycles{checked} among {len(edges)} modules of {', '.join(packages)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
