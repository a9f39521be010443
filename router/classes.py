"""Traffic classes: which calibration domain a live prompt belongs to, so the quality-loss
bound can keep its promise per class instead of over the pooled calibration set.

A class is a source of labelled prompts the head was trained on (a file in
`tierline router train --data`, e.g. `gsm8k`, `mmlu`). Training stores, per class, the
normalised mean of its training rows' embeddings (the centroid) and a similarity cutoff:
a low quantile (`CUTOFF_QUANTILE`) of those rows' cosine similarity to their own centroid.
A live prompt belongs to the class whose centroid is nearest by cosine similarity; when
that similarity is under the class's cutoff, the prompt is unlike every class the head
knows, and it is `OUT_OF_DOMAIN` (the bound then uses the strictest class threshold of
each tier pair, `router.learned.LossBound.thresholds_for`).

The calibration rows are classified by the same function (not by the file they came from),
so a class's bound is calibrated on exactly the kind of prompts it will be applied to:
a GSM8K prompt that reads like MMLU is routed, and calibrated, as MMLU.

Classifying costs one matrix-vector product of the prompt's embedding (already computed
for the head) against a few centroids. Pure numpy; no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

OUT_OF_DOMAIN = "out-of-domain"
"""The class of a prompt unlike every class's training rows (not a valid class name)."""
CUTOFF_QUANTILE = 0.02
"""A class's similarity cutoff: this quantile of its training rows' similarity to their
own centroid (so about 2% of a class's own prompts read as out of domain)."""


@dataclass(frozen=True)
class TrafficClasses:
    """The classes a head knows, as stored in its artifact."""

    names: tuple[str, ...]
    centroids: np.ndarray
    """(classes, embedding dim), each row of unit length."""
    cutoffs: np.ndarray
    """(classes,) cosine similarity to its class's centroid below which a prompt nearest
    that class is out of domain."""

    def __post_init__(self) -> None:
        k = len(self.names)
        if k == 0:
            raise ValueError("traffic classes need at least one class")
        if len(set(self.names)) != k or OUT_OF_DOMAIN in self.names:
            raise ValueError(f"class names must be distinct and not {OUT_OF_DOMAIN!r}")
        if self.centroids.ndim != 2 or self.centroids.shape[0] != k:
            raise ValueError("centroids must be (classes, dim)")
        if self.cutoffs.shape != (k,):
            raise ValueError("cutoffs must be one per class")


def _unit(rows: np.ndarray) -> np.ndarray:
    r = np.atleast_2d(np.asarray(rows, dtype=np.float64))
    norms = np.linalg.norm(r, axis=1, keepdims=True)
    return np.asarray(r / np.where(norms > 0.0, norms, 1.0), dtype=np.float64)


def fit_classes(
    embeddings: np.ndarray, groups: Sequence[str], quantile: float = CUTOFF_QUANTILE
) -> TrafficClasses:
    """Centroids and cutoffs from training rows (`embeddings`: rows x dim) and each row's
    class; classes in sorted order."""
    e = _unit(embeddings)
    g = np.asarray(groups)
    if len(g) != len(e):
        raise ValueError("one class per embedding row")
    if not 0.0 <= quantile < 1.0:
        raise ValueError("quantile must be in [0, 1)")
    names = tuple(sorted(set(groups)))
    centroids = _unit(np.stack([e[g == n].mean(axis=0) for n in names]))
    cutoffs = np.asarray(
        [float(np.quantile(e[g == n] @ centroids[i], quantile)) for i, n in enumerate(names)]
    )
    return TrafficClasses(names, centroids, cutoffs)


def similarities(classes: TrafficClasses, embeddings: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row to each class's centroid: (rows, classes)."""
    return np.asarray(_unit(embeddings) @ classes.centroids.T, dtype=np.float64)


def class_indices(classes: TrafficClasses, embeddings: np.ndarray) -> np.ndarray:
    """`classify` for many rows at once, as indices into `classes.names` (-1: out of
    domain)."""
    sims = similarities(classes, embeddings)
    best = np.argmax(sims, axis=1)
    inside = sims[np.arange(len(sims)), best] >= classes.cutoffs[best]
    return np.where(inside, best, -1).astype(np.int64)


def classify_rows(classes: TrafficClasses, embeddings: np.ndarray) -> list[str]:
    """`classify` for many rows at once."""
    return [
        classes.names[i] if i >= 0 else OUT_OF_DOMAIN for i in class_indices(classes, embeddings)
    ]


def classify(classes: TrafficClasses, embedding: np.ndarray) -> str:
    """The class of one prompt from its embedding: the nearest centroid's, or
    `OUT_OF_DOMAIN` when even the nearest is under that class's cutoff."""
    e = np.asarray(embedding, dtype=np.float64).reshape(-1)
    norm = float(np.linalg.norm(e))
    sims = classes.centroids @ (e / norm if norm > 0.0 else e)
    best = int(np.argmax(sims))
    return classes.names[best] if sims[best] >= classes.cutoffs[best] else OUT_OF_DOMAIN
