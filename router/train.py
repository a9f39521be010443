"""Training the scorer's head on labelled prompts (offline: CLI and benchmark only).

Heads are fit with torch on CPU (full-batch for the linear kinds, mini-batch for the MLP)
and exported to plain numpy `Head`s. `mf` is a matrix factorisation (tier vectors times a
low-rank projection of the prompt features); with fixed tiers it collapses to a linear
head, so it is exported as one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from tierline.router.classes import class_indices, fit_classes
from tierline.router.head import Head

OUTPUTS = ("weak", "strong")
QUANTILE_POINTS = 101


@dataclass(frozen=True)
class HeadParams:
    kind: str = "mlp"
    hidden: int = 64
    rank: int = 16
    weight_decay: float = 1e-3
    epochs: int = 40
    """MLP: passes over the data in mini-batches of 256."""
    linear_steps: int = 400
    """lr/mf: full-batch steps."""
    lr: float = 3e-3
    """MLP learning rate."""
    linear_lr: float = 1e-2
    """lr/mf learning rate."""
    dropout: float = 0.2
    balance_sources: bool = True
    """Weight each source file equally, so the big set does not drown the small one."""
    ensemble: int = 1
    """MLP: members trained from different seeds, their logits averaged. The average of
    K one-hidden-layer MLPs is itself one MLP with K x hidden units, so it ships as one."""


def sample_weights(groups: Sequence[str], balance: bool) -> np.ndarray:
    if not balance:
        return np.ones(len(groups))
    names, inverse, counts = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    w = (len(groups) / (len(names) * counts))[inverse]
    return np.asarray(w, dtype=np.float64)


def fit_head(
    x: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray,
    params: HeadParams,
    seed: int = 0,
) -> Head:
    """Fit one head: x (rows, features), y (rows, 2) targets in [0, 1]."""
    if params.kind != "mlp" or params.ensemble <= 1:
        return _fit_one(x, y, weights, params, seed)
    members = [_fit_one(x, y, weights, params, seed + 1000 * k) for k in range(params.ensemble)]
    k = len(members)
    return Head(
        "mlp",
        OUTPUTS,
        np.vstack([m.w_out for m in members]) / k,
        np.mean([m.b_out for m in members], axis=0),
        w_hidden=np.hstack([m.w_hidden for m in members if m.w_hidden is not None]),
        b_hidden=np.concatenate([m.b_hidden for m in members if m.b_hidden is not None]),
    )


def _fit_one(
    x: np.ndarray, y: np.ndarray, weights: np.ndarray, params: HeadParams, seed: int
) -> Head:
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(1)  # small matrices: threads only add contention
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.float32)
    wt = torch.as_tensor(weights, dtype=torch.float32)[:, None]
    d, k = x.shape[1], y.shape[1]
    layers: Any
    if params.kind == "lr":
        layers = torch.nn.Linear(d, k)
    elif params.kind == "mf":
        layers = torch.nn.Sequential(
            torch.nn.Linear(d, params.rank, bias=False), torch.nn.Linear(params.rank, k)
        )
    elif params.kind == "mlp":
        layers = torch.nn.Sequential(
            torch.nn.Linear(d, params.hidden),
            torch.nn.ReLU(),
            torch.nn.Dropout(params.dropout),
            torch.nn.Linear(params.hidden, k),
        )
    else:
        raise ValueError(f"unknown head kind {params.kind!r} (lr, mf, mlp)")
    rate = params.lr if params.kind == "mlp" else params.linear_lr
    opt = torch.optim.AdamW(layers.parameters(), lr=rate, weight_decay=params.weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="none")
    n = len(xt)
    batch = 256 if params.kind == "mlp" else n
    epochs = params.epochs if params.kind == "mlp" else params.linear_steps
    gen = torch.Generator().manual_seed(seed)
    layers.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch):
            idx = perm[start : start + batch]
            opt.zero_grad()
            loss = (loss_fn(layers(xt[idx]), yt[idx]) * wt[idx]).mean()
            loss.backward()
            opt.step()
    layers.eval()
    with torch.no_grad():
        if params.kind == "lr":
            w_out = layers.weight.T.numpy().copy()
            b_out = layers.bias.numpy().copy()
            return Head("lr", OUTPUTS, w_out, b_out)
        if params.kind == "mf":
            proj, tiers = layers[0].weight, layers[1]
            w_out = (tiers.weight @ proj).T.numpy().copy()
            return Head("mf", OUTPUTS, w_out, tiers.bias.numpy().copy())
        first, last = layers[0], layers[3]
        return Head(
            "mlp",
            OUTPUTS,
            last.weight.T.numpy().copy(),
            last.bias.numpy().copy(),
            w_hidden=first.weight.T.numpy().copy(),
            b_hidden=first.bias.numpy().copy(),
        )


def gap_scores(head: Head, x: np.ndarray) -> np.ndarray:
    """Routing score (strong - weak predicted quality) per feature row."""
    p = head.predict(x)
    return p[:, head.outputs.index("strong")] - p[:, head.outputs.index("weak")]


def fold_ids(groups: Sequence[str], folds: int, seed: int) -> np.ndarray:
    """Stratified-by-source fold number for every row."""
    rng = np.random.default_rng(seed)
    ids = np.zeros(len(groups), dtype=np.int64)
    g = np.asarray(groups)
    for name in np.unique(g):
        rows = np.nonzero(g == name)[0]
        rng.shuffle(rows)
        ids[rows] = np.arange(len(rows)) % folds
    return ids


def out_of_fold(
    x: np.ndarray,
    y: np.ndarray,
    groups: Sequence[str],
    params: HeadParams,
    folds: int = 5,
    seed: int = 0,
) -> np.ndarray:
    """Out-of-fold routing scores: each row scored by a head that never saw it."""
    ids = fold_ids(groups, folds, seed)
    scores = np.zeros(len(x))
    weights = sample_weights(groups, params.balance_sources)
    for f in range(folds):
        train, test = ids != f, ids == f
        head = fit_head(x[train], y[train], weights[train], params, seed=seed + f)
        scores[test] = gap_scores(head, x[test])
    return scores


def holdout_mask(groups: Sequence[str], share: float, seed: int) -> np.ndarray:
    """Rows held out of training, `share` of each source (at least one row of a source
    with two or more), chosen at random."""
    rng = np.random.default_rng(seed + 7919)
    g = np.asarray(groups)
    held = np.zeros(len(g), dtype=bool)
    if share <= 0.0:
        return held
    for name in np.unique(g):
        rows = np.nonzero(g == name)[0]
        k = min(len(rows) - 1, max(1, round(share * len(rows)))) if len(rows) > 1 else 0
        held[rng.permutation(rows)[:k]] = True
    return held


def train_artifact(
    x: np.ndarray,
    y: np.ndarray,
    groups: Sequence[str],
    params: HeadParams,
    seed: int = 0,
    calibration_folds: int = 5,
    calibration_holdout: float = 0.0,
) -> Head:
    """The shipped head: fit on everything but a held-out share of each source
    (`calibration_holdout`); its calibration quantiles come from out-of-fold scores, so
    they describe prompts the head has not seen. The held-out rows' predictions and labels
    go into the artifact for the quality-loss bound (`router/bound.py`). Each source
    becomes a traffic class (`router/classes.py`) whose centroid and cutoff come from its
    training rows' embeddings (`x` without its last column, the length feature
    `Head.features` appends); each held-out row's class is the classifier's verdict on it
    (as a live prompt's will be), -1 when out of domain."""
    held = holdout_mask(groups, calibration_holdout, seed)
    fit = ~held
    fit_groups = [g for g, keep in zip(groups, fit, strict=True) if keep]
    oof = out_of_fold(x[fit], y[fit], fit_groups, params, folds=calibration_folds, seed=seed)
    head = fit_head(
        x[fit], y[fit], sample_weights(fit_groups, params.balance_sources), params, seed=seed
    )
    quantiles = np.quantile(oof, np.linspace(0.0, 1.0, QUANTILE_POINTS))
    classes = fit_classes(x[fit][:, :-1], fit_groups)
    row_classes = class_indices(classes, x[held][:, :-1]) if held.any() else np.zeros(0, np.int64)
    meta = {
        "params": {k: v for k, v in params.__dict__.items()},
        "rows": int(fit.sum()),
        "calibration_rows": int(held.sum()),
        "sources": sorted(set(groups)),
    }
    return replace(
        head,
        calibration_quantiles=quantiles,
        calibration_probs=head.predict(x[held]) if held.any() else np.zeros((0, y.shape[1])),
        calibration_labels=y[held] if held.any() else np.zeros((0, y.shape[1])),
        classes=classes,
        calibration_classes=row_classes,
        meta=meta,
    )
