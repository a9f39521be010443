"""How many engine replicas each tier runs now: a small Protocol and its Ray Serve version.

The gateway needs this for autoscaled tiers: a tier scaled to zero is `cold` for the
router (auto traffic skips it unless the policy waits for cold starts), and the gateway
must not wake it with health probes. `replica_counts` parses Serve's status as plain
data, so it is unit-tested without Ray; `ServeReplicaWatcher` asks Serve's controller.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

# Serve deployment states in which the tier cannot serve (everything else, including
# UPSCALING and DOWNSCALING, can).
_FAILED_STATES = frozenset({"UNHEALTHY", "DEPLOY_FAILED"})


@dataclass(frozen=True)
class ReplicaCount:
    running: int
    """Replicas in state RUNNING."""
    starting: int
    """Replicas being started (STARTING, PENDING_MIGRATION, ...), e.g. during a cold start."""
    healthy: bool
    """Serve's deployment status is not UNHEALTHY or DEPLOY_FAILED."""


class ReplicaWatcher(Protocol):
    async def counts(self) -> Mapping[str, ReplicaCount]:
        """Tier name -> its replicas now; tiers Serve does not report are left out."""
        ...


def replica_counts(
    deployments: Mapping[str, Mapping[str, Any]], tiers: Mapping[str, str]
) -> dict[str, ReplicaCount]:
    """Parse Serve's per-deployment status of one application.

    `deployments` maps deployment name to `{"status": str, "replica_states": {state: n}}`
    (the shape of `serve.status().applications[app].deployments`, as plain data); `tiers`
    maps tier name to its deployment name.
    """
    out: dict[str, ReplicaCount] = {}
    for tier, deployment in tiers.items():
        d = deployments.get(deployment)
        if d is None:
            continue
        states = {str(k): int(v) for k, v in (d.get("replica_states") or {}).items()}
        running = states.get("RUNNING", 0)
        starting = sum(n for s, n in states.items() if s not in ("RUNNING", "STOPPING"))
        out[tier] = ReplicaCount(
            running=running,
            starting=starting,
            healthy=str(d.get("status", "")) not in _FAILED_STATES,
        )
    return out


def _value(x: Any) -> str:
    """An enum member's value, or the thing itself, as text."""
    return str(getattr(x, "value", x))


def deployment_states(details: Mapping[str, Any], app_name: str) -> dict[str, dict[str, Any]]:
    """Serve's instance details (the controller's plain dict, in the shape of
    `ray.serve.schema.ServeInstanceDetails`) reduced to what `replica_counts` reads: per
    deployment of `app_name`, its status and how many of its replicas are in each state."""
    app = (details.get("applications") or {}).get(app_name)
    if not app:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for name, d in (app.get("deployments") or {}).items():
        states = Counter(_value(r.get("state")) for r in d.get("replicas") or ())
        out[str(name)] = {"status": _value(d.get("status", "")), "replica_states": dict(states)}
    return out


def _plain_status(app_name: str) -> dict[str, dict[str, Any]]:
    # The controller's details as the plain dict it sends, read without building
    # `serve.status()`'s pydantic models: those re-import and cloudpickle every
    # deployment's request router class on each call, which took a sixth of a gateway
    # replica's samples under a flood (bench/results/flood.json, py-spy). The client
    # accessor is Ray Serve's own (`serve.status()` uses it); the version is pinned.
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return {}
    return deployment_states(client.get_serve_details(), app_name)


class ServeReplicaWatcher:
    """Reads replica counts from Serve's controller (a blocking call, run in a thread)."""

    def __init__(self, app_name: str, tiers: Mapping[str, str]) -> None:
        self.app_name = app_name
        self.tiers = dict(tiers)

    async def counts(self) -> Mapping[str, ReplicaCount]:
        status = await asyncio.to_thread(_plain_status, self.app_name)
        return replica_counts(status, self.tiers)
