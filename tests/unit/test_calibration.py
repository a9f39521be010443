"""Re-calibration: replayed score streams hold the realised share near the target."""

from __future__ import annotations

import numpy as np
import pytest
from tierline.router.learned import (
    CalibrationState,
    LearnedPolicy,
    decide_learned,
    recalibrate,
    tolerance,
)
from tierline.router.types import RequestFeatures, TierState

TIERS = [TierState("small", 10_000), TierState("large", 10_000)]


def replay(scores: np.ndarray, policy: LearnedPolicy, forced_up: np.ndarray | None = None):
    state = CalibrationState()
    up = np.zeros(len(scores), dtype=bool)
    for i, s in enumerate(scores):
        tiers = TIERS
        if forced_up is not None and forced_up[i]:  # too long for the small tier
            tiers = [TierState("small", 1), TIERS[1]]
        f = RequestFeatures(
            "", {"small": 10, "large": 10}, 1, quality={"small": 0.5, "large": 0.5 + s}
        )
        d = decide_learned(f, tiers, policy, state)
        state = recalibrate(state, d, "small", policy)
        up[i] = d.tier == "large"
    return up, state


def _prior(rng: np.random.Generator, kind: str, n: int) -> np.ndarray:
    if kind == "normal":
        return rng.normal(0.1, 0.15, n)
    if kind == "bimodal":
        return np.where(rng.random(n) < 0.3, rng.normal(0.4, 0.05, n), rng.normal(0.0, 0.05, n))
    return rng.uniform(-0.3, 0.6, n)


@pytest.mark.parametrize("target", [0.1, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("kind", ["normal", "bimodal", "uniform"])
@pytest.mark.parametrize("shift", [-0.2, 0.15])
def test_realised_share_tracks_the_target(target: float, kind: str, shift: float) -> None:
    """Live traffic differs from the calibration set (shifted): after 500 requests the
    realised share is within 3 points of the target anyway."""
    seed = int(target * 100) + 7 * len(kind) + int(shift * 100)
    rng = np.random.default_rng(seed)
    prior = np.quantile(_prior(rng, kind, 5000), np.linspace(0, 1, 101))
    policy = LearnedPolicy(strong_share=target, prior_quantiles=tuple(prior), window=1000)
    live = _prior(rng, kind, 2000) + shift
    up, state = replay(live, policy)
    assert abs(up[500:].mean() - target) <= 0.03
    assert len(state.scores) <= policy.window
    assert state.seen == len(live) and state.sent_up == int(up.sum())


def test_correction_absorbs_requests_forced_up_by_other_rules() -> None:
    """15% of requests must go up for context; the share still lands on the target."""
    rng = np.random.default_rng(1)
    prior = np.quantile(rng.normal(0, 0.1, 5000), np.linspace(0, 1, 101))
    policy = LearnedPolicy(strong_share=0.4, prior_quantiles=tuple(prior))
    up, _ = replay(rng.normal(0, 0.1, 4000), policy, forced_up=rng.random(4000) < 0.15)
    assert abs(up[500:].mean() - 0.4) <= 0.03


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_extreme_targets(share: float) -> None:
    policy = LearnedPolicy(strong_share=share, prior_quantiles=(0.0, 0.5, 1.0), max_correction=0.0)
    up, _ = replay(np.random.default_rng(0).uniform(-1, 1, 300), policy)
    assert up.mean() == share


def test_tolerance_reads_the_prior_until_the_window_fills() -> None:
    policy = LearnedPolicy(strong_share=0.25, prior_quantiles=(0.0, 1.0), min_window=3)
    assert tolerance(policy, CalibrationState(), 0.25) == pytest.approx(0.75)
    live = CalibrationState(scores=(0.1, 0.2, 0.3, 0.4, 0.5))
    assert tolerance(policy, live, 0.25) == pytest.approx(
        np.quantile([0.1, 0.2, 0.3, 0.4, 0.5], 0.75)
    )
