"""From a prompt's embedding to per-tier quality predictions, and from targets to shares.

Pure functions over a loaded `Head`: the gateway embeds the prompt (an `Embedder`),
calls `tier_quality`, and passes the result to the policy as a feature.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from tierline.router.bound import Bound, class_pair_thresholds, pair_thresholds
from tierline.router.classes import OUT_OF_DOMAIN
from tierline.router.head import Head
from tierline.router.learned import LossBound

SHIPPED_ARTIFACT = Path(__file__).resolve().parent / "artifacts" / "minilm-static-router.npz"
CALIBRATED_ARTIFACT = SHIPPED_ARTIFACT.with_name("minilm-static-router-calibrated.npz")
"""The head for `router.max_quality_loss`: trained on 70% of the rows, the other 30% kept
in it to calibrate the bound on."""


def output_weights(
    tiers: Sequence[str], outputs: Sequence[str], mapping: Mapping[str, str]
) -> dict[str, tuple[int, int, float]]:
    """How each tier's quality is read off the head's outputs: (low, high, t) so that
    quality = (1 - t) * p[low] + t * p[high].

    A tier named in `mapping` reads that output. Otherwise the cheapest tier reads the
    first output (the weak tier the head was trained on), the most capable the last, and
    tiers in between interpolate by position.
    """
    if not tiers:
        raise ValueError("no tiers")
    for tier, out in mapping.items():
        if tier not in tiers:
            raise ValueError(f"tier_outputs names tier {tier!r}, which is not a tier")
        if out not in outputs:
            raise ValueError(
                f"tier_outputs maps {tier!r} to {out!r}; the scorer's outputs are "
                f"{', '.join(outputs)}"
            )
    last = len(outputs) - 1
    result: dict[str, tuple[int, int, float]] = {}
    for i, tier in enumerate(tiers):
        if tier in mapping:
            j = list(outputs).index(mapping[tier])
            result[tier] = (j, j, 0.0)
        elif len(tiers) == 1:
            result[tier] = (last, last, 0.0)
        else:
            pos = i / (len(tiers) - 1) * last
            low = int(np.floor(pos))
            high = min(low + 1, last)
            result[tier] = (low, high, float(pos - low))
    return result


def tier_quality(
    probs: np.ndarray, weights: Mapping[str, tuple[int, int, float]]
) -> dict[str, float]:
    """Per-tier predicted quality from one row of head outputs."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    return {
        tier: float((1.0 - t) * p[low] + t * p[high]) for tier, (low, high, t) in weights.items()
    }


def share_for_quality(head: Head, quality_target: float) -> float:
    """The strong share whose expected quality reaches `quality_target` of the way from
    all-cheapest to all-strongest, read off the calibration quantiles.

    The expected gain of sending the top `s` of prompts up is the integral of the score
    quantile function over the top `s`; the target is that fraction of the total
    positive gain.
    """
    q = np.asarray(head.calibration_quantiles, dtype=np.float64)
    if len(q) < 2:
        raise ValueError("the scorer has no calibration quantiles")
    gains = np.clip(q[::-1], 0.0, None)  # descending scores: top prompts first
    cum = np.concatenate([[0.0], np.cumsum((gains[1:] + gains[:-1]) / 2.0)])
    total = cum[-1]
    if total <= 0:
        return 0.0
    shares = np.linspace(0.0, 1.0, len(q))
    hit = np.nonzero(cum / total >= quality_target - 1e-12)[0]
    return float(shares[hit[0]]) if len(hit) else 1.0


def tier_matrix(rows: np.ndarray, weights: Mapping[str, tuple[int, int, float]]) -> np.ndarray:
    """`tier_quality` for many rows at once: (rows, outputs) -> (rows, tiers), tiers in
    the order of `weights`."""
    p = np.asarray(rows, dtype=np.float64)
    return np.stack(
        [(1.0 - t) * p[:, low] + t * p[:, high] for low, high, t in weights.values()], axis=1
    )


def head_bounds(
    head: Head,
    tiers: Sequence[str],
    mapping: Mapping[str, str],
    max_quality_loss: float,
    confidence: float,
) -> dict[tuple[str, str], Bound]:
    """The quality-loss bound's threshold for every pair of `tiers` (cheapest first),
    calibrated on the held-out rows shipped in the head: both their predictions and their
    labels are read onto the tiers the way the gateway reads predictions
    (`output_weights`)."""
    _require_rows(head)
    weights = output_weights(tiers, head.outputs, mapping)
    return pair_thresholds(
        tier_matrix(head.calibration_probs, weights),
        tier_matrix(head.calibration_labels, weights),
        list(tiers),
        max_quality_loss,
        1.0 - confidence,
    )


def head_class_bounds(
    head: Head,
    tiers: Sequence[str],
    mapping: Mapping[str, str],
    max_quality_loss: float,
    confidence: float,
) -> dict[str, dict[tuple[str, str], Bound]]:
    """`head_bounds` per traffic class, each calibrated on the held-out rows the classifier
    put in that class alone (`router.bound.class_pair_thresholds`; rows out of domain count
    for no class); empty for a head without classes."""
    if head.classes is None:
        return {}
    _require_rows(head)
    weights = output_weights(tiers, head.outputs, mapping)
    names = head.classes.names
    return class_pair_thresholds(
        tier_matrix(head.calibration_probs, weights),
        tier_matrix(head.calibration_labels, weights),
        [names[i] if i >= 0 else OUT_OF_DOMAIN for i in head.calibration_classes],
        names,
        list(tiers),
        max_quality_loss,
        1.0 - confidence,
    )


def head_loss_bound(
    head: Head,
    tiers: Sequence[str],
    mapping: Mapping[str, str],
    max_quality_loss: float,
    confidence: float,
) -> LossBound:
    """The learned policy's `bound` for `router.max_quality_loss`: `head_bounds`'
    thresholds by tier pair, and for a head with traffic classes `head_class_bounds`'
    thresholds by class and pair."""
    bounds = head_bounds(head, tiers, mapping, max_quality_loss, confidence)
    per_class = head_class_bounds(head, tiers, mapping, max_quality_loss, confidence)
    return LossBound(
        max_quality_loss,
        confidence,
        {pair: b.threshold for pair, b in bounds.items()},
        {c: {pair: b.threshold for pair, b in bs.items()} for c, bs in per_class.items()},
    )


def _require_rows(head: Head) -> None:
    if len(head.calibration_probs) == 0:
        raise ValueError(
            "the scorer carries no held-out calibration rows; retrain it with "
            "`tierline router train --calibration-holdout 0.3` to use max_quality_loss"
        )
