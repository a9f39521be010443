from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import typer
from rich.console import Console

from cluster.cli.validate import load_or_exit
from cluster.spec import ClusterSpec

console = Console()


def up(
    spec_path: Path = typer.Argument(Path("configs/local.yaml"), help="Spec to deploy."),
    ready_timeout_s: float = typer.Option(900.0, help="How long to wait for /readyz."),
) -> None:
    """Start a local Ray head, deploy the spec on Ray Serve, and serve until Ctrl-C."""
    from cluster import local

    spec = load_or_exit(spec_path)
    key = _local_key(spec)
    stop = threading.Event()
    t0 = time.monotonic()
    started = False
    try:
        with console.status(f"starting Ray and deploying {len(spec.tiers)} tier(s)..."):
            metrics_port = local.metrics_port_for(local.DEFAULT_METRICS_PORT)
            run = local.start(spec, ready_timeout_s=ready_timeout_s, metrics_port=metrics_port)
        started = True
        # Installed after ray.init on purpose: Ray's own fatal-signal handler would
        # otherwise run first and leave the driver unable to shut Serve down cleanly.
        # SIGINT too: a shell that starts us in the background leaves Ctrl-C ignored.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        console.print(
            f"[green]ready[/] in {time.monotonic() - t0:.0f}s: "
            f"tiers {', '.join(t.name for t in spec.tiers)}"
        )
        console.print(f"endpoint: [bold]{run.endpoint}[/] (OpenAI-compatible, /v1)")
        console.print(f"metrics: {run.metrics_url} (Prometheus; `tierline status`)")
        if key is not None:
            console.print(f"API key: in {key} (send it as 'Authorization: Bearer <key>')")
        console.print(
            "try:\n  " + local.sample_curl(run.endpoint, key_file=key),
            highlight=False,
            soft_wrap=True,
        )
        console.print("Ctrl-C stops the cluster.")
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        if started:
            console.print(f"draining (up to {spec.gateway.drain_timeout_s:.0f}s)...")
            try:
                left = local.drain(spec)
                if left:
                    console.print(f"{left} request(s) still running at the end of the window")
            except Exception as err:  # shutting down anyway
                console.print(f"drain failed: {err}")
        console.print("shutting down...")
        local.stop()
        console.print("stopped.")


def _local_key(spec: ClusterSpec) -> Path | None:
    """On first start, make a local API key next to the spec's keys file (mode 600)."""
    auth = spec.gateway.auth
    if not auth.enabled or auth.keys_file is None:
        return None
    from deployments.auth import ensure_local_key

    keys_file = Path(auth.keys_file)
    _, created = ensure_local_key(keys_file.parent, keys_file)
    key_path = keys_file.parent / "api-key"
    if created:
        console.print(f"created a local API key in {key_path} (mode 600)")
    return key_path
