"""The learned scorer's head: embedding (+ prompt length) -> P(good enough) per output.

A head is plain numpy arrays, stored as one `.npz` (loaded with `allow_pickle=False`)
whose metadata is a JSON string. Two kinds: `lr` (one logistic regression per output)
and `mlp` (one hidden ReLU layer shared by the outputs). Outputs are named after the
labelled tiers they were trained on (`weak`, `strong`); the spec maps its tiers onto them.

Artifact versions: 1 has no traffic classes; 2 adds them (`router/classes.py`: a centroid
and a similarity cutoff per class, and the class of every held-out calibration row), for
the per-class quality-loss bound. A head without classes is still written as version 1,
so older readers load it; both versions load here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tierline.router.classes import TrafficClasses, classify

ARTIFACT_VERSION = 2
"""The version written for a head with traffic classes (one without: `PLAIN_VERSION`)."""
PLAIN_VERSION = 1
SUPPORTED_VERSIONS = (PLAIN_VERSION, ARTIFACT_VERSION)
_META_KEYS = {"version", "kind", "outputs", "embedder", "classes", "class_cutoffs"}


def length_feature(words: int) -> float:
    """Prompt length as the head sees it: log words, roughly unit scale."""
    return math.log1p(max(words, 0)) / 5.0


def prompt_words(text: str) -> int:
    return len(text.split())


@dataclass(frozen=True)
class Head:
    kind: str
    outputs: tuple[str, ...]
    w_out: np.ndarray
    """(hidden or input dim, outputs)"""
    b_out: np.ndarray
    w_hidden: np.ndarray | None = None
    b_hidden: np.ndarray | None = None
    embedder: str = "all-MiniLM-L6-v2"
    calibration_quantiles: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """Quantiles 0..1 (101 points) of the routing score on held-out calibration prompts."""
    calibration_probs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    """Held-out prompts this head never trained on: its predictions (rows, outputs)..."""
    calibration_labels: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    """...and their labels on a 0..1 scale (rows, outputs), for the quality-loss bound
    (`router/bound.py`). Empty in heads trained without a held-out part."""
    classes: TrafficClasses | None = None
    """The traffic classes (sources) the head was trained on; None in older heads."""
    calibration_classes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """Each calibration row's traffic class as the classifier saw it (not its source
    file), an index into `classes.names`; -1: out of domain. Empty without classes."""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.classes is not None:
            c = np.asarray(self.calibration_classes)
            if len(c) != len(self.calibration_probs):
                raise ValueError("a head with classes needs a class for every calibration row")
            if len(c) and (c.min() < -1 or c.max() >= len(self.classes.names)):
                raise ValueError("calibration_classes must index the class names (or be -1)")
            if self.classes.centroids.shape[1] != self.input_dim - 1:
                raise ValueError("class centroids must be in the embedding's dimension")

    @property
    def input_dim(self) -> int:
        w = self.w_hidden if self.w_hidden is not None else self.w_out
        return int(w.shape[0])

    def features(self, embedding: np.ndarray, words: int | np.ndarray) -> np.ndarray:
        emb = np.atleast_2d(np.asarray(embedding, dtype=np.float32))
        lengths = np.atleast_1d(np.asarray(words, dtype=np.float64))
        extra = (np.log1p(np.maximum(lengths, 0)) / 5.0).astype(np.float32)[:, None]
        return np.concatenate([emb, extra], axis=1)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """P(good enough) per output for feature rows x: shape (rows, outputs)."""
        h = np.asarray(x, dtype=np.float32)
        if self.w_hidden is not None and self.b_hidden is not None:
            h = np.maximum(h @ self.w_hidden + self.b_hidden, 0.0)
        z = np.clip(h @ self.w_out + self.b_out, -30.0, 30.0)
        return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)

    def traffic_class(self, embedding: np.ndarray) -> str | None:
        """The prompt's traffic class (`router.classes.classify`); None for a head
        without classes."""
        return None if self.classes is None else classify(self.classes, embedding)

    def quality(self, embedding: np.ndarray, words: int) -> dict[str, float]:
        p = self.predict(self.features(embedding, words))[0]
        return {name: float(p[i]) for i, name in enumerate(self.outputs)}

    # -- storage ---------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        meta: dict[str, Any] = {
            "version": PLAIN_VERSION if self.classes is None else ARTIFACT_VERSION,
            "kind": self.kind,
            "outputs": list(self.outputs),
            "embedder": self.embedder,
            **{k: v for k, v in self.meta.items() if k not in _META_KEYS},
        }
        if self.classes is not None:
            meta["classes"] = list(self.classes.names)
            meta["class_cutoffs"] = [float(c) for c in self.classes.cutoffs]
        arrays: dict[str, np.ndarray] = {
            "w_out": self.w_out.astype(np.float32),
            "b_out": self.b_out.astype(np.float32),
            "calibration_quantiles": self.calibration_quantiles.astype(np.float64),
            "meta_json": np.array(json.dumps(meta, sort_keys=True)),
        }
        if len(self.calibration_probs):
            arrays["calibration_probs"] = self.calibration_probs.astype(np.float32)
            arrays["calibration_labels"] = self.calibration_labels.astype(np.float32)
        if self.classes is not None:
            arrays["class_centroids"] = self.classes.centroids.astype(np.float32)
            arrays["calibration_classes"] = np.asarray(self.calibration_classes, dtype=np.int32)
        if self.w_hidden is not None and self.b_hidden is not None:
            arrays["w_hidden"] = self.w_hidden.astype(np.float32)
            arrays["b_hidden"] = self.b_hidden.astype(np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            np.savez_compressed(f, **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: Path) -> Head:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta_json"]))
            if meta.get("version") not in SUPPORTED_VERSIONS:
                raise ValueError(f"{path}: artifact version {meta.get('version')} is not supported")
            hidden = "w_hidden" in z.files
            rest = {k: v for k, v in meta.items() if k not in _META_KEYS}
            classes, row_classes = _classes(z, meta)
            return cls(
                kind=str(meta["kind"]),
                outputs=tuple(meta["outputs"]),
                w_out=np.asarray(z["w_out"]),
                b_out=np.asarray(z["b_out"]),
                w_hidden=np.asarray(z["w_hidden"]) if hidden else None,
                b_hidden=np.asarray(z["b_hidden"]) if hidden else None,
                embedder=str(meta["embedder"]),
                calibration_quantiles=np.asarray(z["calibration_quantiles"]),
                calibration_probs=_rows(z, "calibration_probs", len(meta["outputs"])),
                calibration_labels=_rows(z, "calibration_labels", len(meta["outputs"])),
                classes=classes,
                calibration_classes=row_classes,
                meta=rest,
            )


def _classes(z: Any, meta: dict[str, Any]) -> tuple[TrafficClasses | None, np.ndarray]:
    """The traffic classes of a version-2 artifact (None before)."""
    if meta["version"] < ARTIFACT_VERSION:
        return None, np.zeros(0, dtype=np.int64)
    classes = TrafficClasses(
        tuple(meta["classes"]),
        np.asarray(z["class_centroids"], dtype=np.float64),
        np.asarray(meta["class_cutoffs"], dtype=np.float64),
    )
    return classes, np.asarray(z["calibration_classes"], dtype=np.int64)


def _rows(z: Any, name: str, outputs: int) -> np.ndarray:
    if name not in z.files:
        return np.zeros((0, outputs))
    return np.asarray(z[name], dtype=np.float64)
