from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Model checkpoints.", no_args_is_help=True)


@app.command("tiny")
def tiny(
    out: Path = typer.Option(Path("models"), "--out", help="Folder for the checkpoints."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if present."),
) -> None:
    """Build the tiny offline random-weight models the local config serves."""
    from cluster.tiny_models import ensure_tiny_models

    for path, built in ensure_tiny_models(out, force=force):
        typer.echo(f"{path}: {'built' if built else 'present'}")
