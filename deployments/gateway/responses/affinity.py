"""Conversation affinity: a follow-up turn stays on the tier that served the last one.

A pure rule over plain data, applied by `plan.decide_route` before the policy: the
previous turn's tier keeps the conversation (its engine's prefix cache holds the history)
unless the tier may no longer be used, the prompt no longer fits its context, or it is
unhealthy or scaled to zero. A busy tier keeps its conversations: its queue is Serve's
to balance across the tier's replicas, and admission answers 503 when it is full. When
the conversation cannot stay, the policy routes as usual and the reason header says why
it moved (`auto:default+affinity-left:context`).

Within the tier, Ray Serve picks the replica; with `replica_routing: prefix` its
prefix-cache affinity router sends the rebuilt prompt (the previous prompt, the answer,
the new input) to the replica whose prefix tree matches it longest, which is the replica
that served the previous turn while the replicas' queues are balanced.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tierline.router.types import Decision, TierState

__all__ = ["AFFINITY_KEPT", "Affinity", "sticky_decision"]

AFFINITY_KEPT = "affinity:kept"


@dataclass(frozen=True)
class Affinity:
    """Where the conversation's previous turn ran."""

    tier: str
    replica: str | None = None
    """The engine replica, when known (Serve does not report it to the caller today)."""


def sticky_decision(
    affinity: Affinity,
    states: Sequence[TierState],
    needed: Callable[[str], int],
) -> Decision | str:
    """The decision that keeps the conversation on `affinity.tier`, or why it cannot stay
    (a short reason for the header: not-allowed, unhealthy, cold, context: the
    router's own reasons to pass a tier over, `router.fallback.unusable`).

    `states`: the request's candidate tiers now; `needed(tier)`: the context the request
    needs on a tier (prompt plus completion budget)."""
    state = next((s for s in states if s.name == affinity.tier), None)
    if state is None:
        return "not-allowed"
    if not state.healthy:
        return "unhealthy"
    if state.cold:
        return "cold"
    if needed(state.name) > state.max_context_tokens:
        return "context"
    return Decision(tier=state.name, score=0.0, reason=AFFINITY_KEPT)
