"""The import-cycle gate: Tarjan's components, the imports that count, the project itself."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from scripts.tools.check_import_cycles import PACKAGES, cycles, import_graph, main, module_imports


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
