"""The import gate: Tarjan's components, the imports that count, the layers, the project itself."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from scripts.tools.check_imports import (
    LAYERS,
    PACKAGES,
    check,
    cycles,
    import_graph,
    layer_violations,
    main,
    module_imports,
    room_of,
)

REPO = Path(__file__).resolve().parents[2]


def test_no_cycle_in_a_dag() -> None:
    assert cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_every_component_once_sorted() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d", "a"}, "f": {"f"}, "g": set()}
    assert cycles(edges) == [["a", "b", "c"], ["d", "e"], ["f"]]


def test_imports_of_modules_outside_the_graph_are_ignored() -> None:
    assert cycles({"a": {"torch", "b"}, "b": {"numpy"}}) == []


def test_a_long_chain_needs_no_recursion() -> None:
    n = 5_000
    edges = {f"m{i}": {f"m{i + 1}"} for i in range(n)} | {f"m{n}": {"m0"}}
    assert [len(c) for c in cycles(edges)] == [n + 1]


def _package(root: Path, name: str, modules: dict[str, str]) -> None:
    (root / name).mkdir()
    (root / name / "__init__.py").write_text("")
    for module, source in modules.items():
        (root / name / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.mark.parametrize(
    "closing_import",
    [
        "from cyclepkg.a import X\n",  # module level
        "def f():\n    from cyclepkg.a import X\n    return X\n",  # inside a function
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cyclepkg import a\n",  # type-only
        "class C:\n    def m(self):\n        import cyclepkg.a as a\n",  # in a method, aliased
    ],
)
def test_every_kind_of_import_closes_a_cycle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], closing_import: str
) -> None:
    _package(tmp_path, "cyclepkg", {"a": "from . import b\nX = 1\n", "b": closing_import, "c": "import cyclepkg.a\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["cyclepkg"]) == 1
    out = capsys.readouterr().out
    assert "import cycle between 2 modules: cyclepkg.a, cyclepkg.b" in out
    assert "cyclepkg.a:1: from . import b" in out
    assert "cyclepkg.c" not in out.splitlines()[0]


def test_a_cycle_across_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _package(tmp_path, "pkgone", {"a": "import pkgtwo.b\n"})
    _package(tmp_path, "pkgtwo", {"b": "def f():\n    import pkgone.a\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cycles(module_imports(import_graph(["pkgone", "pkgtwo"]))) == [["pkgone.a", "pkgtwo.b"]]


def test_the_project_has_no_import_cycles(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(list(PACKAGES)) == 0, capsys.readouterr().out


TOY_LAYERS = (("app.cmd",), ("app.jobs", "app.plan"), ("lib",))


def test_imports_down_the_layers_and_inside_a_room_pass() -> None:
    edges = {
        "app.cmd.run": {"app.jobs.a", "lib.x"},
        "app.jobs.a": {"app.jobs.b", "lib.x"},
        "app.jobs.b": set(),
        "lib.x": set(),
    }
    assert layer_violations(edges, TOY_LAYERS) == []


def test_an_import_up_a_layer_beside_it_or_outside_every_room_fails() -> None:
    edges = {
        "lib.x": {"app.jobs.a"},  # up
        "app.jobs.a": {"app.plan.p", "app.other.o"},  # beside; no room
        "app.plan.p": set(),
        "app.other.o": set(),
    }
    assert layer_violations(edges, TOY_LAYERS) == [
        "app.jobs.a -> app.other.o: app.other.o is in no room of LAYERS",
        "app.jobs.a -> app.plan.p: app.jobs imports app.plan, beside it in its layer",
        "lib.x -> app.jobs.a: lib imports app.jobs, up a layer",
    ]


def test_the_longest_room_holds_a_module() -> None:
    assert room_of("ray_jobs.rl.pipeline") == "ray_jobs.rl"
    assert room_of("rewards.judge.llm_judge") == "rewards.judge"
    assert room_of("algorithms.losses") == "algorithms"
    assert room_of("elsewhere.module") is None


def test_an_upward_import_planted_in_the_project_fails(capsys: pytest.CaptureFixture[str]) -> None:
    graph = import_graph(PACKAGES)
    graph.add_import(
        importer="actors.messages", imported="ray_jobs.rl.pipeline"
    )  # the plain classes reaching up to a job
    assert check(graph, PACKAGES) == 1
    out = capsys.readouterr().out
    assert "actors.messages -> ray_jobs.rl.pipeline: actors.messages imports ray_jobs.rl, up a layer" in out
    graph = import_graph(PACKAGES)
    graph.add_import(
        importer="rewards.client.transport", imported="rewards.judge.config"
    )  # the client reaching into the judge
    assert check(graph, PACKAGES) == 1
    assert "rewards.client imports rewards.judge, up a layer" in capsys.readouterr().out


def test_every_package_of_the_project_is_a_room_and_the_architecture_page_names_each() -> None:
    rooms = {room for layer in LAYERS for room in layer}
    on_disk = {
        ".".join(d.relative_to(REPO).parts)
        for package in PACKAGES
        for d in (REPO / package).iterdir()
        if d.is_dir() and (d / "__init__.py").exists()
    }
    assert on_disk - rooms == set()
    page = (REPO / "docs" / "concepts" / "architecture.md").read_text()
    assert [room for room in sorted(rooms) if f"`{room.replace('.', '/')}" not in page] == []
