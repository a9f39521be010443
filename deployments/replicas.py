"""How many engine replicas each tier runs now: a small Protocol and its Ray Serve version.

The gateway needs this for autoscaled tiers: a tier scaled to zero is `cold` for the
router (auto traffic skips it unless the policy waits for cold starts), and the gateway
must not wake it with health probes. `replica_counts` parses Serve's status as plain
data, so it is unit-tested without Ray; `ServeReplicaWatcher` asks Serve's controller.
"""

from __future__ import annotations

import asyncio
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


def _plain_status(app_name: str) -> dict[str, dict[str, Any]]:
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return {}
    return {
        name: {
            "status": str(getattr(d.status, "value", d.status)),
            "replica_states": {
                str(getattr(k, "value", k)): int(v) for k, v in d.replica_states.items()
            },
        }
        for name, d in app.deployments.items()
    }


class ServeReplicaWatcher:
    """Reads replica counts from Serve's controller (a blocking call, run in a thread)."""

    def __init__(self, app_name: str, tiers: Mapping[str, str]) -> None:
        self.app_name = app_name
        self.tiers = dict(tiers)

    async def counts(self) -> Mapping[str, ReplicaCount]:
        status = await asyncio.to_thread(_plain_status, self.app_name)
        return replica_counts(status, self.tiers)
