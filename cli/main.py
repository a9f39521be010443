"""The `tierline` command: one typer app over the subcommand modules."""

from __future__ import annotations

import typer
from tierline.cli import down, keys, models, render, run, validate
from tierline.cli import plan as plan_cli
from tierline.cli import profile as profile_cli
from tierline.cli import rag as rag_cli
from tierline.cli import router as router_cli
from tierline.cli import status as status_cli

app = typer.Typer(
    name="tierline",
    help="Self-hosted LLM inference cluster: vLLM tiers on Ray Serve behind one routed endpoint.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("validate")(validate.validate)
app.command("up")(run.up)
app.command("down")(down.down)
app.command("plan")(plan_cli.plan)
app.command("status")(status_cli.status)
app.command("profile")(profile_cli.profile)
app.add_typer(render.app, name="render")
app.add_typer(models.app, name="models")
app.add_typer(keys.app, name="keys")
app.add_typer(router_cli.app, name="router")
app.add_typer(rag_cli.app, name="rag")


def main() -> None:
    app()
