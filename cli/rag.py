"""`tierline rag ...`: ingest files into a running gateway, query it, list collections."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from tierline.rag.parsing import KINDS

app = typer.Typer(
    help="Retrieval: ingest documents, search, list collections.", no_args_is_help=True
)
console = Console()
err = Console(stderr=True)

URL = typer.Option("http://127.0.0.1:8000", "--url", help="The gateway's base URL.")
API_KEY = typer.Option(None, "--api-key", envvar="TIERLINE_API_KEY", help="Bearer token.")


def _client(url: str, api_key: str | None) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=300)


def _check(resp: Any) -> Any:
    if resp.status_code >= 400:
        try:
            message = resp.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = resp.text[:300]
        err.print(f"[red]error {resp.status_code}[/]: {message}")
        raise typer.Exit(1)
    return resp.json()


def files_under(paths: list[Path]) -> Iterator[Path]:
    """The given files, and every supported file under the given folders (sorted)."""
    for p in paths:
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in KINDS)
        elif p.is_file():
            yield p
        else:
            err.print(f"[red]no such file or folder[/]: {p}")
            raise typer.Exit(2)


def _metadata(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        err.print("[red]--metadata must be a JSON object[/]")
        raise typer.Exit(2)
    return value


def upload(
    http: Any,
    collection: str,
    files: list[Path],
    meta: dict[str, Any],
    advance: Callable[[], None],
    check: Callable[[Any], Any],
) -> int:
    """Create `collection` (if new) and upload `files` one by one through the gateway's
    API (each file's id: its name without suffix); returns the chunks stored."""
    check(http.post("/v1/rag/collections", json={"name": collection}))
    chunks = 0
    for f in files:
        resp = http.post(
            f"/v1/rag/collections/{collection}/documents",
            files={"file": (f.name, f.read_bytes())},
            data={"metadata": json.dumps({**meta, "path": str(f)})},
        )
        chunks += int(check(resp)["chunks"])
        advance()
    return chunks


@app.command()
def ingest(
    paths: list[Path] = typer.Argument(..., help="Files or folders (.txt .md .html .pdf)."),
    collection: str = typer.Option(..., "--collection", "-c", help="Target collection."),
    metadata: str | None = typer.Option(None, help="JSON object added to every document."),
    url: str = URL,
    api_key: str | None = API_KEY,
) -> None:
    """Upload documents (id = file name without suffix); re-ingesting an id replaces it."""
    files = list(files_under(paths))
    meta = _metadata(metadata)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with _client(url, api_key) as http, Progress(*columns, console=err) as bar:
        task = bar.add_task(f"ingesting into {collection}", total=len(files))
        chunks = upload(http, collection, files, meta, lambda: bar.advance(task), _check)
    console.print(f"ingested {len(files)} document(s), {chunks} chunk(s) into {collection}")


@app.command()
def query(
    text: str = typer.Argument(..., help="What to search for."),
    collection: str = typer.Option(..., "--collection", "-c"),
    top_k: int = typer.Option(5, "--top-k", "-k"),
    filter: str | None = typer.Option(None, "--filter", help="Metadata filter, JSON."),
    as_json: bool = typer.Option(False, "--json", help="Print the raw JSON answer."),
    url: str = URL,
    api_key: str | None = API_KEY,
) -> None:
    """Hybrid search (dense + BM25, fused) in a collection of a running gateway."""
    body: dict[str, Any] = {"query": text, "top_k": top_k}
    if filter:
        body["filter"] = _metadata(filter)
    with _client(url, api_key) as http:
        out = _check(http.post(f"/v1/rag/collections/{collection}/search", json=body))
    if as_json:
        console.print_json(data=out)
        return
    table = Table("score", "document", "chunk", "text")
    for r in out["results"]:
        snippet = " ".join(r["text"].split())[:100]
        table.add_row(f"{r['score']:.4f}", r["document_id"], r["chunk_id"], snippet)
    console.print(table)


@app.command()
def collections(
    url: str = URL,
    api_key: str | None = API_KEY,
    all_tenants: bool = typer.Option(
        False, "--all-tenants", help="Every tenant's collections (needs an operator key)."
    ),
) -> None:
    """List your tenant's collections with their document and chunk counts."""
    with _client(url, api_key) as http:
        params = {"all_tenants": "true"} if all_tenants else {}
        out = _check(http.get("/v1/rag/collections", params=params))
    table = Table(*(["tenant"] if all_tenants else []), "collection", "documents", "chunks")
    for c in out["data"]:
        owner = [c["tenant"]] if all_tenants else []
        table.add_row(*owner, c["name"], str(c["documents"]), str(c["chunks"]))
    console.print(table)
