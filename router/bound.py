"""A quality-loss bound: the routing threshold that keeps the loss among cheap-routed
prompts at most `alpha`, with probability at least `1 - delta`, calibrated on labelled
prompts.

A prompt's loss is `max(0, strong - weak)` with both scores on a 0..1 scale: for 0/1
labels, 1 exactly when the stronger tier was right and the cheaper one wrong. A router
keeps a prompt on the cheaper tier when its score (predicted gain of going up) is at most
a threshold `t`; the risk `R(t)` is the mean loss over the prompts it keeps.

`calibrate` walks a fixed grid of thresholds from the most cautious upwards and tests
`R(t) <= alpha` at each with an upper confidence bound on the loss among the calibration
prompts kept at `t` (Clopper-Pearson for 0/1 losses, the binomial-KL Chernoff bound for
graded ones); it stops at the first threshold that fails and returns the last that
passed (fixed-sequence testing, as in Learn-then-Test: the chance that the returned
threshold has `R(t) > alpha` is at most `delta`). Thresholds where the calibration set
keeps too few prompts for the test to have power (under `START_SHARE` of them, or
`min_rows`) are skipped, a choice made from the scores alone. When nothing passes, the
threshold is `-inf`: every prompt goes up.

N tiers form an ordered chain: each pair of tiers gets its own threshold
(`pair_thresholds`; per traffic class, on that class's calibration rows only:
`class_pair_thresholds`), and a prompt climbs from the cheapest tier while the predicted gain
of the next tier up is above the pair's threshold (`chain_start`). Pure numpy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tierline.router.classes import OUT_OF_DOMAIN

DEFAULT_GRID = np.linspace(-1.0, 1.0, 801)
"""Thresholds tried: the learned router's score is a difference of probabilities."""
START_SHARE = 0.1
"""The walk starts where the threshold keeps this share of the calibration prompts."""


@dataclass(frozen=True)
class Bound:
    """A calibrated threshold and what the calibration set says about it."""

    threshold: float
    """Keep a prompt on the cheaper tier when its score is at most this (`-inf`: never)."""
    alpha: float
    delta: float
    calibration_rows: int
    cheap_rows: int
    """Calibration prompts the threshold keeps on the cheaper tier."""
    empirical_loss: float
    """Mean loss among them (0 when none)."""
    upper_bound: float
    """The upper confidence bound on the loss at this threshold (0 when none are kept)."""

    @property
    def cheap_share(self) -> float:
        return self.cheap_rows / self.calibration_rows if self.calibration_rows else 0.0


def prompt_losses(weak: np.ndarray, strong: np.ndarray) -> np.ndarray:
    """Per-prompt loss of keeping the cheaper tier: `max(0, strong - weak)`, scores on 0..1."""
    w, s = np.asarray(weak, dtype=np.float64), np.asarray(strong, dtype=np.float64)
    if w.shape != s.shape:
        raise ValueError("weak and strong scores must have the same shape")
    if len(w) and (min(w.min(), s.min()) < 0.0 or max(w.max(), s.max()) > 1.0):
        raise ValueError("scores must be on a 0..1 scale (normalise graded labels first)")
    return np.maximum(s - w, 0.0)


def _log_binom_cdf(k: int, n: int, p: float) -> float:
    """log P(Binomial(n, p) <= k)."""
    if k >= n or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return -math.inf
    j = np.arange(k + 1, dtype=np.float64)
    # log C(n, j), built up as a running sum of log((n - i + 1) / i)
    log_c = np.concatenate([[0.0], np.cumsum(np.log((n - j[1:] + 1.0) / j[1:]))])
    terms = log_c + j * math.log(p) + (n - j) * math.log1p(-p)
    top = float(terms.max())
    return top + math.log(float(np.exp(terms - top).sum()))


