"""What the gateway knows of each tier right now, in one place: the tier board.

Per tier: health (health checks, Serve's status, failed attempts), engine replicas running
(autoscaled tiers), whether a tier that scales to zero has warmed up, in-flight slots against the
admission limit (`deployments.gateway.pipeline.admission`), and the requests waiting for the tier's
first output (woken when the tier is marked down). `states` hands the router every `TierState` in
one call.

Admission at the edge: `edge_refusal` says, before a request is tokenised or scored,
whether it can have a slot at all. An auto request's tier is not known until routing,
so requests past the edge but not yet holding a slot count as `pending` against the free
slots of every tier: a flood that arrives at once is refused at the edge too, not only
after each request has been tokenised.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Sequence
from typing import Any

from tierline.cluster.spec import TierSpec
from tierline.deployments.gateway.pipeline.admission import Load, Slot, TierSlots, as_router_state
from tierline.router.types import TierState

__all__ = ["TierBoard"]


class TierBoard:
    """Health, replicas, warm-up, slots and down-waiters of every tier."""

    def __init__(self, tiers: Sequence[TierSpec], gateways: int) -> None:
        self.tiers = {t.name: t for t in tiers}
        self.health = {t.name: True for t in tiers}
        # Autoscaled tiers: replicas running now (None: not watched), and the tiers that
        # scale to zero and have answered once: Serve's status stands in for their health
        # probes from then on, so that the gateway never wakes them.
        self.replicas: dict[str, int | None] = {t.name: None for t in tiers}
        self.warmed: set[str] = set()
        self.slots = TierSlots.for_tiers(tiers, gateways)
        self.down_waiters: dict[str, set[asyncio.Future[Any]]] = {t.name: set() for t in tiers}
        self.pending = 0
        """Auto requests past the edge that do not hold a slot yet."""

    # -- the router's view ---------------------------------------------------------------------
    def state(self, name: str) -> TierState:
        base = TierState(
            name,
            self.tiers[name].max_context_tokens,
            self.health[name],
            replicas=self.replicas[name],
        )
        # A tier at its admission limit looks overloaded: the learned policy spills past it.
        return as_router_state(base, self.slots.load(name))

    def states(self, names: Iterable[str]) -> list[TierState]:
        """The router's view of `names`, in that order."""
        return [self.state(n) for n in names]

    # -- admission -------------------------------------------------------------------------------
    def load(self, tier: str) -> Load:
        return self.slots.load(tier)

    def acquire(self, tier: str) -> Slot | None:
        return self.slots.acquire(tier)

    def free(self, tiers: Iterable[str]) -> float:
        """Free slots over `tiers` (infinite when one has no limit)."""
        total = 0.0
        for name in tiers:
            load = self.slots.load(name)
            if load.limit is None:
                return math.inf
            total += max(load.limit - load.in_flight, 0)
        return total

    def room_for_auto(self, tiers: Iterable[str]) -> bool:
        """Whether an auto request over `tiers` may pass the edge: a free slot is left
        after every auto request already past it has taken one."""
        return self.free(tiers) > self.pending

    # -- health ------------------------------------------------------------------------------------
    def mark_down(self, tier: str) -> None:
        """Auto routing skips `tier` until a health check passes again, and requests
        waiting for its first output are woken (they move to its fallback tier)."""
        self.health[tier] = False
        for waiter in list(self.down_waiters[tier]):
            if not waiter.done():
                waiter.set_result(None)

    def down_waiter(self, tier: str) -> asyncio.Future[Any]:
        """A future set when `tier` is marked down; `forget` it when done waiting."""
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.down_waiters[tier].add(waiter)
        return waiter

    def forget(self, tier: str, waiter: asyncio.Future[Any]) -> None:
        self.down_waiters[tier].discard(waiter)

    def is_cold(self, tier: str) -> bool:
        return self.replicas.get(tier) == 0
