"""The learned policy: the cheapest tier whose predicted quality is within a tolerance of
the best, with the tolerance calibrated to the operator's share of traffic above the
cheapest tier.

Everything here is a pure function of plain data. The request's features carry the
scorer's per-tier quality predictions (computed by the caller from the embedding);
`decide_learned` turns them, the tier states, the policy and the calibration state into
a `Decision`; `recalibrate` takes the calibration state and one decision and returns the
next state (state in, state out, like Ray's autoscaling policies: no hidden counters).

The routing score of a request is `best other tier's predicted quality - cheapest tier's
predicted quality`: the expected gain of leaving the cheapest tier. A request leaves the cheapest
tier when its score is above the tolerance, so the tolerance for a target share `s` is
the `1 - s` quantile of recent scores: first of the calibration set's scores shipped with
the scorer, then of a rolling window of live traffic, plus an integral correction that
pulls the realised share onto the target when other rules (context, health, load) move
requests.

With a quality-loss bound (`LossBound`), the thresholds are instead fixed per pair of
tiers, calibrated offline so that the loss among prompts kept on the cheaper tier stays at
most `max_quality_loss` with probability `confidence` (`router/bound.py`); a prompt climbs
the chain of tiers while the next tier's predicted gain is above the pair's threshold.
Live traffic does not move these thresholds (that would void the bound); it is only counted.
A bound may carry thresholds per traffic class (`router/classes.py`): a prompt whose
features name its class uses that class's thresholds, an out-of-domain prompt the
strictest of the classes' for each pair, and a prompt with no class the pooled ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from tierline.router.bound import chain_start
from tierline.router.classes import OUT_OF_DOMAIN
from tierline.router.fallback import pinned, unusable, walk
from tierline.router.types import Decision, RequestFeatures, RoutingError, TierState

PREFERENCES = ("cost", "balanced", "quality", "latency")


@dataclass(frozen=True)
class LossBound:
    """A quality-loss bound in force: per (cheaper, costlier) tier pair, the calibrated
    threshold on the predicted gain at or below which a prompt stays on the cheaper tier
    (`router.bound.pair_thresholds`; a pair not listed counts as `-inf`: go up)."""

    max_quality_loss: float
    confidence: float
    thresholds: Mapping[tuple[str, str], float]
    """Calibrated on all calibration rows pooled: for prompts with no class."""
    classes: Mapping[str, Mapping[tuple[str, str], float]] = field(default_factory=dict)
    """Per traffic class, thresholds calibrated on that class's rows alone (empty: the
    head has no classes, and every prompt gets the pooled thresholds)."""

    def thresholds_for(self, traffic_class: str | None) -> Mapping[tuple[str, str], float]:
        """The thresholds a prompt of `traffic_class` is routed with: its class's; for an
        out-of-domain prompt (or a class the bound does not know), the strictest class
        threshold of each pair (the one that keeps the fewest prompts cheap; a pair some
        class lacks counts as `-inf`); with no class or no per-class thresholds, the pooled
        ones."""
        if traffic_class is None or not self.classes:
            return self.thresholds
        if traffic_class in self.classes:
            return self.classes[traffic_class]
        return strictest(self.classes.values())


def strictest(
    per_class: Iterable[Mapping[tuple[str, str], float]],
) -> dict[tuple[str, str], float]:
    """Each pair's lowest threshold over the classes (missing in a class: `-inf`)."""
    tables = list(per_class)
    pairs = {pair for t in tables for pair in t}
    return {pair: min(t.get(pair, float("-inf")) for t in tables) for pair in pairs}


@dataclass(frozen=True)
class LearnedPolicy:
    strong_share: float
    """Target share of auto traffic above the cheapest tier (balanced preference)."""
    prior_quantiles: tuple[float, ...]
    """Quantiles (evenly spaced over 0..1) of the routing score on a calibration set."""
    default_preference: str = "balanced"
    share_factors: Mapping[str, float] = field(
        default_factory=lambda: {"cost": 0.5, "balanced": 1.0, "quality": 2.0, "latency": 1.0}
    )
    """Each preference's target share, as a multiple of `strong_share`."""
    window: int = 1000
    """Live routing scores kept for re-calibration."""
    min_window: int = 200
    """Live scores needed before they replace the calibration set's quantiles."""
    gain: float = 0.01
    """Integral gain: how fast the realised share is pulled onto the target."""
    max_correction: float = 0.2
    spill: bool = True
    """Send a request one tier up when its tier is overloaded."""
    cold_start: str = "skip"
    """Tiers scaled to zero: `skip` them while another tier fits, or `wait` for them."""
    bound: LossBound | None = None
    """Instead of the share: fixed thresholds that bound the quality loss."""

    def share(self, preference: str) -> float:
        return float(min(max(self.strong_share * self.share_factors[preference], 0.0), 1.0))


@dataclass(frozen=True)
class CalibrationState:
    """What re-calibration remembers: recent scores, the correction, and counts."""

    scores: tuple[float, ...] = ()
    correction: float = 0.0
    seen: int = 0
    sent_up: int = 0

    @property
    def realised_share(self) -> float:
        return self.sent_up / self.seen if self.seen else 0.0


def score_of(quality: Mapping[str, float], tiers: Sequence[TierState]) -> float:
    """Expected gain of leaving the cheapest tier: the best other tier's predicted quality
    minus the cheapest's (negative when the cheapest is predicted to do better)."""
    values = [quality[t.name] for t in tiers]
    if len(values) < 2:
        return 0.0
    return float(max(values[1:]) - values[0])


