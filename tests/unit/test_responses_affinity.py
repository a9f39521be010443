"""Conversation affinity as a pure rule, over many generated tier states."""

from __future__ import annotations

import random

from tierline.deployments.gateway.pipeline.plan import RequestPlan, decide_route
from tierline.deployments.gateway.responses.affinity import AFFINITY_KEPT, Affinity, sticky_decision
from tierline.router import Decision, RulesPolicy, TierState

POLICY = RulesPolicy(long_prompt_tokens=64, hard_keywords=("prove",))


def plan(prompt: int, budget: int | None = 8, pinned: str | None = None) -> RequestPlan:
    tiers = ("small", "large")
    return RequestPlan(
        tiers=tiers,
        prompt_tokens={t: prompt for t in tiers},
        completion_budget=budget,
        pinned=pinned,
        adapter_id=None,
        text="hello",
        context={"small": 128, "large": 1024},
    )


def states(**small: object) -> list[TierState]:
    return [
        TierState("small", 128, **small),  # type: ignore[arg-type]
        TierState("large", 1024),
    ]


def test_a_follow_up_stays_where_the_conversation_ran() -> None:
    d = decide_route(plan(20), states(), POLICY, affinity=Affinity("large"))
    assert (d.tier, d.reason) == ("large", AFFINITY_KEPT)
    # without affinity the rules would pick the cheapest tier
    assert decide_route(plan(20), states(), POLICY).tier == "small"


def test_it_leaves_a_tier_it_no_longer_fits_and_says_why() -> None:
    d = decide_route(plan(125), states(), POLICY, affinity=Affinity("small"))
    assert d.tier == "large"
    assert d.reason.endswith("+affinity-left:context"), d.reason
    for state, why in [
        ({"healthy": False}, "unhealthy"),
        ({"replicas": 0}, "cold"),
    ]:
        d = decide_route(plan(20), states(**state), POLICY, affinity=Affinity("small"))
        assert d.reason.endswith(f"+affinity-left:{why}"), (state, d.reason)
        assert d.tier == "large"


def test_a_tier_the_request_may_not_use_is_left() -> None:
    assert sticky_decision(Affinity("gone"), states(), lambda t: 1) == "not-allowed"


def test_a_busy_tier_keeps_its_conversation() -> None:
    d = decide_route(plan(20), states(queued=9, queue_limit=2), POLICY, affinity=Affinity("small"))
    assert (d.tier, d.reason) == ("small", AFFINITY_KEPT)


def test_a_pinned_model_wins_over_affinity() -> None:
    d = decide_route(plan(20, pinned="small"), states(), POLICY, affinity=Affinity("large"))
    assert d.tier == "small" and AFFINITY_KEPT not in d.reason


def test_generated_states_keep_the_rule() -> None:
    rng = random.Random(3)
    for _ in range(5000):
        tiers = [
            TierState(
                name,
                rng.choice([64, 128, 512]),
                healthy=rng.random() > 0.2,
                queued=rng.randint(0, 5),
                queue_limit=rng.choice([None, 3]),
                replicas=rng.choice([None, 0, 1, 2]),
            )
            for name in ("a", "b", "c")
        ]
        target = rng.choice(["a", "b", "c", "z"])
        needed = rng.randint(1, 600)
        out = sticky_decision(Affinity(target), tiers, lambda t, n=needed: n)
        state = next((s for s in tiers if s.name == target), None)
        can_stay = (
            state is not None
            and state.healthy
            and not state.cold
            and needed <= state.max_context_tokens
        )
        assert isinstance(out, Decision) == can_stay
        if isinstance(out, Decision):
            assert out.tier == target and out.reason == AFFINITY_KEPT
        else:
            assert out in {"not-allowed", "unhealthy", "cold", "context"}
