"""The rules policy: explicit tier, context fit, tier health, and a length/keyword heuristic.

`decide` is a pure function: the same features, tier states and policy always give the
same decision, so it is tested over generated inputs without Ray or HTTP.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from router.types import Decision, RequestFeatures, RoutingError, TierState


@dataclass(frozen=True)
class RulesPolicy:
    long_prompt_tokens: int
    hard_keywords: tuple[str, ...]
    default_tier: str | None = None
    """Where ordinary prompts go; None means the cheapest tier."""
    hard_tier: str | None = None
    """Where hard prompts go; None means the most capable tier."""
    cold_start: str = "skip"
    """Tiers scaled to zero: `skip` them while another tier fits, or `wait` for them."""

    def matched_keyword(self, text: str) -> str | None:
        lowered = text.lower()
        for kw in self.hard_keywords:
            if kw.lower() in lowered:
                return kw
        return None


def _index(tiers: Sequence[TierState], name: str | None, fallback: int) -> int:
    if name is None:
        return fallback
    for i, t in enumerate(tiers):
        if t.name == name:
            return i
    raise ValueError(f"policy names tier {name!r}, which is not among the tiers")


def _context_error(features: RequestFeatures, tiers: Sequence[TierState]) -> RoutingError:
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


def _pinned(features: RequestFeatures, tiers: Sequence[TierState]) -> Decision:
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


def decide(features: RequestFeatures, tiers: Sequence[TierState], policy: RulesPolicy) -> Decision:
    """Pick a tier. `tiers` is ordered from cheapest to most capable."""
    if not tiers:
        raise ValueError("no tiers to route to")
    if features.pinned_tier is not None:
        return _pinned(features, tiers)

    top = len(tiers) - 1
    start = _index(tiers, policy.default_tier, 0)
    keyword = policy.matched_keyword(features.text)
    longest = max(features.prompt_tokens.values(), default=0)
    if keyword is not None:
        start, reason, score = max(start, _index(tiers, policy.hard_tier, top)), "keyword", 1.0
    elif longest >= policy.long_prompt_tokens:
        start, reason, score = min(start + 1, top), "long-prompt", 0.75
    else:
        reason = "default"
        score = min(longest / policy.long_prompt_tokens, 1.0) * 0.5

    # Up from the chosen tier first; if nothing above fits, the most capable tier below.
    # Tiers scaled to zero are passed over (`skip`) unless no warm tier fits at all.
    order = [*tiers[start:], *reversed(tiers[:start])]
    passes = (True, False) if policy.cold_start == "skip" else (False,)
    for skip_cold in passes:
        passed: list[str] = []
        for i, t in enumerate(order):
            if features.context_needed(t.name) > t.max_context_tokens:
                passed.append(f"{t.name}:context")
            elif not t.healthy:
                passed.append(f"{t.name}:unhealthy")
            elif skip_cold and t.cold:
                passed.append(f"{t.name}:cold")
            else:
                full = reason + "".join(f"+{p.split(':')[1]}" for p in passed[:1])
                if i >= len(tiers) - start:
                    full += "+down"
                if t.cold:
                    full += "+coldstart"
                return Decision(
                    tier=t.name, score=score, reason=f"auto:{full}", escalations=tuple(passed)
                )
    if any(p.endswith(":unhealthy") for p in passed):
        raise RoutingError(503, "no_healthy_tier", "no tier that fits the request is healthy")
    raise _context_error(features, tiers)
