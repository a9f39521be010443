"""Rendering a spec into deployment files. Pure: spec in, plain data out."""

from __future__ import annotations

from typing import Any

from tierline.cluster.spec import ClusterSpec

IMPORT_PATH = "tierline.deployments.app:build_app"
SERVE_LOGGING: dict[str, Any] = {"encoding": "JSON", "log_level": "INFO"}
"""Serve's logging config for the whole application: JSON lines that carry each request's
id (`tierline.deployments.logs` writes the same shape outside Serve)."""


GATEWAY_DEPLOYMENT = "gateway"
"""The gateway's Serve deployment name (the ingress of the application)."""

REQUEST_PATH_PROCESS_ENV: dict[str, str] = {
    # The gateway replicas serve HTTP themselves: no Serve proxy hop on the token path.
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
    # Handles made by Serve's own processes default to gRPC (the gateway sets it on the
    # engine handles it is given, wherever it runs).
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    # Serve's handle router runs on the process's main loop, not a second one.
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    # Each Serve log record (the gateway's answer record, Serve's access record) goes to
    # the replica's log file only, not to stderr as well, where Ray's log monitor reads it
    # again: Ray's own throughput-optimized setting. The files under the session's
    # logs/serve/ hold everything; a replica's print() and stderr go there too.
    "RAY_SERVE_LOG_TO_STDERR": "0",
}
"""The request path's settings that Ray reads from the environment of its processes at
start-up (the Serve controller decides ingress ports, replicas bind them): every `ray
start` of the cluster must have them. Measured one by one in BENCHMARKS.md."""


def ray_process_env(spec: ClusterSpec, gateway_replicas_per_node: int = 1) -> dict[str, str]:
    """The environment every Ray process of a cluster running `spec` must have.

    Gateway replicas bind HTTP ports from `gateway.port` up, one per replica on a node:
    on a cluster (`serve deploy`, the Helm chart) the gateway runs at most one replica per
    node, so each node's gateway answers on `gateway.port` itself and the Serve proxy,
    which Ray still starts on the head, is moved to `proxy_port`."""
    port = spec.gateway.port
    return {
        **REQUEST_PATH_PROCESS_ENV,
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + gateway_replicas_per_node),
    }


def proxy_port(spec: ClusterSpec) -> int:
    """Where a cluster's Serve proxy listens: next to the gateway's range, carrying no
    tierline traffic (health probes of the proxy itself only)."""
    return spec.gateway.port + 1


def required_environment(spec: ClusterSpec) -> str:
    """What `render serve` says the Ray cluster must have, as YAML comment lines."""
    env = ray_process_env(spec)
    lines = [
        "Every Ray node of the cluster (each `ray start`, head and workers) must have this",
        "environment, or the gateway refuses to start (tierline's request path: the",
        "gateway replicas serve HTTP themselves, one per node, on gateway.port):",
        *(f"  {k}={v}" for k, v in env.items()),
        f"Send traffic to port {spec.gateway.port} of the nodes running a gateway replica;",
        f"Serve's proxy moves to port {proxy_port(spec)} and carries none of it.",
    ]
    return "".join(f"# {line}\n" for line in lines)


def serve_config(spec: ClusterSpec) -> dict[str, Any]:
    """A Ray Serve config file (the `serve deploy` schema) that runs this spec."""
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": spec.gateway.host, "port": proxy_port(spec)},
        "applications": [
            {
                "name": spec.name,
                "route_prefix": "/",
                "import_path": IMPORT_PATH,
                # JSON log lines carrying each request's id (deployments.logs).
                "logging_config": dict(SERVE_LOGGING),
                "args": {"spec": spec.model_dump(mode="json")},
                # One gateway replica per node: each binds gateway.port (ray_process_env).
                "deployments": [{"name": GATEWAY_DEPLOYMENT, "max_replicas_per_node": 1}],
            }
        ],
    }
