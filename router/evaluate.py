"""Offline routing quality: PGR curves, APGR and CPT as in the RouteLLM paper (2406.18665).

A router is reduced to a score per prompt (higher = more worth the strong tier). Sending
the top-k prompts by score to the strong tier and the rest to the weak tier earns
`perf(k)`; PGR(k) = (perf(k) - weak) / (strong - weak). APGR is the area under PGR as a
function of the strong-call share c in [0, 1] (random routing: 0.5 in expectation);
`apgr_10` is the paper's 10-bucket approximation (mean of PGR at c = 10%, ..., 100%).
CPT(x) is the smallest strong-call share whose PGR reaches x. All pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RoutingCurve:
    share: np.ndarray
    """Strong-call share for k = 0..n prompts sent up."""
    pgr: np.ndarray
    """PGR at each share."""

    @property
    def apgr(self) -> float:
        y = self.pgr
        return float(np.sum((y[1:] + y[:-1]) * np.diff(self.share)) / 2.0)

    @property
    def apgr_10(self) -> float:
        n = len(self.share) - 1
        ks = [round(c * n) for c in np.linspace(0.1, 1.0, 10)]
        return float(np.mean(self.pgr[ks]))

    def cpt(self, target: float) -> float:
        """Strong-call share needed to reach PGR >= target (1.0 if never)."""
        hit = np.nonzero(self.pgr >= target - 1e-12)[0]
        return float(self.share[hit[0]]) if len(hit) else 1.0


def curve(scores: np.ndarray, weak: np.ndarray, strong: np.ndarray) -> RoutingCurve:
    """PGR curve of routing by `scores` (ties broken by input order, stably)."""
    n = len(scores)
    if n == 0 or not (len(weak) == len(strong) == n):
        raise ValueError("scores, weak and strong must be non-empty and the same length")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    gain = (strong - weak)[order]
    w_mean, s_mean = float(np.mean(weak)), float(np.mean(strong))
    perf = (np.sum(weak) + np.concatenate([[0.0], np.cumsum(gain)])) / n
    span = s_mean - w_mean
    pgr = (perf - w_mean) / span if abs(span) > 1e-12 else np.zeros(n + 1)
    return RoutingCurve(np.arange(n + 1) / n, pgr)


def summary(c: RoutingCurve) -> dict[str, float]:
    return {
        "apgr": round(c.apgr, 4),
        "apgr_10": round(c.apgr_10, 4),
        "cpt50": round(c.cpt(0.5), 4),
        "cpt80": round(c.cpt(0.8), 4),
    }


def random_summary(
    weak: np.ndarray, strong: np.ndarray, seed: int = 0, rounds: int = 20
) -> dict[str, float]:
    """Mean figures of `rounds` random routers."""
    rng = np.random.default_rng(seed)
    runs = [summary(curve(rng.random(len(weak)), weak, strong)) for _ in range(rounds)]
    return {k: round(float(np.mean([r[k] for r in runs])), 4) for k in runs[0]}


def oracle_scores(weak: np.ndarray, strong: np.ndarray) -> np.ndarray:
    """The best possible ranking: largest strong-over-weak gain first."""
    return np.asarray(strong - weak, dtype=np.float64)


def length_scores(prompts: tuple[str, ...] | list[str]) -> np.ndarray:
    """The prompt-length heuristic: longer prompts go up first (words as the length unit)."""
    return np.asarray([len(p.split()) for p in prompts], dtype=np.float64)
