"""The walk both routing policies end with, and the two errors it can give.

A policy picks where to start (the rules' keyword or length tier, the learned policy's
cheapest tier that meets the quality bar); `walk` then goes up from there, or down to the
most capable tier below when nothing above fits, passing over tiers that cannot take the
request. Pure functions of plain data, shared by `rules` and `learned`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tierline.router.types import Decision, RequestFeatures, RoutingError, TierState

__all__ = ["Walk", "context_error", "pinned", "unusable", "walk"]


@dataclass(frozen=True)
class Walk:
    index: int
    """The chosen tier's position in `tiers`."""
    passed: tuple[str, ...]
    """Tiers passed over on the way, as `name:why` (`context`, `unhealthy`, `cold`)."""
    notes: tuple[str, ...]
    """What the route reason adds: why the first tier was passed, `down`, `coldstart`."""


def context_error(features: RequestFeatures, tiers: Sequence[TierState]) -> RoutingError:
    """No tier's context holds the request: name the largest."""
    best = max(tiers, key=lambda t: t.max_context_tokens)
    need = features.context_needed(best.name)
    return RoutingError(
        400,
        "context_length_exceeded",
        f"the request needs {need} tokens ({features.prompt_tokens[best.name]} prompt + "
        f"{features.completion_tokens} completion) but the largest context is "
        f"{best.max_context_tokens} tokens (tier {best.name!r})",
        param="messages",
    )


def pinned(features: RequestFeatures, tiers: Sequence[TierState]) -> Decision:
    """The decision for a request that names its tier: that tier, if it can take it."""
    tier = next(t for t in tiers if t.name == features.pinned_tier)
    need = features.context_needed(tier.name)
    if need > tier.max_context_tokens:
        raise RoutingError(
            400,
            "context_length_exceeded",
            f"tier {tier.name!r} accepts {tier.max_context_tokens} tokens but the request "
            f"needs {need} ({features.prompt_tokens[tier.name]} prompt + "
            f"{features.completion_tokens} completion)",
            param="messages",
        )
    if not tier.healthy:
        raise RoutingError(503, "tier_unavailable", f"tier {tier.name!r} has no healthy replica")
    return Decision(tier=tier.name, score=0.0, reason="pinned")


def unusable(features: RequestFeatures, tier: TierState) -> str | None:
    """Why `tier` cannot take the request (`context`, `unhealthy`), or None."""
    if features.context_needed(tier.name) > tier.max_context_tokens:
        return "context"
    if not tier.healthy:
        return "unhealthy"
    return None


def walk(
    features: RequestFeatures, tiers: Sequence[TierState], start: int, cold_start: str
) -> Walk:
    """The first usable tier from `start` upwards, then downwards from `start - 1`.

    With `cold_start == "skip"` tiers scaled to zero are passed over while a warm tier
    fits, and taken only when none does; with `wait` they are used like any other.
    """
    order = [*range(start, len(tiers)), *reversed(range(start))]
    passed: list[str] = []
    for skipping in (True, False) if cold_start == "skip" else (False,):
        passed = []
        for pos, i in enumerate(order):
            tier = tiers[i]
            why = unusable(features, tier) or ("cold" if skipping and tier.cold else None)
            if why is not None:
                passed.append(f"{tier.name}:{why}")
                continue
            notes = [passed[0].split(":")[1]] if passed else []
            if pos >= len(tiers) - start:
                notes.append("down")
            if tier.cold:
                notes.append("coldstart")
            return Walk(index=i, passed=tuple(passed), notes=tuple(notes))
    if any(p.endswith(":unhealthy") for p in passed):
        raise RoutingError(503, "no_healthy_tier", "no tier that fits the request is healthy")
    raise context_error(features, tiers)
