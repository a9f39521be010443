"""The quality-loss bound: its confidence bounds, its calibration on synthetic data with a
known loss, the chain of tiers, and the learned policy under a bound (no Ray)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tierline.router.bound import (
    calibrate,
    chain_start,
    clopper_pearson_upper,
    evaluate,
    kl_upper,
    min_rows,
    pair_thresholds,
    prompt_losses,
    realised,
)
from tierline.router.head import Head
from tierline.router.learned import (
    CalibrationState,
    LearnedPolicy,
    LossBound,
    decide_learned,
    recalibrate,
)
from tierline.router.scorer import CALIBRATED_ARTIFACT, head_bounds, head_loss_bound
from tierline.router.train import HeadParams, holdout_mask, train_artifact
from tierline.router.types import RequestFeatures, TierState


def _binom_cdf(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k + 1))


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 300), st.floats(0.0, 1.0), st.sampled_from([0.01, 0.05, 0.1, 0.3]))
def test_clopper_pearson_upper_is_where_the_binomial_tail_meets_delta(
    n: int, frac: float, delta: float
) -> None:
    k = min(n - 1, int(frac * n))
    ub = clopper_pearson_upper(k, n, delta)
    assert k / n < ub <= 1.0
    assert _binom_cdf(k, n, ub) == pytest.approx(delta, rel=1e-6, abs=1e-9)
    # more losses or more confidence: a higher bound; more rows at the same rate: lower
    assert clopper_pearson_upper(k + 1, n, delta) > ub
    assert clopper_pearson_upper(k, n, delta / 2) > ub
    assert clopper_pearson_upper(2 * k, 2 * n, delta) <= ub + 1e-12


def test_clopper_pearson_matches_scipy() -> None:
    beta = pytest.importorskip("scipy.stats").beta
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 20_000))
        k = int(rng.integers(0, n))
        d = float(rng.choice([0.01, 0.05, 0.1, 0.2]))
        assert clopper_pearson_upper(k, n, d) == pytest.approx(
            float(beta.ppf(1 - d, k + 1, n - k)), rel=1e-7, abs=1e-12
        )


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 5000), st.floats(0.0, 0.99), st.sampled_from([0.01, 0.1, 0.3]))
def test_kl_bound_is_looser_than_exact_for_right_wrong_losses(
    n: int, frac: float, delta: float
) -> None:
    k = int(frac * n)
    kl = kl_upper(k / n, n, delta)
    assert k / n <= kl <= 1.0
    assert kl >= clopper_pearson_upper(k, n, delta) - 1e-9


def test_losses_are_the_strong_tiers_gain() -> None:
    weak = np.asarray([1.0, 0.0, 0.0, 1.0, 0.2])
    strong = np.asarray([1.0, 1.0, 0.0, 0.0, 0.7])
    np.testing.assert_allclose(prompt_losses(weak, strong), [0.0, 1.0, 0.0, 0.0, 0.5])
    with pytest.raises(ValueError, match=r"0\.\.1"):
        prompt_losses(np.asarray([2.0]), np.asarray([9.0]))


def _risk(t: float, a: float, b: float) -> float:
    """R(t) for scores uniform on [-1, 1] and loss probability a + b * score: the mean of
    a + b * s over s uniform on [-1, t]."""
    return a + b * (min(t, 1.0) - 1.0) / 2.0


# (a, b) of the loss model, the alpha tested
MODELS = [
    (0.15, 0.15, 0.1),  # loss grows with the score: the bound picks a middle threshold
    (0.3, 0.3, 0.2),
    (0.3, 0.3, 0.05),
    (0.04, 0.04, 0.05),  # everything below alpha: keep as much as the data allow
    (0.4, 0.0, 0.1),  # nothing can be kept
]


@pytest.mark.parametrize("graded", [False, True])
@pytest.mark.parametrize(("a", "b", "alpha"), MODELS)
def test_bound_holds_in_at_least_one_minus_delta_of_trials(
    a: float, b: float, alpha: float, graded: bool
) -> None:
    """Synthetic labels with a known risk R(t): across 200 calibration sets, the chosen
    threshold's true risk exceeds alpha in at most delta of them (+ sampling slack)."""
    delta, trials, n = 0.1, 200, 1000
    rng = np.random.default_rng(int(100 * (a + b + alpha)) + graded)
    violations, shares = 0, []
    for _ in range(trials):
        s = rng.uniform(-1.0, 1.0, n)
        p = np.clip(a + b * s, 0.0, 1.0)
        if graded:  # values in [0, 1] with mean p: a Beta with mean p
            losses = rng.beta(2 * p + 1e-9, 2 * (1 - p) + 1e-9)
        else:
            losses = (rng.random(n) < p).astype(float)
        bd = calibrate(s, losses, alpha, delta)
        if bd.cheap_rows and _risk(bd.threshold, a, b) > alpha:
            violations += 1
        shares.append(bd.cheap_share)
    slack = 3 * math.sqrt(delta * (1 - delta) / trials)
    assert violations / trials <= delta + slack
    best = max(0.0, min(1.0, 1 + (alpha - a) / b)) if b else float(a <= alpha)  # largest safe
    # usefulness: when a real share can be kept, a good part of it is kept
    if best >= 0.5:
        assert np.mean(shares) >= 0.4 * best
    if best == 0.0:
        assert max(shares) == 0.0


