"""The package layout holds: one installed namespace, layers that import downwards only,
no import cycles, and tools and benchmarks that use the installed package.

Read from the source with `ast` (no imports run), so a violation names its file and line.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Layer of each installed package, bottom first; a package may import its own layer's
# package and those of lower layers, never a higher one or a sibling of its own layer.
LAYERS: dict[str, int] = {"cluster": 0, "router": 1, "rag": 1, "deployments": 2, "cli": 3}
PACKAGES = tuple(LAYERS)
REPO_PYTHON = ("bench", "tools", "tests", *PACKAGES)


def _sources(folders: tuple[str, ...], root: Path = ROOT) -> Iterator[Path]:
    for folder in folders:
        yield from sorted((root / folder).rglob("*.py"))


def _module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return "tierline." + ".".join(parts)


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import in the file, also inside functions.

    `from a.b import c` yields `a.b.c` when `a/b/c` is a module of ours, else `a.b`."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                yield node.lineno, full if _is_our_module(full) else node.module


def _is_our_module(name: str) -> bool:
    parts = name.split(".")
    if parts[0] != "tierline" or len(parts) < 2 or parts[1] not in LAYERS:
        return False
    base = ROOT.joinpath(*parts[1:])
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "tierline" and len(parts) > 1 else None


def upward_imports(root: Path = ROOT) -> list[str]:
    problems = []
    for path in _sources(PACKAGES, root):
        own = _package(_module_name(path, root))
        assert own is not None
        for line, module in _imports(path):
            target = _package(module)
            if target is None or target == own:
                continue
            if target not in LAYERS or LAYERS[target] >= LAYERS[own]:
                problems.append(f"{path.relative_to(root)}:{line}: {own} imports {module}")
    return problems


def bare_imports() -> list[str]:
    """Imports of our folders by their bare names (`import router`) anywhere in the repo."""
    problems = []
    for path in _sources(REPO_PYTHON):
        for line, module in _imports(path):
            if module.split(".")[0] in PACKAGES:
                problems.append(f"{path.relative_to(ROOT)}:{line}: import {module}")
    return problems


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in _sources(PACKAGES):
        name = _module_name(path)
        graph[name] = {m for _, m in _imports(path) if _is_our_module(m) and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _package_parents(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Drop the edges from a package's `__init__` re-exports: a module importing its own
    package's `__init__` is the normal way to reach its public names, not a cycle."""
    return {
        m: {d for d in deps if not m.startswith(d + ".") and not d.startswith(m + ".")}
        for m, deps in graph.items()
    }


def test_layers_import_downwards_only() -> None:
    assert upward_imports() == []


def test_no_bare_imports_of_our_folders() -> None:
    assert bare_imports() == []


def test_no_import_cycles() -> None:
    assert cycles(_package_parents(import_graph())) == []


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_layer_rule_reports_upward_and_sibling_imports(tmp_path: Path) -> None:
    for package in PACKAGES:
        (tmp_path / package).mkdir()
    (tmp_path / "cluster" / "a.py").write_text("def f():\n    import tierline.deployments.x\n")
    (tmp_path / "rag" / "b.py").write_text("from tierline.router.types import Decision\n")
    (tmp_path / "cli" / "c.py").write_text("from tierline.cluster.spec import ClusterSpec\n")
    assert upward_imports(tmp_path) == [
        "cluster/a.py:2: cluster imports tierline.deployments.x",
        "rag/b.py:1: rag imports tierline.router.types",
    ]


def test_only_the_tierline_namespace_is_installed() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert all(p.startswith("tierline.") for p in config["packages"])
    tops = {p.removeprefix("tierline.").split(".")[0] for p in config["packages"]}
    assert tops == set(PACKAGES)
    assert config["package-dir"] == {f"tierline.{p}": p for p in PACKAGES}


@pytest.mark.parametrize("name", PACKAGES)
def test_bare_package_names_do_not_import(name: str, tmp_path: Path) -> None:
    # Outside the repository the bare names are not installed; inside it (cwd on
    # sys.path) each folder refuses to load under any name but its tierline one.
    for cwd in (tmp_path, ROOT):
        res = subprocess.run(
            [sys.executable, "-c", f"import {name}"], cwd=cwd, capture_output=True, text=True
        )
        assert res.returncode != 0, (cwd, res.stdout)
        assert "ModuleNotFoundError" in res.stderr or f"tierline.{name}" in res.stderr


def test_tools_and_benchmarks_do_not_edit_sys_path() -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for p in _sources(("bench", "tools"))
        if "sys.path" in p.read_text()
    ]
    assert offenders == []
