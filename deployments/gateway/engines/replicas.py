"""How many engine replicas each tier runs now: a small Protocol and its Ray Serve version.

The gateway needs this for autoscaled tiers: a tier scaled to zero is `cold` for the
router (auto traffic skips it unless the policy waits for cold starts), and the gateway
must not wake it with health probes. `replica_counts` parses Serve's status as plain
data, so it is unit-tested without Ray; `ServeReplicaWatcher` asks Serve's controller.

`ServeDetails` is the one poll of the controller in a gateway replica: the relay
directory's watch (`app.watch_relays`, every second) fetches the instance details, and
the replica watcher (every 2 s) reads that same answer while it is recent.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Mapping
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


def serve_details() -> Mapping[str, Any]:
    """Serve's instance details from the controller (blocking), {} without a controller."""
    # The controller's details as the plain dict it sends, read without building
    # `serve.status()`'s pydantic models: those re-import and cloudpickle every
    # deployment's request router class on each call, which took a sixth of a gateway
    # replica's samples under a flood (bench/results/flood.json, py-spy). The client
    # accessor is Ray Serve's own (`serve.status()` uses it); the version is pinned.
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return {}
    details: Mapping[str, Any] = client.get_serve_details()
    return details


class ServeDetails:
    """Serve's instance details, shared by the readers in this process. `get()` reuses an
    answer younger than `max_age_s`; `get(fresh=True)` never takes a kept answer: it
    waits for the fetch running now or starts one (the relay directory prunes its entries
    by the answer). Readers that ask while a fetch runs wait for it rather than starting
    their own (`fetch` blocks: it runs in a thread). A failed fetch fails its waiters and
    is not kept, so the next read tries again."""

    def __init__(
        self,
        fetch: Callable[[], Mapping[str, Any]] = serve_details,
        max_age_s: float = 1.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fetch = fetch
        self.max_age_s = max_age_s
        self.clock = clock
        self.fetches = 0
        self._at = -float("inf")
        self._value: Mapping[str, Any] | None = None
        self._running: asyncio.Future[Mapping[str, Any]] | None = None

    async def get(self, fresh: bool = False) -> Mapping[str, Any]:
        kept = self._value
        if not fresh and kept is not None and self.clock() - self._at < self.max_age_s:
            return kept
        if self._running is None:
            self._running = asyncio.ensure_future(self._fetch())
        return await asyncio.shield(self._running)

    async def _fetch(self) -> Mapping[str, Any]:
        try:
            self.fetches += 1
            value = await asyncio.to_thread(self.fetch)
            self._value, self._at = value, self.clock()
            return value
        finally:
            self._running = None


class ServeReplicaWatcher:
    """Reads replica counts from Serve's controller, through `details` (shared with the
    relay directory's watch in the gateway; a private one by default)."""

    def __init__(
        self, app_name: str, tiers: Mapping[str, str], details: ServeDetails | None = None
    ) -> None:
        self.app_name = app_name
        self.tiers = dict(tiers)
        self.details = details if details is not None else ServeDetails()

    async def counts(self) -> Mapping[str, ReplicaCount]:
        status = deployment_states(await self.details.get(), self.app_name)
        return replica_counts(status, self.tiers)
