"""Empty package folders for every package pyproject.toml lists, so a Docker layer can
install tierline's dependencies before the code is copied in (a code change then does not
reinstall vLLM).

    python3.11 package_stubs.py [ROOT]     # ROOT holds pyproject.toml (default: .)

setuptools refuses to build when a listed package's folder is missing ("package directory
'cluster/spec' does not exist"), so the stubs follow the list in pyproject.toml, read
here, rather than a copy of it kept in the Dockerfile. Standard library only: it runs
before anything is installed.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

__all__ = ["package_folders", "write_stubs"]


def package_folders(pyproject: dict[str, object]) -> list[Path]:
    """The folder of each package in `[tool.setuptools] packages`, through its
    `package-dir` mapping (the longest mapped parent wins)."""
    tool = pyproject["tool"]
    assert isinstance(tool, dict)
    setup = tool["setuptools"]
    roots: dict[str, str] = setup["package-dir"]
    folders = []
    for package in setup["packages"]:
        parent = max((r for r in roots if package == r or package.startswith(r + ".")), key=len)
        rest = package[len(parent) + 1 :].split(".") if package != parent else []
        folders.append(Path(roots[parent], *rest))
    return folders


def write_stubs(root: Path) -> list[Path]:
    """Create each package folder under `root` with an empty `__init__.py` (existing files
    are left as they are); returns the folders."""
    with (root / "pyproject.toml").open("rb") as fh:
        folders = package_folders(tomllib.load(fh))
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "__init__.py").touch()
    return folders


if __name__ == "__main__":
    write_stubs(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
