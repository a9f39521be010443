"""The `tierline` command."""

from __future__ import annotations

import typer

from cluster.cli import models, render, run, validate

app = typer.Typer(
    name="tierline",
    help="Self-hosted LLM inference cluster: vLLM tiers on Ray Serve behind one routed endpoint.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("validate")(validate.validate)
app.command("up")(run.up)
app.add_typer(render.app, name="render")
app.add_typer(models.app, name="models")


def main() -> None:
    app()
