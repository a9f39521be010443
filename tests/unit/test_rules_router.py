"""The rules policy over many generated inputs: invariants, not hand-picked cases."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tierline.router import Decision, RequestFeatures, RoutingError, RulesPolicy, TierState, decide

POLICY = RulesPolicy(long_prompt_tokens=100, hard_keywords=("prove", "step by step"))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[RequestFeatures, list[TierState], RulesPolicy]:
    n = draw(st.integers(1, 5))
    ctx = sorted(draw(st.lists(st.integers(16, 4096), min_size=n, max_size=n)))
    tiers = [TierState(f"t{i}", c, draw(st.booleans()) or i == 0) for i, c in enumerate(ctx)]
    names = [t.name for t in tiers]
    text = draw(st.sampled_from(["hello", "please prove this", "Go Step By Step", "sum it"]))
    prompt = {name: draw(st.integers(1, 5000)) for name in names}
    pinned = draw(st.one_of(st.none(), st.sampled_from(names)))
    policy = RulesPolicy(
        long_prompt_tokens=draw(st.integers(1, 2000)),
        hard_keywords=("prove", "step by step"),
        default_tier=draw(st.one_of(st.none(), st.sampled_from(names))),
        hard_tier=draw(st.one_of(st.none(), st.sampled_from(names))),
    )
    features = RequestFeatures(text, prompt, draw(st.integers(1, 512)), pinned)
    return features, tiers, policy


@settings(max_examples=3000, deadline=None)
@given(scenarios())
def test_decision_invariants(case: tuple[RequestFeatures, list[TierState], RulesPolicy]) -> None:
    features, tiers, policy = case
    by_name = {t.name: t for t in tiers}
    try:
        d = decide(features, tiers, policy)
    except RoutingError as err:
        assert err.status in (400, 503)
        candidates = [by_name[features.pinned_tier]] if features.pinned_tier else tiers
        fits = [t for t in candidates if features.context_needed(t.name) <= t.max_context_tokens]
        if err.status == 400:
            # Only refused for context when the request fits nowhere it may go.
            assert not fits and err.code == "context_length_exceeded"
        else:
            assert all(not t.healthy for t in fits)
        return
    chosen = by_name[d.tier]
    assert features.context_needed(d.tier) <= chosen.max_context_tokens
    assert chosen.healthy
    if features.pinned_tier is not None:
        assert d == Decision(features.pinned_tier, 0.0, "pinned")
    else:
        assert d.reason.startswith("auto:")
        assert 0.0 <= d.score <= 1.0
        order = [t.name for t in tiers]
        floor = order.index(policy.default_tier) if policy.default_tier else 0
        if order.index(d.tier) < floor:  # went down only when nothing from floor up works
            assert {p.split(":")[0] for p in d.escalations} >= set(order[floor:])
            assert d.reason.endswith("+down")
        # Every tier passed over on the way up was passed over for a reason.
        for passed in d.escalations:
            name, why = passed.split(":")
            t = by_name[name]
            assert (why == "context" and features.context_needed(name) > t.max_context_tokens) or (
                why == "unhealthy" and not t.healthy
            )


@settings(max_examples=500, deadline=None)
@given(scenarios())
def test_decide_is_deterministic(
    case: tuple[RequestFeatures, list[TierState], RulesPolicy],
) -> None:
    features, tiers, policy = case
    try:
        first = decide(features, tiers, policy)
    except RoutingError as err:
        with pytest.raises(RoutingError) as again:
            decide(features, tiers, policy)
        assert again.value.status == err.status
        return
    assert decide(features, tiers, policy) == first


TIERS = [TierState("small", 512), TierState("large", 2048)]


def feats(text: str = "hi", tokens: int = 10, completion: int = 16, pinned: str | None = None):
    return RequestFeatures(text, {"small": tokens, "large": tokens}, completion, pinned)


def test_rules_pick_tiers_for_the_right_reasons() -> None:
    assert decide(feats(), TIERS, POLICY) == Decision("small", 0.05, "auto:default")
    assert decide(feats("Prove it"), TIERS, POLICY).tier == "large"
    assert decide(feats("Prove it"), TIERS, POLICY).reason == "auto:keyword"
    assert decide(feats(tokens=150), TIERS, POLICY).reason == "auto:long-prompt"
    over = decide(feats(tokens=600), TIERS, RulesPolicy(10_000, ()))
    assert over.tier == "large" and over.reason == "auto:default+context"
    assert over.escalations == ("small:context",)


def test_unhealthy_tiers_are_skipped_and_pinned_gets_503() -> None:
    tiers = [TierState("small", 512, healthy=False), TierState("large", 2048)]
    d = decide(feats(), tiers, POLICY)
    assert (d.tier, d.reason) == ("large", "auto:default+unhealthy")
    with pytest.raises(RoutingError) as err:
        decide(feats(pinned="small"), tiers, POLICY)
    assert err.value.status == 503


def test_context_errors_say_by_how_much() -> None:
    with pytest.raises(RoutingError) as err:
        decide(feats(tokens=3000), TIERS, POLICY)
    assert err.value.status == 400 and "3016 tokens" in err.value.message
    with pytest.raises(RoutingError) as pinned:
        decide(feats(tokens=500, pinned="small"), TIERS, POLICY)
    assert "accepts 512 tokens but the request needs 516" in pinned.value.message
