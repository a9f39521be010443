"""The rules policy: explicit tier, context fit, tier health, and a length/keyword heuristic.

`decide` is a pure function: the same features, tier states and policy always give the
same decision, so it is tested over generated inputs without Ray or HTTP.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tierline.router.fallback import pinned, walk
from tierline.router.types import Decision, RequestFeatures, TierState


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


def decide(features: RequestFeatures, tiers: Sequence[TierState], policy: RulesPolicy) -> Decision:
    """Pick a tier. `tiers` is ordered from cheapest to most capable."""
    if not tiers:
        raise ValueError("no tiers to route to")
    if features.pinned_tier is not None:
        return pinned(features, tiers)

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
    step = walk(features, tiers, start, policy.cold_start)
    full = reason + "".join(f"+{note}" for note in step.notes)
    return Decision(
        tier=tiers[step.index].name, score=score, reason=f"auto:{full}", escalations=step.passed
    )