def test_realised_loss_on_held_out_prompts_stays_under_alpha() -> None:
    """Calibrate on 2,000 prompts, route 20,000 fresh ones: realised loss <= alpha in at
    least 1 - delta of 100 trials (the test set is large enough to show the true risk)."""
    rng = np.random.default_rng(5)
    alpha, delta = 0.1, 0.1
    held = []
    for _ in range(100):
        s = rng.normal(0.0, 0.3, 22_000)
        p = 1.0 / (1.0 + np.exp(-(6.0 * s - 1.5)))
        losses = (rng.random(len(s)) < p).astype(float)
        r = evaluate((s[:2000], losses[:2000]), (s[2000:], losses[2000:]), alpha, delta)
        held.append(r["realised_loss"] <= alpha + 0.005)
        assert 0.0 <= r["cheap_share"] <= 1.0
    assert np.mean(held) >= 1 - delta - 0.05


def test_nothing_passes_means_everything_goes_up() -> None:
    s = np.linspace(-1, 1, 500)
    b = calibrate(s, np.ones(500), 0.1, 0.1)
    assert b.threshold == float("-inf") and b.cheap_rows == 0
    loss, share, cheap = realised(s, np.ones(500), b.threshold)
    assert (loss, share) == (0.0, 0.0) and not cheap.any()


def test_min_rows_lets_half_alpha_pass() -> None:
    for alpha in (0.02, 0.05, 0.1, 0.3):
        n = min_rows(alpha, 0.1)
        assert clopper_pearson_upper(math.floor(n * alpha / 2), n, 0.1) <= alpha
        assert n < 2000


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 5),
    st.data(),
)
def test_chain_climbs_while_the_next_tier_gains_more_than_its_threshold(
    n: int, data: st.DataObject
) -> None:
    names = [f"t{i}" for i in range(n)]
    quality = {t: data.draw(st.floats(0, 1)) for t in names}
    thresholds = {
        (names[i], names[i + 1]): data.draw(st.floats(-1, 1))
        for i in range(n - 1)
        if data.draw(st.booleans())
    }
    i = chain_start(quality, names, thresholds)
    for j in range(i):  # every step taken gained more than its pair's threshold
        gain = quality[names[j + 1]] - quality[names[j]]
        assert gain > thresholds.get((names[j], names[j + 1]), float("-inf"))
    if i + 1 < n:  # and the step not taken did not
        assert quality[names[i + 1]] - quality[names[i]] <= thresholds[(names[i], names[i + 1])]


def test_pair_thresholds_cover_every_ordered_pair() -> None:
    rng = np.random.default_rng(2)
    q = rng.random((3000, 3))
    y = (rng.random((3000, 3)) < q).astype(float)
    bounds = pair_thresholds(q, y, ["s", "m", "l"], 0.2, 0.1)
    assert set(bounds) == {("s", "m"), ("s", "l"), ("m", "l")}
    for (lo, hi), b in bounds.items():
        i, j = "sml".index(lo), "sml".index(hi)
        loss, _, _ = realised(q[:, j] - q[:, i], prompt_losses(y[:, i], y[:, j]), b.threshold)
        assert loss == pytest.approx(b.empirical_loss) and b.upper_bound <= 0.2


TIERS = [TierState("small", 10_000), TierState("large", 10_000)]


@settings(max_examples=300, deadline=None)
@given(
    st.floats(0, 1),
    st.floats(0, 1),
    st.floats(-1, 1),
    st.sampled_from(["cost", "balanced", "quality", "latency", None]),
)
def test_learned_policy_under_a_bound_uses_the_pair_threshold(
    small: float, large: float, threshold: float, preference: str | None
) -> None:
    bound = LossBound(0.1, 0.9, {("small", "large"): threshold})
    policy = LearnedPolicy(strong_share=0.3, prior_quantiles=(0.0, 1.0), bound=bound)
    state = CalibrationState(correction=0.05)
    features = RequestFeatures(
        "x", {"small": 1, "large": 1}, 1, quality={"small": small, "large": large}
    )
    d = decide_learned(features, TIERS, policy, state)
    up = large - small > threshold
    if preference != "latency":  # (no TTFT measured: the same choice)
        assert d.tier == ("large" if up else "small")
    assert d.max_quality_loss == 0.1 and d.target_share is None and d.threshold == threshold
    after = recalibrate(state, d, "small", policy)
    assert after.correction == 0.05  # live traffic does not move a bound
    assert (after.seen, after.sent_up) == (1, int(d.tier == "large"))


