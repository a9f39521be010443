"""Gateway-side admission control: refuse a request in microseconds when its tier is full.

Ray Serve refuses a request past a tier's limits too (`BackPressureError`), but only once
the request has reached the tier's handle and waited behind its queue, which took a second
and more under overload. The gateway knows the same limits from the spec, so it counts its
own in-flight requests per tier and answers 503 with `Retry-After` before calling the engine.

How a tier's capacity is shared among gateway replicas (`gateway_limit`):
- `max_ongoing_requests` is per engine replica, and the engine replicas are shared by every
  gateway replica. Serve's HTTP proxy spreads requests evenly over the gateway replicas, so
  each gateway replica takes `ceil(max_ongoing_requests * engine replicas / gateway
  replicas)` of the running slots;
- `max_queued_requests` is Serve's limit per caller (each gateway replica's handle queues
  that many on its own), so each gateway replica adds the whole of it.
Summed over the gateway replicas this is Serve's own capacity (up to the rounding), so the
gateway refuses about where Serve would, without the wait. A tier that autoscales counts
its `max_replicas`, so admission never keeps the autoscaler from seeing the load. A tier
with `max_queued_requests: -1` (no limit) has no admission limit either.

The decisions are pure functions of plain numbers; `TierSlots` only holds the counts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from tierline.cluster.spec import TierSpec
from tierline.router.types import TierState


def engine_replicas_at_most(tier: TierSpec) -> int:
    """The most engine replicas the tier runs: `max_replicas` when it autoscales."""
    if tier.autoscaling is not None:
        return tier.autoscaling.max_replicas
    return tier.num_replicas


def gateway_limit(
    max_ongoing_requests: int, max_queued_requests: int, engine_replicas: int, gateways: int
) -> int | None:
    """In-flight requests one gateway replica may have on a tier; None: no limit."""
    if max_queued_requests < 0:
        return None
    running = math.ceil(max_ongoing_requests * engine_replicas / max(gateways, 1))
    return max(running, 1) + max_queued_requests


def tier_limit(tier: TierSpec, gateways: int) -> int | None:
    return gateway_limit(
        tier.max_ongoing_requests, tier.max_queued_requests, engine_replicas_at_most(tier), gateways
    )


def admits(in_flight: int, limit: int | None) -> bool:
    """Whether one more request fits next to `in_flight` ones."""
    return limit is None or in_flight < limit


@dataclass(frozen=True)
class Load:
    """What the router sees of a tier's admission state: `full` tiers count as overloaded."""

    in_flight: int
    limit: int | None

    @property
    def full(self) -> bool:
        return not admits(self.in_flight, self.limit)


def as_router_state(state: TierState, load: Load) -> TierState:
    """The router's view of a tier at its admission limit: overloaded (queued above the
    queue limit), so a policy that spills sends the request a tier up instead."""
    if not load.full or load.limit is None:
        return state
    return replace(state, queued=max(state.queued, load.in_flight), queue_limit=load.limit - 1)


class TierSlots:
    """In-flight requests of one gateway replica per tier, against each tier's limit."""

    def __init__(self, limits: Mapping[str, int | None]) -> None:
        self.limits = dict(limits)
        self.in_flight = dict.fromkeys(self.limits, 0)

    @classmethod
    def for_tiers(cls, tiers: Iterable[TierSpec], gateways: int) -> TierSlots:
        return cls({t.name: tier_limit(t, gateways) for t in tiers})

    def load(self, tier: str) -> Load:
        return Load(self.in_flight[tier], self.limits[tier])

    def acquire(self, tier: str) -> Slot | None:
        """A slot on `tier` if it has one free; None (nothing taken) when it is full."""
        if not self._take(tier):
            return None
        return Slot(self, tier)

    def _take(self, tier: str) -> bool:
        if not admits(self.in_flight[tier], self.limits[tier]):
            return False
        self.in_flight[tier] += 1
        return True

    def _give(self, tier: str) -> None:
        if self.in_flight[tier] <= 0:
            raise RuntimeError(f"tier {tier!r}: released more slots than were taken")
        self.in_flight[tier] -= 1


class Slot:
    """One request's place on a tier; it moves with the request to a fallback tier."""

    def __init__(self, slots: TierSlots, tier: str) -> None:
        self._slots = slots
        self.tier = tier
        self.released = False

    def move_to(self, tier: str) -> bool:
        """Hold a slot on `tier` instead; False (the old one kept) when `tier` is full."""
        if tier == self.tier:
            return True
        if not self._slots._take(tier):
            return False
        self._slots._give(self.tier)
        self.tier = tier
        return True

    def release(self) -> None:
        """Give the slot back; later calls do nothing."""
        if not self.released:
            self.released = True
            self._slots._give(self.tier)
