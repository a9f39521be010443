"""The learned policy over many generated inputs: invariants of `decide_learned`."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tierline.router.learned import (
    PREFERENCES,
    CalibrationState,
    LearnedPolicy,
    decide_learned,
    score_of,
    tolerance,
)
from tierline.router.types import RequestFeatures, RoutingError, TierState

PRIOR = tuple(-0.2 + 0.6 * i / 100 for i in range(101))

Case = tuple[RequestFeatures, list[TierState], LearnedPolicy, CalibrationState]


@st.composite
def scenarios(draw: st.DrawFn) -> Case:
    n = draw(st.integers(1, 5))
    ctx = sorted(draw(st.lists(st.integers(16, 4096), min_size=n, max_size=n)))
    tiers = []
    for i, c in enumerate(ctx):
        limit = draw(st.one_of(st.none(), st.integers(0, 8)))
        tiers.append(
            TierState(
                f"t{i}",
                c,
                draw(st.booleans()) or i == 0,
                queued=draw(st.integers(0, 10)),
                queue_limit=limit,
                ttft_s=draw(st.one_of(st.none(), st.floats(0.001, 5.0))),
            )
        )
    names = [t.name for t in tiers]
    quality = {name: draw(st.floats(0.0, 1.0)) for name in names}
    prompt = {name: draw(st.integers(1, 5000)) for name in names}
    pinned = draw(st.one_of(st.none(), st.none(), st.sampled_from(names)))
    preference = draw(st.one_of(st.none(), st.sampled_from(PREFERENCES)))
    policy = LearnedPolicy(
        strong_share=draw(st.floats(0.0, 1.0)),
        prior_quantiles=PRIOR,
        spill=draw(st.booleans()),
        min_window=10,
    )
    scores = tuple(draw(st.lists(st.floats(-1.0, 1.0), max_size=30)))
    state = CalibrationState(scores=scores, correction=draw(st.floats(-0.2, 0.2)))
    features = RequestFeatures(
        "text", prompt, draw(st.integers(1, 512)), pinned, quality, preference
    )
    return features, tiers, policy, state


def _usable(f: RequestFeatures, t: TierState) -> bool:
    return f.context_needed(t.name) <= t.max_context_tokens and t.healthy


@settings(max_examples=600, deadline=None)
@given(scenarios())
def test_decision_invariants(case: Case) -> None:
    features, tiers, policy, state = case
    by_name = {t.name: t for t in tiers}
    try:
        d = decide_learned(features, tiers, policy, state)
    except RoutingError as err:
        candidates = [by_name[features.pinned_tier]] if features.pinned_tier else tiers
        assert err.status in (400, 503)
        assert not any(_usable(features, t) for t in candidates)
        return
    chosen = by_name[d.tier]
    assert _usable(features, chosen)
    if features.pinned_tier is not None:
        assert (d.tier, d.reason) == (features.pinned_tier, "pinned")
        return
    pref = features.preference or policy.default_preference
    assert d.reason.startswith(f"auto:learned:{pref}")
    assert d.preference == pref and d.threshold is not None
    assert features.quality is not None
    assert d.score == pytest.approx(score_of(features.quality, tiers))
    everything_usable = all(_usable(features, t) and not t.overloaded for t in tiers)
    if everything_usable and pref != "latency" and len(tiers) > 1:
        # The cheapest tier is kept exactly when the score is within the tolerance...
        assert (d.tier == tiers[0].name) == (d.score <= d.threshold)
        assert "+" not in d.reason
        # ...and no cheaper tier than the chosen one comes within the tolerance of the best.
        best = max(features.quality.values())
        i = [t.name for t in tiers].index(d.tier)
        for cheaper in tiers[1:i]:
            assert features.quality[cheaper.name] < best - d.threshold
    if "+spill" in d.reason:
        assert policy.spill
        assert any(e.endswith(":overloaded") for e in d.escalations)
    for passed in d.escalations:
        name, why = passed.split(":")
        t = by_name[name]
        assert {
            "context": features.context_needed(name) > t.max_context_tokens,
            "unhealthy": not t.healthy,
            "overloaded": t.overloaded,
        }[why]


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_decide_is_a_pure_function(case: Case) -> None:
    features, tiers, policy, state = case
    try:
        first = decide_learned(features, tiers, policy, state)
    except RoutingError as err:
        with pytest.raises(RoutingError) as again:
            decide_learned(features, tiers, policy, state)
        assert again.value.code == err.code
        return
    assert decide_learned(features, tiers, policy, state) == first


def _two(quality_small: float, quality_large: float, **kw: object) -> RequestFeatures:
    return RequestFeatures(
        "x",
        {"small": 10, "large": 10},
        1,
        quality={"small": quality_small, "large": quality_large},
        **kw,
    )


TWO = [TierState("small", 100, queue_limit=4), TierState("large", 100, queue_limit=4)]
POLICY = LearnedPolicy(strong_share=0.5, prior_quantiles=PRIOR)


def test_spill_moves_up_an_overloaded_tier_and_says_so() -> None:
    busy = [replace(TWO[0], queued=5), TWO[1]]
    d = decide_learned(_two(0.9, 0.9), busy, POLICY, CalibrationState())
    assert (d.tier, d.reason) == ("large", "auto:learned:balanced+spill")
    no_spill = replace(POLICY, spill=False)
    assert decide_learned(_two(0.9, 0.9), busy, no_spill, CalibrationState()).tier == "small"


def test_preferences_order_the_share_and_latency_picks_the_fastest() -> None:
    assert POLICY.share("cost") < POLICY.share("balanced") < POLICY.share("quality")
    state = CalibrationState()
    assert tolerance(POLICY, state, POLICY.share("cost")) >= tolerance(
        POLICY, state, POLICY.share("quality")
    )
    # Both tiers meet the bar (equal quality); the large one answers faster.
    timed = [replace(TWO[0], ttft_s=0.5), replace(TWO[1], ttft_s=0.1)]
    d = decide_learned(_two(0.8, 0.8, preference="latency"), timed, POLICY, state)
    assert (d.tier, d.reason) == ("large", "auto:learned:latency+fastest")
    d = decide_learned(_two(0.8, 0.8, preference="balanced"), timed, POLICY, state)
    assert d.tier == "small"


def test_unknown_preference_is_a_400_naming_the_header() -> None:
    with pytest.raises(RoutingError) as err:
        decide_learned(_two(0.5, 0.5, preference="fast"), TWO, POLICY, CalibrationState())
    assert err.value.status == 400 and err.value.param == "x-tierline-preference"