def tolerance(policy: LearnedPolicy, state: CalibrationState, share: float) -> float:
    """Score threshold above which a request leaves the cheapest tier, for `share`."""
    target = min(max(share + state.correction, 0.0), 1.0)
    if target <= 0.0:
        return float("inf")
    if target >= 1.0:
        return float("-inf")
    if len(state.scores) >= policy.min_window:
        return float(np.quantile(np.asarray(state.scores), 1.0 - target))
    q = np.asarray(policy.prior_quantiles, dtype=np.float64)
    if len(q) == 0:
        return 0.0
    return float(np.interp(1.0 - target, np.linspace(0.0, 1.0, len(q)), q))


def _ideal(
    quality: Mapping[str, float], tiers: Sequence[TierState], tol: float
) -> tuple[list[int], int]:
    """Tiers meeting the quality bar (best - tol), and the cheapest choice among them.

    The cheapest tier is kept exactly when the score (best - its quality) is at most the
    tolerance; otherwise the cheapest other tier within the tolerance of the best is
    chosen, or the best other tier when none is (negative tolerances).
    """
    values = [quality[t.name] for t in tiers]
    best = max(values)
    if len(values) == 1 or max(values[1:]) - values[0] <= tol:
        ideal = 0
    else:
        within = [i for i in range(1, len(values)) if values[i] >= best - tol]
        ideal = within[0] if within else 1 + int(np.argmax(values[1:]))
    meets = sorted({ideal, *(i for i, v in enumerate(values) if v >= best - tol)})
    if ideal != 0 and 0 in meets:
        meets.remove(0)
    return meets, ideal


def decide_learned(
    features: RequestFeatures,
    tiers: Sequence[TierState],
    policy: LearnedPolicy,
    state: CalibrationState,
) -> Decision:
    """Pick a tier. `tiers` is ordered from cheapest to most capable."""
    if not tiers:
        raise ValueError("no tiers to route to")
    if features.pinned_tier is not None:
        return pinned(features, tiers)
    if features.quality is None or any(t.name not in features.quality for t in tiers):
        raise ValueError("the learned policy needs a quality prediction for every tier")
    preference = features.preference or policy.default_preference
    if preference not in PREFERENCES:
        raise RoutingError(
            400,
            "invalid_preference",
            f"preference {preference!r} is not one of {', '.join(PREFERENCES)}",
            param="x-tierline-preference",
        )
    score = score_of(features.quality, tiers)
    share: float | None = None
    traffic_class: str | None = None  # the class whose bound was used, if any
    if policy.bound is None:
        share = policy.share(preference)
        tol = tolerance(policy, state, share)
        meets, start = _ideal(features.quality, tiers, tol)
    else:
        names = [t.name for t in tiers]
        if policy.bound.classes and features.traffic_class is not None:
            traffic_class = features.traffic_class
            if traffic_class not in policy.bound.classes:
                traffic_class = OUT_OF_DOMAIN
        thresholds = policy.bound.thresholds_for(traffic_class)
        start = chain_start(features.quality, names, thresholds)
        # Only tiers from the start up may be taken (the latency preference's choice).
        meets = list(range(start, len(tiers)))
        tol = (
            thresholds.get((names[0], names[1]), float("-inf")) if len(names) > 1 else float("inf")
        )

    steps: list[str] = []
    if preference == "latency":
        timed = [
            i for i in meets if unusable(features, tiers[i]) is None and tiers[i].ttft_s is not None
        ]
        if timed:
            fastest = min(timed, key=lambda i: (tiers[i].ttft_s, i))
            if fastest != start:
                steps.append("fastest")
            start = fastest

    # Tiers scaled to zero are passed over (`skip`) unless no warm tier fits at all.
    skip_cold = policy.cold_start == "skip"
    step = walk(features, tiers, start, policy.cold_start)
    chosen = step.index
    passed = list(step.passed)
    steps.extend(step.notes)

    if policy.spill and tiers[chosen].overloaded:
        for j in range(chosen + 1, len(tiers)):
            warm = not (skip_cold and tiers[j].cold)
            if unusable(features, tiers[j]) is None and not tiers[j].overloaded and warm:
                passed.append(f"{tiers[chosen].name}:overloaded")
                steps.append("spill")
                chosen = j
                break

    if traffic_class is not None:
        steps.insert(0, f"class:{traffic_class}")
    reason = f"auto:learned:{preference}" + "".join(f"+{s}" for s in steps)
    return Decision(
        tier=tiers[chosen].name,
        score=score,
        reason=reason,
        escalations=tuple(passed),
        threshold=tol,
        preference=preference,
        target_share=share,
        max_quality_loss=None if policy.bound is None else policy.bound.max_quality_loss,
        traffic_class=traffic_class,
    )


def recalibrate(
    state: CalibrationState,
    decision: Decision,
    cheapest: str,
    policy: LearnedPolicy,
) -> CalibrationState:
    """The calibration state after one auto decision (pinned decisions leave it as is;
    under a quality-loss bound only the counts and scores move)."""
    score = decision.score
    went_up = decision.tier != cheapest
    scores = (*state.scores, score)[-policy.window :]
    if decision.target_share is None:
        if decision.max_quality_loss is None:
            return state
        return replace(
            state, scores=scores, seen=state.seen + 1, sent_up=state.sent_up + int(went_up)
        )
    correction = state.correction + policy.gain * (decision.target_share - float(went_up))
    correction = min(max(correction, -policy.max_correction), policy.max_correction)
    return CalibrationState(
        scores=scores,
        correction=correction,
        seen=state.seen + 1,
        sent_up=state.sent_up + int(went_up),
    )
