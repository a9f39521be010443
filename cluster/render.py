"""Rendering a spec into deployment files. Pure: spec in, plain data out."""

from __future__ import annotations

from typing import Any

from cluster.spec import ClusterSpec
from deployments.logs import SERVE_LOGGING

IMPORT_PATH = "deployments.app:build_app"


def serve_config(spec: ClusterSpec) -> dict[str, Any]:
    """A Ray Serve config file (the `serve deploy` schema) that runs this spec."""
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
