"""Rendering a spec into deployment files. Pure: spec in, plain data out."""

from __future__ import annotations

from typing import Any

from tierline.cluster.spec import ClusterSpec

IMPORT_PATH = "tierline.deployments.app:build_app"
SERVE_LOGGING: dict[str, Any] = {"encoding": "JSON", "log_level": "INFO"}
"""Serve's logging config for the whole application: JSON lines that carry each request's
id (`tierline.deployments.logs` writes the same shape outside Serve)."""


class RenderError(ValueError):
    """The spec asks for something a rendered deployment cannot give it."""


LOCAL_ONLY_GATEWAY_FIELDS = ("direct_ingress",)


def check_renderable(spec: ClusterSpec) -> None:
    """Settings that live in the environment of every Ray process, which `tierline up`
    sets and a config file for an existing cluster cannot: refuse them, never drop them.
    (`gateway.grpc_between_deployments` travels in the spec: the gateway sets it on its
    engine handles wherever it runs.)"""
    on = [f for f in LOCAL_ONLY_GATEWAY_FIELDS if getattr(spec.gateway, f)]
    if on:
        raise RenderError(
            f"gateway.{', gateway.'.join(on)}: local runs (`tierline up`) only for now; they "
            "are Ray process settings that a Serve config or the Helm chart does not carry. "
            "Set them to false to render this spec."
        )


def serve_config(spec: ClusterSpec) -> dict[str, Any]:
    """A Ray Serve config file (the `serve deploy` schema) that runs this spec."""
    check_renderable(spec)
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": spec.gateway.host, "port": spec.gateway.port},
        "applications": [
            {
                "name": spec.name,
                "route_prefix": "/",
                "import_path": IMPORT_PATH,
                # JSON log lines carrying each request's id (deployments.logs).
                "logging_config": dict(SERVE_LOGGING),
                "args": {"spec": spec.model_dump(mode="json")},
            }
        ],
    }
