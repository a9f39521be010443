"""Routing down instead of refusing (`router.downgrade`): pure decisions over tier states,
predicted qualities and the load-loss ledger, driven over many generated inputs."""

from __future__ import annotations

import random

import pytest
from tierline.router.downgrade import (
    Downgrade,
    LoadBudget,
    LossLedger,
    budget_downgrade,
    expected_loss,
    load_downgrade,
)
from tierline.router.types import TierState

NAMES = ("small", "medium", "large")


def tiers(
    full: tuple[str, ...] = (), down: tuple[str, ...] = (), ctx: int = 4096
) -> list[TierState]:
    out = []
    for n in NAMES:
        # The board's view of a full tier (`admission.as_router_state`): queued over the limit.
        queued, limit = (5, 4) if n in full else (0, None)
        out.append(TierState(n, ctx, n not in down, queued=queued, queue_limit=limit))
    return out


def fits(_: str) -> int:
    return 100


def test_reason_names_the_kind_and_the_loss() -> None:
    assert Downgrade("small", "load", 0.0314).reason == "downgraded:load;expected_loss=0.031"
    assert Downgrade("small", "budget", None).reason == "downgraded:budget"


def test_expected_loss_is_clipped_and_needs_both_predictions() -> None:
    q = {"small": 0.4, "large": 0.9}
    assert expected_loss(q, "large", "small") == pytest.approx(0.5)
    assert expected_loss(q, "small", "large") == 0.0
    assert expected_loss(None, "large", "small") is None
    assert expected_loss({"large": 0.9}, "large", "small") is None


def test_load_downgrade_takes_the_smallest_loss_below() -> None:
    q = {"small": 0.80, "medium": 0.70, "large": 0.85}
    d = load_downgrade("large", tiers(full=("large",)), q, fits, LossLedger(), LoadBudget(0.1))
    assert d == Downgrade("small", "load", pytest.approx(0.05))
    # medium full: small is the only way down
    q2 = {"small": 0.6, "medium": 0.8, "large": 0.85}
    d2 = load_downgrade(
        "large", tiers(full=("large", "medium")), q2, fits, LossLedger(), LoadBudget(0.3)
    )
    assert d2 is not None and d2.tier == "small"


def test_load_downgrade_refuses_what_it_cannot_budget_or_place() -> None:
    q = {"small": 0.2, "medium": 0.3, "large": 0.9}
    budget = LoadBudget(0.1)
    assert load_downgrade("large", tiers(full=("large",)), q, fits, LossLedger(), budget) is None
    assert load_downgrade("large", tiers(), None, fits, LossLedger(), budget) is None
    assert load_downgrade("small", tiers(), q, fits, LossLedger(), LoadBudget(1.0)) is None
    everything_full = tiers(full=NAMES)
    assert load_downgrade("large", everything_full, q, fits, LossLedger(), LoadBudget(1.0)) is None
    unhealthy = tiers(full=("large",), down=("small", "medium"))
    assert load_downgrade("large", unhealthy, q, fits, LossLedger(), LoadBudget(1.0)) is None

    def too_long(name: str) -> int:
        return 5000

    assert load_downgrade("large", tiers(), q, too_long, LossLedger(), LoadBudget(1.0)) is None


def test_ledger_window_and_count() -> None:
    budget = LoadBudget(0.5, window=3)
    ledger = LossLedger()
    for loss in (0.1, 0.2, 0.3, 0.4):
        ledger = ledger.spend(loss, budget)
    assert ledger.losses == (0.2, 0.3, 0.4)
    assert ledger.count == 4
    assert ledger.mean == pytest.approx(0.3)
    # the next request's window is the last two and itself
    assert ledger.admits(0.8, budget)  # (0.3 + 0.4 + 0.8) / 3 = 0.5
    assert not ledger.admits(0.81, budget)


@pytest.mark.parametrize("seed", range(5))
def test_a_flood_keeps_the_load_budget_and_sends_small_losses_first(seed: int) -> None:
    """10k requests against a full strong tier: the window's mean expected loss never
    passes the budget, and the losses sent down are smaller than those refused."""
    rng = random.Random(seed)
    budget = LoadBudget(max_mean_loss=0.08, window=200)
    ledger = LossLedger()
    states = tiers(full=("large",))
    sent, refused = [], []
    for _ in range(10_000):
        large = rng.random()
        q = {"small": large - rng.random() * 0.4, "medium": large - rng.random() * 0.3}
        q["large"] = large
        d = load_downgrade("large", states, q, fits, ledger, budget)
        if d is None:
            refused.append(min(max(large - q["small"], 0), max(large - q["medium"], 0)))
            continue
        assert d.expected_loss is not None
        assert d.expected_loss == pytest.approx(
            min(max(large - q["small"], 0), max(large - q["medium"], 0))
        )
        ledger = ledger.spend(d.expected_loss, budget)
        sent.append(d.expected_loss)
        assert ledger.mean <= budget.max_mean_loss + 1e-9
    assert ledger.count == len(sent) > 1000
    assert sum(sent) / len(sent) < sum(refused) / len(refused)


def test_budget_downgrade_goes_to_the_cheapest_tier_that_can_take_it() -> None:
    q = {"small": 0.5, "medium": 0.6, "large": 0.9}
    assert budget_downgrade("large", tiers(), q, fits) == Downgrade(
        "small", "budget", pytest.approx(0.4)
    )
    d = budget_downgrade("large", tiers(full=("small",)), q, fits)
    assert d is not None and d.tier == "medium"
    # already on the cheapest: stays there (it holds its slot, so the tier may look full)
    assert budget_downgrade("small", tiers(full=("small",)), q, fits) == Downgrade(
        "small", "budget", 0.0
    )
    # rules policy: no prediction, the loss is unknown
    assert budget_downgrade("large", tiers(), None, fits) == Downgrade("small", "budget", None)
    # nothing at or below the chosen tier can take it
    assert budget_downgrade("medium", tiers(full=("small",), down=("medium",)), q, fits) is None


def test_budget_downgrade_never_goes_up() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        full = tuple(n for n in NAMES if rng.random() < 0.4)
        down = tuple(n for n in NAMES if rng.random() < 0.2)
        chosen = rng.choice(NAMES)
        d = budget_downgrade(chosen, tiers(full, down), None, fits)
        if d is not None:
            assert NAMES.index(d.tier) <= NAMES.index(chosen)
            assert d.tier == chosen or (d.tier not in full and d.tier not in down)
