"""The learned scorer's head: embedding (+ prompt length) -> P(good enough) per output.

A head is plain numpy arrays, stored as one `.npz` (loaded with `allow_pickle=False`)
whose metadata is a JSON string. Two kinds: `lr` (one logistic regression per output)
and `mlp` (one hidden ReLU layer shared by the outputs). Outputs are named after the
labelled tiers they were trained on (`weak`, `strong`); the spec maps its tiers onto them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ARTIFACT_VERSION = 1


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
    meta: dict[str, Any] = field(default_factory=dict)

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

    def quality(self, embedding: np.ndarray, words: int) -> dict[str, float]:
        p = self.predict(self.features(embedding, words))[0]
        return {name: float(p[i]) for i, name in enumerate(self.outputs)}

    # -- storage ---------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        meta = {
            "version": ARTIFACT_VERSION,
            "kind": self.kind,
            "outputs": list(self.outputs),
            "embedder": self.embedder,
            **self.meta,
        }
        arrays: dict[str, np.ndarray] = {
            "w_out": self.w_out.astype(np.float32),
            "b_out": self.b_out.astype(np.float32),
            "calibration_quantiles": self.calibration_quantiles.astype(np.float64),
            "meta_json": np.array(json.dumps(meta, sort_keys=True)),
        }
        if len(self.calibration_probs):
            arrays["calibration_probs"] = self.calibration_probs.astype(np.float32)
            arrays["calibration_labels"] = self.calibration_labels.astype(np.float32)
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
            if meta.get("version") != ARTIFACT_VERSION:
                raise ValueError(f"{path}: artifact version {meta.get('version')} is not supported")
            hidden = "w_hidden" in z.files
            rest = {
                k: v for k, v in meta.items() if k not in {"version", "kind", "outputs", "embedder"}
            }
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
                meta=rest,
            )


def _rows(z: Any, name: str, outputs: int) -> np.ndarray:
    if name not in z.files:
        return np.zeros((0, outputs))
    return np.asarray(z[name], dtype=np.float64)
