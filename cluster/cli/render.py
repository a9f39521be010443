from __future__ import annotations

from pathlib import Path

import typer
import yaml

from cluster.cli.validate import load_or_exit
from cluster.render import serve_config

app = typer.Typer(help="Render deployment files from a spec.", no_args_is_help=True)


@app.command("serve")
def serve(spec: Path = typer.Argument(..., help="Spec file.", show_default=False)) -> None:
    """Write a Ray Serve config (for `serve deploy`) to stdout."""
    config = serve_config(load_or_exit(spec))
    typer.echo(yaml.safe_dump(config, sort_keys=False), nl=False)