def test_latency_preference_never_goes_below_the_bound() -> None:
    tiers = [
        TierState("small", 10_000, ttft_s=0.01),
        TierState("medium", 10_000, ttft_s=0.5),
        TierState("large", 10_000, ttft_s=0.2),
    ]
    bound = LossBound(
        0.1, 0.9, {("small", "medium"): 0.0, ("medium", "large"): 0.5, ("small", "large"): 0.0}
    )
    policy = LearnedPolicy(strong_share=0.3, prior_quantiles=(0.0, 1.0), bound=bound)
    q = {"small": 0.2, "medium": 0.6, "large": 0.7}
    f = RequestFeatures("x", dict.fromkeys(q, 1), 1, quality=q, preference="latency")
    d = decide_learned(f, tiers, policy, CalibrationState())
    assert d.tier == "large"  # medium is where the bound starts; large is faster
    # a tenant limited to small and large: that pair's own threshold
    d2 = decide_learned(f, [tiers[0], tiers[2]], policy, CalibrationState())
    assert d2.tier == "large"


def test_head_keeps_its_calibration_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    head = Head(
        "lr",
        ("weak", "strong"),
        rng.normal(size=(385, 2)),
        rng.normal(size=2),
        calibration_probs=rng.random((50, 2)),
        calibration_labels=(rng.random((50, 2)) < 0.5).astype(float),
    )
    head.save(tmp_path / "h.npz")
    back = Head.load(tmp_path / "h.npz")
    np.testing.assert_allclose(back.calibration_probs, head.calibration_probs, rtol=1e-6)
    np.testing.assert_array_equal(back.calibration_labels, head.calibration_labels)
    bare = Head("lr", ("weak", "strong"), rng.normal(size=(385, 2)), rng.normal(size=2))
    bare.save(tmp_path / "b.npz")
    with pytest.raises(ValueError, match="calibration-holdout"):
        head_bounds(Head.load(tmp_path / "b.npz"), ["small", "large"], {}, 0.1, 0.9)


def test_shipped_head_carries_held_out_rows_and_a_bound_for_its_pairs() -> None:
    head = Head.load(CALIBRATED_ARTIFACT)
    assert len(head.calibration_probs) == len(head.calibration_labels) >= 1000
    assert head.meta["calibration_rows"] == len(head.calibration_probs)
    for alpha in (0.1, 0.15, 0.3):
        bounds = head_bounds(head, ["small", "medium", "large"], {}, alpha, 0.9)
        assert set(bounds) == {("small", "medium"), ("small", "large"), ("medium", "large")}
        assert all(b.upper_bound <= alpha for b in bounds.values())


def test_the_shipped_bound_routes_the_calibration_rows_as_calibrated() -> None:
    """The policy built from the shipped head (what the gateway uses) keeps exactly the
    calibration rows the bound counted, and their loss is what it reported."""
    head = Head.load(CALIBRATED_ARTIFACT)
    alpha = 0.15
    bound = head_loss_bound(head, ["small", "large"], {}, alpha, 0.9)
    expected = head_bounds(head, ["small", "large"], {}, alpha, 0.9)[("small", "large")]
    policy = LearnedPolicy(strong_share=0.3, prior_quantiles=(0.0, 1.0), bound=bound)
    kept, losses = 0, 0.0
    for p, y in zip(head.calibration_probs, head.calibration_labels, strict=True):
        q = {"small": float(p[0]), "large": float(p[1])}
        f = RequestFeatures("x", {"small": 1, "large": 1}, 1, quality=q)
        if decide_learned(f, TIERS, policy, CalibrationState()).tier == "small":
            kept += 1
            losses += max(0.0, y[1] - y[0])
    assert kept == expected.cheap_rows > 0
    assert losses / kept == pytest.approx(expected.empirical_loss) and losses / kept <= alpha


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=300), st.floats(0, 0.9))
def test_holdout_takes_a_share_of_every_source(groups: list[str], share: float) -> None:
    held = holdout_mask(groups, share, seed=0)
    g = np.asarray(groups)
    for name in set(groups):
        rows = g == name
        n, k = int(rows.sum()), int(held[rows].sum())
        if share == 0 or n == 1:
            assert k == 0
        else:
            assert 1 <= k <= n - 1 and abs(k - share * n) <= 1.0


def test_trained_artifact_ships_its_held_out_rows() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(200, 385)).astype(np.float32)
    y = (rng.random((200, 2)) < 0.5).astype(float)
    groups = ["a"] * 120 + ["b"] * 80
    head = train_artifact(
        x, y, groups, HeadParams(kind="lr", linear_steps=5), calibration_holdout=0.25
    )
    held = holdout_mask(groups, 0.25, seed=0)
    assert head.meta["calibration_rows"] == int(held.sum()) == 50
    np.testing.assert_array_equal(head.calibration_labels, y[held])
    np.testing.assert_allclose(head.calibration_probs, head.predict(x[held]))
