"""Routing an `auto` request down a tier instead of refusing it: under load, or past a
tenant's token budget. Pure functions of plain data (tier states, the scorer's per-tier
quality predictions, the load-loss ledger); the gateway does the slots and the quota.

A request's *expected loss* of going from tier `a` down to tier `b` is
`max(0, quality[a] - quality[b])`: the scorer's predicted gain of `a` over `b`, on the
same 0..1 scale as the quality-loss bound (`router.bound`). Without predictions (the
rules policy) it is unknown (None).

Two reasons, two rules:
- `load`: the tier routing chose is full (its admission slots at this gateway replica
  are taken, the signal the edge refuses on). The request goes to the tier below with
  room whose expected loss is smallest, when the *load-loss budget* holds: the mean
  expected loss over the last `window` load-downgraded requests, this one included, stays
  at most `max_mean_loss`. Requests with a small expected loss always fit; a large one
  fits only while small ones have left room, so under a flood the smallest losses go down
  first. The ledger is state in, state out (`LossLedger.spend`), kept per gateway replica:
  when every replica's mean is within the budget, so is the mean over all of them. It is
  accounted apart from the calibrated bound (`router.max_quality_loss`), which speaks of
  the routing policy's own choices and is not spent here.
- `budget`: the tenant is past its tokens per minute and has `on_budget: downgrade`. The
  request goes to the cheapest tier that can take it now (healthy, its context fits, a free
  slot), whatever the loss, which is reported, not budgeted: the tenant chose it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from tierline.router.types import TierState

__all__ = [
    "Downgrade",
    "LoadBudget",
    "LossLedger",
    "budget_downgrade",
    "expected_loss",
    "load_downgrade",
]

DowngradeKind = Literal["load", "budget"]


@dataclass(frozen=True)
class Downgrade:
    """A request sent to `tier` below the one routing chose, and why."""

    tier: str
    kind: DowngradeKind
    expected_loss: float | None
    """Predicted quality loss of the move (0..1); None when no prediction was made."""

    @property
    def reason(self) -> str:
        """The route reason: `downgraded:load` or `downgraded:budget`, with the expected
        loss after a `;` when it was predicted (`downgraded:load;expected_loss=0.031`)."""
        base = f"downgraded:{self.kind}"
        if self.expected_loss is None:
            return base
        return f"{base};expected_loss={self.expected_loss:.3f}"


@dataclass(frozen=True)
class LoadBudget:
    """The load-loss budget: the mean expected loss over the last `window` requests sent
    down for load stays at most `max_mean_loss`."""

    max_mean_loss: float
    window: int = 1000

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_mean_loss <= 1.0:
            raise ValueError("max_mean_loss must be in 0..1")
        if self.window < 1:
            raise ValueError("window must be at least 1")


@dataclass(frozen=True)
class LossLedger:
    """The expected losses of the latest load-downgraded requests (at most a window)."""

    losses: tuple[float, ...] = ()
    count: int = 0
    """Load-downgraded requests since start (not only the window's)."""

    @property
    def mean(self) -> float:
        return sum(self.losses) / len(self.losses) if self.losses else 0.0

    def admits(self, loss: float, budget: LoadBudget) -> bool:
        """Whether one more request with `loss` keeps the window's mean within budget."""
        kept = self.losses[max(len(self.losses) - budget.window + 1, 0) :]
        if budget.window == 1:
            kept = ()
        return (sum(kept) + loss) / (len(kept) + 1) <= budget.max_mean_loss + 1e-12

    def spend(self, loss: float, budget: LoadBudget) -> LossLedger:
        """The ledger after one more load-downgraded request with `loss`."""
        return LossLedger((*self.losses, loss)[-budget.window :], self.count + 1)


def expected_loss(quality: Mapping[str, float] | None, frm: str, to: str) -> float | None:
    """Predicted loss of answering on `to` instead of `frm` (0..1); None without both."""
    if quality is None or frm not in quality or to not in quality:
        return None
    return float(min(max(quality[frm] - quality[to], 0.0), 1.0))


def _takes(tier: TierState, needed: Callable[[str], int]) -> bool:
    """Whether `tier` can take the request now: healthy, its context fits, not full."""
    return tier.healthy and not tier.overloaded and needed(tier.name) <= tier.max_context_tokens


def load_downgrade(
    chosen: str,
    tiers: Sequence[TierState],
    quality: Mapping[str, float] | None,
    needed: Callable[[str], int],
    ledger: LossLedger,
    budget: LoadBudget,
) -> Downgrade | None:
    """Where a request goes when `chosen` (routing's tier) is full: the tier below it with
    room and the smallest expected loss, if the load-loss budget admits that loss; None
    (refuse as before) otherwise, and always without predictions (`quality` None: the loss
    could not be budgeted). `tiers` are the request's candidates, cheapest first, as the
    gateway's admission sees them (`overloaded`: no free slot); `needed(tier)` is the
    context the request needs there."""
    names = [t.name for t in tiers]
    if chosen not in names or quality is None:
        return None
    below = [t for t in tiers[: names.index(chosen)] if _takes(t, needed)]
    options = [(expected_loss(quality, chosen, t.name), -i, t.name) for i, t in enumerate(below)]
    known = [(loss, i, name) for loss, i, name in options if loss is not None]
    if not known:
        return None
    loss, _, tier = min(known)
    if not ledger.admits(loss, budget):
        return None
    return Downgrade(tier, "load", loss)


def budget_downgrade(
    chosen: str,
    tiers: Sequence[TierState],
    quality: Mapping[str, float] | None,
    needed: Callable[[str], int],
) -> Downgrade | None:
    """Where a past-budget request of an `on_budget: downgrade` tenant goes: the cheapest
    of the request's candidate tiers (`tiers`, cheapest first) that can take it now, the
    chosen tier included (the request was already on the cheapest: it stays, loss 0);
    None when none can."""
    for t in tiers:
        if t.name == chosen:
            # `chosen` holds the request's slot already (it may be the slot that filled it).
            ok = t.healthy and needed(t.name) <= t.max_context_tokens
        else:
            ok = _takes(t, needed)
        if ok:
            loss = 0.0 if t.name == chosen else expected_loss(quality, chosen, t.name)
            return Downgrade(t.name, "budget", loss)
        if t.name == chosen:
            break
    return None
