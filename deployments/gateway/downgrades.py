"""Routing down instead of refusing, as the gateway does it: the pure decisions are in
`router.downgrade`; here are the state between requests (the load-loss ledger) and the
slot and quota steps around them.

- Under load (`Downgrades.for_load`): routing chose a tier with no free slot. An auto
  request with the scorer's predictions goes to the tier below with room and the smallest
  expected loss while the load-loss budget (`router.load_downgrade`) holds; else 503 as
  before.
- Past a tenant's token budget (`Downgrades.admit`): the ledger refused the reservation
  for tokens per minute and the tenant has `on_budget: downgrade`. An auto request moves
  to the cheapest tier that can take it and is charged to the tenant's window past the
  budget (`downgrade_tokens_per_min`, a hard ceiling); past that too, 429 as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tierline.cluster.spec import ClusterSpec, QuotaSpec
from tierline.deployments.gateway.engines.board import TierBoard
from tierline.deployments.gateway.observe.metrics import GatewayMetrics
from tierline.deployments.gateway.pipeline.admission import Slot
from tierline.deployments.gateway.pipeline.plan import REASON_HEADER, TIER_HEADER, RequestPlan
from tierline.deployments.gateway.tickets import Tickets
from tierline.router.downgrade import (
    Downgrade,
    LoadBudget,
    LossLedger,
    budget_downgrade,
    load_downgrade,
)

__all__ = ["Admitted", "Downgrades"]


@dataclass(frozen=True)
class Admitted:
    """A request past the tenant's quota: its ticket, and the tier and headers it runs
    with (another tier than routing chose when it was sent down for its budget)."""

    ticket: int | None
    tier: str
    headers: dict[str, str]
    downgrade: Downgrade | None = None


class Downgrades:
    """The load-loss ledger of this gateway replica and the two ways down."""

    def __init__(self, spec: ClusterSpec, metrics: GatewayMetrics | None = None) -> None:
        settings = spec.router.load_downgrade
        self.load_enabled = settings.enabled and spec.router.policy == "learned"
        self.budget = LoadBudget(spec.router.load_loss_budget(), settings.window_requests)
        self.ledger = LossLedger()
        self.metrics = metrics
        if metrics is not None and self.load_enabled:
            metrics.load_loss(0.0, self.budget.max_mean_loss)

    def for_load(
        self,
        board: TierBoard,
        plan: RequestPlan,
        chosen: str,
        quality: Mapping[str, float] | None,
    ) -> tuple[Slot, Downgrade] | None:
        """A slot below the full `chosen` tier for an auto request, and the move, with the
        loss spent from the budget; None: no way down (answer 503)."""
        if not self.load_enabled or plan.pinned is not None:
            return None
        states = board.states(plan.tiers)
        down = load_downgrade(chosen, states, quality, plan.needed, self.ledger, self.budget)
        if down is None:
            return None
        slot = board.acquire(down.tier)
        if slot is None:
            return None
        assert down.expected_loss is not None  # a load downgrade is always predicted
        self.ledger = self.ledger.spend(down.expected_loss, self.budget)
        if self.metrics is not None:
            self.metrics.downgraded(down.tier, down.kind)
            self.metrics.load_loss(self.ledger.mean, self.budget.max_mean_loss)
        return slot, down

    async def admit(
        self,
        tickets: Tickets,
        board: TierBoard,
        quota: QuotaSpec,
        tenant: str,
        plan: RequestPlan,
        tier: str,
        headers: dict[str, str],
        slot: Slot,
        quality: Mapping[str, float] | None,
    ) -> Admitted:
        """Reserve the plan's worst case on `tier` against the tenant's quota; past the
        token budget of an `on_budget: downgrade` tenant, an auto request moves (with its
        slot) to the cheapest tier that can take it and is charged past the budget.
        Raises the 429 `APIError` when refused (the caller releases the slot)."""
        reservation = plan.reservation(tier)
        admission = await tickets.try_admit(tenant, reservation)
        if admission is None:
            return Admitted(None, tier, headers)
        if admission.ok:
            return Admitted(admission.ticket, tier, headers)
        refusal = tickets.over_quota(tenant, reservation, admission, headers)
        if not admission.over_budget or quota.downgrade_ceiling is None or plan.pinned is not None:
            raise refusal
        down = budget_downgrade(tier, board.states(plan.tiers), quality, plan.needed)
        if down is None or not slot.move_to(down.tier):
            raise refusal
        cost = plan.reservation(down.tier)
        past = await tickets.try_admit(tenant, cost, downgrade=True)
        if past is None or not past.ok:  # the caller releases the slot, where it is now
            raise refusal if past is None else tickets.over_quota(tenant, cost, past, headers)
        moved = {**headers, TIER_HEADER: down.tier, REASON_HEADER: down.reason}
        if self.metrics is not None:
            self.metrics.downgraded(down.tier, down.kind)
        return Admitted(past.ticket, down.tier, moved, down)
