"""Regenerate every shipped file that is made from code, or check that none is stale.

    make generate                          # .venv/bin/python -m tools.generate
    .venv/bin/python -m tools.generate --check

The generated files, each made from its single source of truth:
- `k8s/base`, `k8s/overlays`: the Helm chart rendered per config (tools/kustomize.py);
- `helm/tierline/values.schema.json`'s `spec` part: the pydantic spec's JSON schema;
- `docs/configuration.md`: the reference of every spec field, from the same schema.

Tests call `stale()` so a change to the chart or the spec that is not regenerated fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tools.helm import ROOT

__all__ = ["GENERATORS", "Generator", "stale", "write"]


@dataclass(frozen=True)
class Generator:
    name: str
    fresh: Callable[[], dict[Path, str]]
    """Every file it makes, by absolute path, with its text."""
    owned: Callable[[], list[Path]]
    """The files on disk it made before: those it no longer makes are removed."""


def _k8s_fresh() -> dict[Path, str]:
    from tools.kustomize import K8S, generate

    return {K8S / rel: text for rel, text in generate().items()}


def _k8s_owned() -> list[Path]:
    from tools.kustomize import K8S, generated_on_disk

    return [K8S / rel for rel in generated_on_disk()]


CHART_SCHEMA = ROOT / "helm" / "tierline" / "values.schema.json"


def _chart_schema_fresh() -> dict[Path, str]:
    from tierline.cluster.helm_values import chart_schema_with_spec

    fresh = chart_schema_with_spec(json.loads(CHART_SCHEMA.read_text()))
    return {CHART_SCHEMA: json.dumps(fresh, indent=2) + "\n"}


def _config_docs_fresh() -> dict[Path, str]:
    from tools.config_docs import OUTPUT, render

    return {OUTPUT: render()}


GENERATORS = (
    Generator("k8s manifests", _k8s_fresh, _k8s_owned),
    Generator("chart values schema", _chart_schema_fresh, lambda: [CHART_SCHEMA]),
    Generator("configuration reference", _config_docs_fresh, list),
)


def _diff(gen: Generator) -> tuple[dict[Path, str], list[Path]]:
    """(files to write, files to remove) to bring `gen`'s output up to date."""
    fresh = gen.fresh()
    write_ = {p: t for p, t in fresh.items() if not p.exists() or p.read_text() != t}
    remove = [p for p in gen.owned() if p not in fresh and p.exists()]
    return write_, remove


def stale(names: tuple[str, ...] = ()) -> list[str]:
    """Generated files that differ from what their generator makes now (repo-relative)."""
    out: list[str] = []
    for gen in GENERATORS:
        if names and gen.name not in names:
            continue
        write_, remove = _diff(gen)
        out += [str(p.relative_to(ROOT)) for p in [*write_, *remove]]
    return sorted(out)


def write() -> list[str]:
    """Regenerate everything; returns what changed (repo-relative)."""
    changed: list[str] = []
    for gen in GENERATORS:
        write_, remove = _diff(gen)
        for path in remove:
            path.unlink()
        for path, text in write_.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        changed += [str(p.relative_to(ROOT)) for p in [*write_, *remove]]
    return sorted(changed)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.generate", description=__doc__)
    ap.add_argument("--check", action="store_true", help="list stale files; exit 1 if any")
    args = ap.parse_args(argv)
    if args.check:
        out = stale()
        for rel in out:
            print(f"stale: {rel}")
        if out:
            print("run `make generate`", file=sys.stderr)
        return 1 if out else 0
    for rel in write():
        print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
