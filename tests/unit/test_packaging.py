"""The wheel carries every package: pyproject.toml lists each folder that has an
__init__.py, so `pip install .` (the Docker image) is the tree the tests import."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _listed() -> tuple[set[str], dict[str, str]]:
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return set(tool["packages"]), dict(tool["package-dir"])


def test_every_package_folder_is_listed() -> None:
    packages, dirs = _listed()
    found = set()
    for top, folder in dirs.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([top, *rel.parts]))
    assert found - packages == set(), "add these to [tool.setuptools] packages"
    assert packages - found == set(), "listed packages without an __init__.py"
