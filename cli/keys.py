from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import typer

app = typer.Typer(
    help="API keys (stored as SHA-256 hashes). A running gateway picks changes up within "
    "seconds; no restart.",
    no_args_is_help=True,
)
KEYS_FILE = typer.Option(..., "--file", help="Keys file (JSON of hashes).")


@app.command("add")
def add(
    tenant: str = typer.Option(..., "--tenant", help="Tenant the key belongs to."),
    keys_file: Path = KEYS_FILE,
    operator: bool = typer.Option(
        False, "--operator", help="Operator role: may see every tenant's RAG collections."
    ),
    role: str = typer.Option("tenant", "--role", help="tenant or operator."),
) -> None:
    """Make a key for TENANT, store its hash in the keys file, print the key once."""
    from tierline.deployments.gateway.pipeline.auth import ROLES, add_key

    chosen = "operator" if operator else role
    if chosen not in ROLES:
        raise typer.BadParameter(f"{chosen!r}: one of {', '.join(ROLES)}", param_hint="--role")
    key = add_key(keys_file, tenant, chosen)
    typer.echo(key)
    typer.echo(f"stored its hash in {keys_file}; the key itself is not kept", err=True)


@app.command("remove")
def remove(
    keys_file: Path = KEYS_FILE,
    key: str | None = typer.Option(None, "--key", help="The key itself."),
    sha256: str | None = typer.Option(
        None, "--sha256", help="Its hash, or a prefix of 8+ hex digits (`keys list` shows them)."
    ),
) -> None:
    """Revoke a key: drop its entry from the keys file."""
    from tierline.deployments.gateway.pipeline.auth import remove_keys

    try:
        removed = remove_keys(keys_file, key=key, sha256_prefix=sha256)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    if not removed:
        typer.echo("no such key in the keys file", err=True)
        raise typer.Exit(1)
    typer.echo(f"removed {removed} key(s) from {keys_file}", err=True)


@app.command("list")
def list_keys(keys_file: Path = KEYS_FILE) -> None:
    """The keys file's entries: tenant, role, hash prefix, created."""
    from rich.console import Console
    from rich.table import Table

    data = json.loads(keys_file.read_text()) if keys_file.exists() else {"keys": []}
    table = Table(title=str(keys_file), title_justify="left")
    for column in ("tenant", "role", "sha256", "created"):
        table.add_column(column)
    for e in data.get("keys", []):
        created = e.get("created")
        when = datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%d %H:%M") if created else ""
        table.add_row(
            str(e.get("tenant")), e.get("role", "tenant"), str(e.get("sha256"))[:12], when
        )
    Console().print(table)
