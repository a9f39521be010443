"""Keeping the tier board current: health probes and Serve's replica counts.

Two loops the gateway runs for its replica's life (started in the app's lifespan), and
the readiness check. They only write the `TierBoard`; routing reads it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from tierline.cluster.spec import ClusterSpec
from tierline.deployments.gateway.engines.board import TierBoard
from tierline.deployments.gateway.engines.engine_client import EngineClient
from tierline.deployments.gateway.engines.replicas import ReplicaWatcher

__all__ = ["ReadinessCache", "readiness", "watch_health", "watch_replicas"]

logger = logging.getLogger("ray.serve.tierline.gateway")


async def watch_health(
    spec: ClusterSpec,
    board: TierBoard,
    engines: Mapping[str, EngineClient],
    scales_watched: bool,
    period_s: float = 5.0,
    timeout_s: float = 10.0,
    failures_to_down: int = 3,
) -> None:
    """Keep `board.health` current: a tier whose engine fails `failures_to_down` checks
    in a row is skipped by auto routing until a check passes again. One slow check under
    load is not an outage. With `scales_watched` (Serve's replica counts are watched), a
    tier that scales to zero and has answered once is `warmed`: no more probes for it."""
    failures = dict.fromkeys(board.health, 0)
    seen_up: set[str] = set()
    while True:
        names = [t.name for t in spec.tiers if t.name not in board.warmed]
        checks = await asyncio.gather(
            *(engines[n].healthy(timeout_s) for n in names), return_exceptions=True
        )
        for name, ok in zip(names, checks, strict=True):
            if ok is True:
                seen_up.add(name)
                failures[name] = 0
                board.health[name] = True
                if spec.tier(name).scales_to_zero and scales_watched:
                    board.warmed.add(name)
            elif name in seen_up:  # a tier still warming up has not failed yet
                failures[name] += 1
                if failures[name] >= failures_to_down:
                    board.health[name] = False
        await asyncio.sleep(period_s)


async def watch_replicas(
    spec: ClusterSpec, board: TierBoard, watcher: ReplicaWatcher, period_s: float = 2.0
) -> None:
    """Keep `board.replicas` of autoscaled tiers current from Serve's status. Tiers that
    scale to zero and have answered once take their health from it too: a probe would
    count as load and keep them from ever scaling down (or wake them up).

    A tier that does not scale to zero and had running replicas is marked down as soon
    as Serve reports none running (they died): its waiting requests move to the
    fallback tier now, not after the health checks have failed (tens of seconds)."""
    had_running: dict[str, bool] = {}
    while True:
        try:
            counts = await watcher.counts()
        except Exception as err:  # the controller is busy or restarting: keep the last
            logger.warning("replica counts unavailable: %r", err)
            counts = {}
        for name, count in counts.items():
            tier = spec.tier(name)
            if tier.autoscaling is not None:
                board.replicas[name] = count.running
            if name in board.warmed:
                board.health[name] = count.healthy
            if tier.scales_to_zero:
                continue
            if count.running == 0 and had_running.get(name) and board.health[name]:
                logger.warning("tier %s: no replica running (Serve): marked down", name)
                board.mark_down(name)
            had_running[name] = count.running > 0
        await asyncio.sleep(period_s)


async def readiness(
    spec: ClusterSpec, board: TierBoard, engines: Mapping[str, EngineClient], timeout_s: float
) -> dict[str, bool]:
    """Each tier's readiness: a probe, or the board's health for a `warmed` tier (no
    probe: it may be scaled to zero, and stays so) and for an external tier (no probe
    leaves the cluster on a readiness call, which anyone may make; the health watch
    keeps its state)."""
    names = [t.name for t in spec.tiers]

    async def check(name: str) -> bool:
        if name in board.warmed or spec.tier(name).is_external:
            return board.health[name]
        return await engines[name].healthy(timeout_s)

    checks = await asyncio.gather(*(check(n) for n in names))
    return dict(zip(names, checks, strict=True))


class ReadinessCache:
    """The last readiness answer, reused for `ttl_s` (`gateway.readyz_cache_s`): /readyz
    is public, so a flood of calls must not become a flood of probes. Calls that arrive
    while a probe runs wait for that probe rather than starting their own."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self.probes = 0
        self._at = -float("inf")
        self._value: dict[str, bool] | None = None
        self._running: asyncio.Future[dict[str, bool]] | None = None

    async def get(self, probe: Callable[[], Awaitable[dict[str, bool]]]) -> dict[str, bool]:
        if self._value is not None and self.clock() - self._at < self.ttl_s:
            return dict(self._value)
        if self._running is None:
            self._running = asyncio.ensure_future(self._probe(probe))
        running = self._running
        return dict(await asyncio.shield(running))

    async def _probe(self, probe: Callable[[], Awaitable[dict[str, bool]]]) -> dict[str, bool]:
        try:
            self.probes += 1
            value = await probe()
            self._value, self._at = value, self.clock()
            return value
        finally:
            self._running = None
