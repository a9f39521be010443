from __future__ import annotations

from pathlib import Path

import typer
import yaml
from tierline.cli.validate import load_or_exit
from tierline.cluster.render import ray_process_env, required_environment, serve_config

app = typer.Typer(help="Render deployment files from a spec.", no_args_is_help=True)


@app.command("serve")
def serve(spec: Path = typer.Argument(..., help="Spec file.", show_default=False)) -> None:
    """Write a Ray Serve config (for `serve deploy`) to stdout, headed by the environment
    every Ray node must be started with (`tierline render ray-env` prints it alone)."""
    loaded = load_or_exit(spec)
    typer.echo(required_environment(loaded), nl=False)
    typer.echo(yaml.safe_dump(serve_config(loaded), sort_keys=False), nl=False)


@app.command("ray-env")
def ray_env(spec: Path = typer.Argument(..., help="Spec file.", show_default=False)) -> None:
    """Print the environment every Ray node (`ray start`) of the cluster needs, one
    NAME=value per line, e.g. `env $(tierline render ray-env spec.yaml) ray start ...`."""
    for name, value in ray_process_env(load_or_exit(spec)).items():
        typer.echo(f"{name}={value}")


@app.command("helm-values")
def helm_values_cmd(
    spec: Path = typer.Argument(..., help="Spec file.", show_default=False),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write here instead of stdout."),
    gpus_per_node: int = typer.Option(
        8, "--gpus-per-node", min=1, help="GPUs of one worker pod (one GPU node)."
    ),
) -> None:
    """Write Helm values (helm/tierline) that run this spec: the spec and its worker groups."""
    from tierline.cluster.helm_values import HelmValuesError, helm_values, local_model_paths

    loaded = load_or_exit(spec)
    try:
        values = helm_values(loaded, gpus_per_node=gpus_per_node)
    except HelmValuesError as e:
        typer.echo(f"{spec}: {e}", err=True)
        raise typer.Exit(1) from None
    for tier in local_model_paths(loaded):
        typer.echo(
            f"warning: tier {tier!r} loads a local path; it must exist in the image or a volume",
            err=True,
        )
    text = (
        f"# Written by `tierline render helm-values {spec}`. The chart renders `spec` into the\n"
        "# RayService's serveConfigV2, exactly as `tierline render serve` does.\n"
        + yaml.safe_dump(values, sort_keys=False)
    )
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
