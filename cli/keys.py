from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="API keys (stored as SHA-256 hashes).", no_args_is_help=True)


@app.command("add")
def add(
    tenant: str = typer.Option(..., "--tenant", help="Tenant the key belongs to."),
    keys_file: Path = typer.Option(..., "--file", help="Keys file (JSON of hashes)."),
) -> None:
    """Make a key for TENANT, store its hash in the keys file, print the key once."""
    from tierline.deployments.auth import add_key

    key = add_key(keys_file, tenant)
    typer.echo(key)
    typer.echo(f"stored its hash in {keys_file}; the key itself is not kept", err=True)
