"""The chart's image (docker/Dockerfile) as far as it can be checked without a Docker
engine: its dependency layer builds tierline from stubs of the packages pyproject.toml
lists, and the build context lets through everything the Dockerfile copies."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from tools.package_stubs import package_folders, write_stubs

ROOT = Path(__file__).resolve().parents[2]
TOP = ("cli", "cluster", "deployments", "router", "rag")


def test_pyproject_lists_every_package_folder() -> None:
    listed = {str(p) for p in package_folders(tomllib.loads((ROOT / "pyproject.toml").read_text()))}
    found = {
        str(init.parent.relative_to(ROOT))
        for top in TOP
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert listed == found, {"not listed": found - listed, "no folder": listed - found}


def test_the_dependency_layer_builds_from_stubs(tmp_path: Path) -> None:
    """What the Dockerfile's first install sees: pyproject.toml, README.md and the stubs."""
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    first_install = dockerfile.index('pip install --no-cache-dir ".[gpu]"')
    assert "package_stubs.py" in dockerfile[:first_install]
    assert "COPY cluster" not in dockerfile[:first_install]  # the code comes after
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    folders = write_stubs(tmp_path)
    assert Path("cluster/spec") in folders
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    built = subprocess.run(
        [*pip_wheel, "-q", "-w", str(tmp_path / "wheels"), str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    assert list((tmp_path / "wheels").glob("tierline-*.whl"))


def test_the_build_context_holds_what_the_dockerfile_copies() -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text().splitlines()
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    copied = [
        src
        for line in dockerfile
        if line.startswith("COPY ") and "--from" not in line
        for src in line.split()[1:-1]
    ]
    assert {"cli", "cluster", "deployments", "router", "rag"} <= set(copied)
    missing = [src for src in copied if src.rstrip("/") not in allowed]
    assert not missing, f"the Dockerfile copies {missing}, which the .dockerignore leaves out"
