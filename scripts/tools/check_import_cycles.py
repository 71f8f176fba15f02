"""Fail on any import cycle between the project's modules (a CI gate: ``.ci/run``).

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

Usage: ``python -m scripts.tools.check_import_cycles [PACKAGE ...]`` (default: the
project's packages). Prints one block per cycle, naming each import that closes
it, and exits 1; prints a one-line summary and exits 0 when there is none.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping, Sequence

import grimp

PACKAGES = ("actors", "algorithms", "rewards", "ray_jobs", "scripts")


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fail on any import cycle between the project's modules.")
    parser.add_argument("packages", nargs="*", default=list(PACKAGES), help="top-level packages to check")
    args = parser.parse_args(argv)
    graph = import_graph(args.packages)
    edges = module_imports(graph)
    found = cycles(edges)
    for component in found:
        print(describe(graph, component))
    if found:
        print(f"{len(found)} import cycle(s) among the modules of {', '.join(args.packages)}")
        return 1
    print(f"no import cycles among {len(edges)} modules of {', '.join(args.packages)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
