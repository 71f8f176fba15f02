"""What ``pip install .`` installs: the four runtime packages with their sub-packages and the
shipped rubrics, and no ``scripts`` (benchmarks, dataset generators and dev tools run from a
checkout; a top-level ``scripts`` in site-packages would also shadow a user's own)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The file names inside a wheel built from a copy of the tree (the build writes next to its sources)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    for package in ("actors", "algorithms", "ray_jobs", "rewards", "scripts"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("relay-*.whl")
    return zipfile.ZipFile(wheel).namelist()


def test_the_wheel_holds_the_runtime_packages_and_no_scripts(wheel_names: list[str]) -> None:
    top = {name.split("/")[0] for name in wheel_names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"actors", "algorithms", "ray_jobs", "rewards"}


def test_every_sub_package_and_the_rubrics_are_in_it(wheel_names: list[str]) -> None:
    packages = {
        str(init.parent.relative_to(REPO))
        for top in ("actors", "algorithms", "ray_jobs", "rewards")
        for init in (REPO / top).rglob("__init__.py")
    }
    assert packages and all(f"{p}/__init__.py" in wheel_names for p in packages)
    assert "rewards/judge/rubrics/seed000.yaml" in wheel_names
