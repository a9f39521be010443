from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from tierline.cluster.specfile import SpecError, load_spec

err = Console(stderr=True)


def load_or_exit(path: Path):
    try:
        return load_spec(path)
    except SpecError as e:
        err.print(f"[bold red]{e.source}[/]: {len(e.issues)} error(s)")
        for issue in e.issues:
            err.print(f"  [red]✗[/] {issue}", markup=True, highlight=False)
        raise typer.Exit(1) from None


def validate(
    specs: list[Path] = typer.Argument(..., help="Spec files to check.", show_default=False),
) -> None:
    """Check spec files; print every error with its YAML path and exit non-zero if any."""
    failed = False
    for path in specs:
        try:
            spec = load_or_exit(path)
        except typer.Exit:
            failed = True
            continue
        tiers = ", ".join(t.name for t in spec.tiers)
        typer.echo(f"{path}: ok ({len(spec.tiers)} tiers: {tiers})")
    if failed:
        raise typer.Exit(1)
