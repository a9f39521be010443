from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import typer
from rich.console import Console

from cluster.cli.validate import load_or_exit

console = Console()


def up(
    spec_path: Path = typer.Argument(Path("configs/local.yaml"), help="Spec to deploy."),
    ready_timeout_s: float = typer.Option(900.0, help="How long to wait for /readyz."),
) -> None:
    """Start a local Ray head, deploy the spec on Ray Serve, and serve until Ctrl-C."""
    from cluster import local

    spec = load_or_exit(spec_path)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    t0 = time.monotonic()
    try:
        with console.status(f"starting Ray and deploying {len(spec.tiers)} tier(s)..."):
            run = local.start(spec, ready_timeout_s=ready_timeout_s)
        console.print(
            f"[green]ready[/] in {time.monotonic() - t0:.0f}s: "
            f"tiers {', '.join(t.name for t in spec.tiers)}"
        )
        console.print(f"endpoint: [bold]{run.endpoint}[/] (OpenAI-compatible, /v1)")
        console.print("try:\n  " + local.sample_curl(run.endpoint), highlight=False, soft_wrap=True)
        console.print("Ctrl-C stops the cluster.")
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        console.print("shutting down...")
        local.stop()
        console.print("stopped.")
