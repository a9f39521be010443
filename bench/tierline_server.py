"""Run a tierline spec locally until SIGTERM/SIGINT, for the serving benchmark.

    python bench/tierline_server.py SPEC --port PORT --keys-file KEYS

The same code path as `tierline up` (`tierline.cli.local.start`, then drain and
`tierline.cli.local.stop` on the signal), with the port and keys file the benchmark chose.
Prints one line `ready <url>` once /readyz answers 200.
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _start(local: Any, spec: Any, ready_timeout_s: float, attempts: int = 3) -> Any:
    """`local.start`, tried again when Ray's node does not come up: on a loaded machine
    the raylet can miss Ray's fixed 30 s registration window."""
    import ray

    for attempt in range(1, attempts + 1):
        try:
            return local.start(spec, ready_timeout_s=ready_timeout_s)
        except Exception as err:
            if "timed out during startup" not in str(err) or attempt == attempts:
                raise
            print(f"Ray did not start ({err}); trying again", flush=True)
            ray.shutdown()
            time.sleep(5.0)
    raise AssertionError("unreachable")


def main() -> None:
    from tierline.cli import local
    from tierline.cluster.specfile import load_spec

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("spec", type=Path)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--keys-file", type=Path, required=True)
    parser.add_argument("--ready-timeout-s", type=float, default=900.0)
    args = parser.parse_args()

    spec = load_spec(args.spec)
    auth = spec.gateway.auth.model_copy(update={"keys_file": str(args.keys_file)})
    gateway = spec.gateway.model_copy(update={"port": args.port, "auth": auth})
    spec = spec.model_copy(update={"gateway": gateway})

    stop = threading.Event()
    started = False
    try:
        run = _start(local, spec, args.ready_timeout_s)
        started = True
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        print(f"ready {run.endpoint} in {run.ready_s:.0f}s", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        if started:
            try:
                local.drain(spec)
            except Exception as err:  # stopping anyway
                print(f"drain failed: {err}", flush=True)
        import ray

        if ray.is_initialized():  # a start that failed before Ray was up has nothing to stop
            local.stop()
        print("stopped", flush=True)


if __name__ == "__main__":
    main()