def clopper_pearson_upper(k: int, n: int, delta: float) -> float:
    """One-sided upper `1 - delta` confidence bound on a binomial rate from `k` of `n`:
    the `p` with `P(Binomial(n, p) <= k) = delta`."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if not 0.0 < delta < 1.0:
        raise ValueError("delta must be in (0, 1)")
    if n == 0 or k == n:
        return 1.0
    if k == 0:
        return 1.0 - delta ** (1.0 / n)
    target = math.log(delta)
    lo, hi = k / n, 1.0
    for _ in range(60):  # the CDF falls as p rises: bisect
        mid = (lo + hi) / 2.0
        if _log_binom_cdf(k, n, mid) > target:
            lo = mid
        else:
            hi = mid
    return hi


def _kl(a: float, b: float) -> float:
    """KL divergence between Bernoulli(a) and Bernoulli(b)."""
    out = 0.0
    if a > 0.0:
        out += a * math.log(a / b)
    if a < 1.0:
        out += (1.0 - a) * math.log((1.0 - a) / (1.0 - b))
    return out


def kl_upper(mean: float, n: int, delta: float) -> float:
    """Upper `1 - delta` bound on the mean of `n` independent values in [0, 1] with sample
    mean `mean` (Hoeffding's binomial-KL Chernoff bound)."""
    if not 0.0 < delta < 1.0:
        raise ValueError("delta must be in (0, 1)")
    if n == 0 or mean >= 1.0:
        return 1.0
    budget = math.log(1.0 / delta) / n
    lo, hi = max(mean, 0.0), 1.0 - 1e-15
    if _kl(lo, hi) <= budget:
        return 1.0
    for _ in range(60):
        mid = (lo + hi) / 2.0
        if _kl(max(mean, 0.0), mid) <= budget:
            lo = mid
        else:
            hi = mid
    return hi


def upper_bound(losses: np.ndarray, delta: float) -> float:
    """Upper confidence bound on the mean loss: exact (Clopper-Pearson) for 0/1 losses,
    the KL bound for graded ones."""
    x = np.asarray(losses, dtype=np.float64)
    if np.all((x == 0.0) | (x == 1.0)):
        return clopper_pearson_upper(int(x.sum()), len(x), delta)
    return kl_upper(float(x.mean()), len(x), delta)


def min_rows(alpha: float, delta: float) -> int:
    """The fewest kept prompts at which a loss of `alpha / 2` would pass the test: below
    that, one unlucky loss among a few prompts would end the walk before it got anywhere."""
    n = 1
    while n < 10**7:
        if _passes(math.floor(n * alpha / 2.0), n, alpha, delta, True):
            return n
        n = max(n + 1, int(n * 1.05))
    return n


def calibrate(
    scores: np.ndarray,
    losses: np.ndarray,
    alpha: float,
    delta: float,
    grid: np.ndarray = DEFAULT_GRID,
    start_share: float = START_SHARE,
) -> Bound:
    """The highest threshold on `grid` (fixed-sequence tested, see the module docs) whose
    loss among the calibration prompts kept is bounded by `alpha` at confidence `1 - delta`.
    The walk starts at the first threshold that keeps `start_share` of the prompts (and at
    least `min_rows`)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must be in (0, 1)")
    s = np.asarray(scores, dtype=np.float64)
    x = np.asarray(losses, dtype=np.float64)
    if s.shape != x.shape or s.ndim != 1:
        raise ValueError("scores and losses must be 1-d and the same length")
    if len(x) and (x.min() < 0.0 or x.max() > 1.0):
        raise ValueError("losses must be in [0, 1]")
    order = np.argsort(s, kind="stable")
    s_sorted, cum = s[order], np.concatenate([[0.0], np.cumsum(x[order])])
    binary = bool(np.all((x == 0.0) | (x == 1.0)))
    need = max(min_rows(alpha, delta), math.ceil(start_share * len(s)))
    threshold, kept_best = float("-inf"), 0
    last_kept = -1
    for t in np.sort(np.asarray(grid, dtype=np.float64)):
        kept = int(np.searchsorted(s_sorted, t, side="right"))
        if kept < need:
            continue
        if kept != last_kept and not _passes(float(cum[kept]), kept, alpha, delta, binary):
            break
        last_kept = kept
        threshold, kept_best = float(t), kept
    if kept_best == 0:
        return Bound(threshold, alpha, delta, len(s), 0, 0.0, 0.0)
    mean = float(cum[kept_best]) / kept_best
    ub = (
        clopper_pearson_upper(round(mean * kept_best), kept_best, delta)
        if binary
        else kl_upper(mean, kept_best, delta)
    )
    return Bound(threshold, alpha, delta, len(s), kept_best, mean, ub)


def _passes(total: float, n: int, alpha: float, delta: float, binary: bool) -> bool:
    """Whether the upper bound on the mean of `n` losses summing to `total` is at most
    `alpha` (tested at `alpha` directly: one tail probability instead of a search)."""
    mean = total / n
    if mean >= alpha:
        return False
    if binary:
        return _log_binom_cdf(round(total), n, alpha) <= math.log(delta)
    return n * _kl(mean, alpha) >= math.log(1.0 / delta)


def pair_thresholds(
    quality: np.ndarray,
    labels: np.ndarray,
    tiers: Sequence[str],
    alpha: float,
    delta: float,
    grid: np.ndarray = DEFAULT_GRID,
) -> dict[tuple[str, str], Bound]:
    """A bound for every ordered pair of tiers (cheaper, costlier), calibrated on rows of
    predicted quality per tier (`quality`: rows x tiers) and labelled quality per tier
    (`labels`: rows x tiers, 0..1). The pair's score is the costlier tier's predicted
    quality minus the cheaper's, its loss `max(0, costlier label - cheaper label)`."""
    q = np.asarray(quality, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if q.shape != y.shape or q.ndim != 2 or q.shape[1] != len(tiers):
        raise ValueError("quality and labels must both be rows x tiers")
    out: dict[tuple[str, str], Bound] = {}
    for i in range(len(tiers)):
        for j in range(i + 1, len(tiers)):
            losses = prompt_losses(y[:, i], y[:, j])
            out[(tiers[i], tiers[j])] = calibrate(q[:, j] - q[:, i], losses, alpha, delta, grid)
    return out


def class_pair_thresholds(
    quality: np.ndarray,
    labels: np.ndarray,
    row_classes: Sequence[str],
    names: Sequence[str],
    tiers: Sequence[str],
    alpha: float,
    delta: float,
    grid: np.ndarray = DEFAULT_GRID,
) -> dict[str, dict[tuple[str, str], Bound]]:
    """`pair_thresholds` for each class in `names`, calibrated on the rows of that class
    alone (`row_classes`: one class name per row). Each class's bound holds for prompts
    like its own calibration rows with probability `1 - delta`; a class with too few rows
    to certify `alpha` gets `-inf` thresholds (everything goes up)."""
    c = np.asarray(row_classes)
    q, y = np.asarray(quality), np.asarray(labels)
    if len(c) != len(q):
        raise ValueError("one class per calibration row")
    return {
        name: pair_thresholds(q[c == name], y[c == name], tiers, alpha, delta, grid)
        for name in names
    }


def chain_start(
    quality: Mapping[str, float],
    tiers: Sequence[str],
    thresholds: Mapping[tuple[str, str], float],
) -> int:
    """Index of the tier a prompt starts at: from the cheapest, go one tier up while the
    predicted gain over the current tier is above the pair's threshold (a pair with no
    threshold counts as `-inf`: the prompt goes up)."""
    i = 0
    while i + 1 < len(tiers):
        pair = (tiers[i], tiers[i + 1])
        gain = quality[tiers[i + 1]] - quality[tiers[i]]
        if gain <= thresholds.get(pair, float("-inf")):
            break
        i += 1
    return i


def realised(
    scores: np.ndarray, losses: np.ndarray, threshold: float | np.ndarray
) -> tuple[float, float, np.ndarray]:
    """On held-out prompts: (loss among those kept cheap, cheap share, kept mask); the
    threshold is one for all prompts or one per prompt (e.g. per traffic class)."""
    s = np.asarray(scores, dtype=np.float64)
    x = np.asarray(losses, dtype=np.float64)
    cheap = s <= threshold
    loss = float(x[cheap].mean()) if cheap.any() else 0.0
    return loss, float(cheap.mean()) if len(s) else 0.0, cheap


def evaluate(
    calibration: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    alpha: float,
    delta: float,
    grid: np.ndarray = DEFAULT_GRID,
) -> dict[str, float | int | bool | None]:
    """Calibrate on (scores, losses) of `calibration`, route `test` with the threshold:
    the figures `tierline router eval` and the benchmark report for one `alpha`."""
    b = calibrate(calibration[0], calibration[1], alpha, delta, grid)
    loss, share, cheap = realised(test[0], test[1], b.threshold)
    return {
        "max_quality_loss": alpha,
        "confidence": round(1.0 - delta, 6),
        "threshold": b.threshold if math.isfinite(b.threshold) else None,
        "calibration_rows": b.calibration_rows,
        "calibration_cheap_share": round(b.cheap_share, 4),
        "calibration_upper_bound": round(b.upper_bound, 4),
        "test_rows": len(cheap),
        "cheap_rows": int(cheap.sum()),
        "realised_loss": round(loss, 4),
        "cheap_share": round(share, 4),
        "held": loss <= alpha,
    }


def evaluate_classes(
    calibration: tuple[np.ndarray, np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray, np.ndarray],
    names: Sequence[str],
    alpha: float,
    delta: float,
    grid: np.ndarray = DEFAULT_GRID,
) -> tuple[dict[str, Any], np.ndarray]:
    """`evaluate` with a bound per traffic class, as the gateway routes under a head with
    classes: (scores, losses, class index) rows, the index into `names` or -1 for out of
    domain. Each class is calibrated on its own calibration rows; a test row takes its
    class's threshold, an out-of-domain row the strictest class's. The figures, with one
    entry per class, and the mask of test rows kept cheap."""
    c_s, c_x, c_k = (np.asarray(a) for a in calibration)
    t_s, t_x, t_k = (np.asarray(a) for a in test)
    bounds = [
        calibrate(c_s[c_k == i], c_x[c_k == i], alpha, delta, grid) for i in range(len(names))
    ]
    limits = np.array([b.threshold for b in bounds] or [float("-inf")], dtype=np.float64)
    strictest = float(limits.min())
    per_row = np.where(t_k >= 0, limits[np.clip(t_k, 0, None)], strictest)
    loss, share, cheap = realised(t_s, t_x, per_row)
    cal_row = np.where(c_k >= 0, limits[np.clip(c_k, 0, None)], strictest)
    cal_cheap = float((c_s <= cal_row).mean()) if len(c_s) else 0.0
    per_class: dict[str, Any] = {}
    for i, name in enumerate([*names, OUT_OF_DOMAIN]):
        rows = t_k == (i if i < len(names) else -1)
        kept = cheap & rows
        per_class[name] = {
            "threshold": _finite(float(limits[i]) if i < len(names) else strictest),
            "calibration_rows": int((c_k == (i if i < len(names) else -1)).sum()),
            "test_rows": int(rows.sum()),
            "cheap_rows": int(kept.sum()),
            "realised_loss": round(float(t_x[kept].mean()), 4) if kept.any() else 0.0,
        }
    out: dict[str, Any] = {
        "max_quality_loss": alpha,
        "confidence": round(1.0 - delta, 6),
        "policy": "per_class",
        "threshold": None,
        "calibration_rows": len(c_s),
        "calibration_cheap_share": round(cal_cheap, 4),
        "calibration_upper_bound": round(max((b.upper_bound for b in bounds), default=0.0), 4),
        "test_rows": len(cheap),
        "cheap_rows": int(cheap.sum()),
        "realised_loss": round(loss, 4),
        "cheap_share": round(share, 4),
        "held": loss <= alpha,
        "classes": per_class,
    }
    return out, cheap


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
