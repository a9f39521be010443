"""Router benchmark, the quality-loss bound and leave-one-dataset-out figures.

    .venv/bin/python -m bench.router_bound_bench [--splits 20] [--out bench/results/router.json]

Adds two sections to bench/results/router.json, and draws the loss-vs-alpha plot into
bench/results/router_bound.png (keeping the others; `bench.router_bench`
calls the same functions, so `make bench-router` writes them too):

- `leave_one_dataset_out`: for every labelled set, a head (the shipped kind) trained on
  all the others, scored on the held-out set: APGR/CPT next to random and the prompt-length
  heuristic. Also the bound out of domain: calibrated on held-out rows of the other sets,
  applied to this one (a bound calibrated in one domain need not hold in another), and
  the share of the held-out set's prompts the traffic classifier (`router/classes.py`,
  centroids of the other sets) calls out of domain.
- `bound`: `--splits` random splits of every set into train (50%), calibration (25%) and
  test (25%); a head trained on the train parts of all sets; per set and per alpha, the
  threshold calibrated on that set's calibration part (`per_set`), on all sets'
  calibration parts pooled (`pooled`, what the gateway did before issue 28), or per
  traffic class on all sets' calibration parts pooled (`per_class`, what a head with
  classes does: the classes' centroids come from the train parts' embeddings, every
  calibration and test prompt is classified by the nearest centroid, each class's
  threshold is calibrated on the calibration prompts classified into it, and a test
  prompt uses its class's threshold, the strictest one when it is out of domain),
  then applied to the set's test part: realised loss, cheap share (the cost saved:
  prompts kept off the strong tier), and in how many splits the realised loss was
  <= alpha. `per_class_by_source`: the same but each class calibrated on its own set's
  calibration rows (whatever the classifier says of them). `per_traffic_class`: the
  `per_class` routing reported by the class the test prompts were classified into (the
  unit the per-class promise is about) instead of by set. `realised_loss_all_splits`:
  the loss among all splits' cheap prompts together (a split that keeps 3 prompts cheap
  reads 0.33 when one of them is lost). `classification`: per set, the share of its test
  prompts classified into their own set's class and out of domain (mean over splits).
  The bound is on the expected loss of future prompts like the calibration set; the
  realised loss of a finite test split adds that split's own sampling noise.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from tierline.router.bound import calibrate, evaluate, prompt_losses, realised
from tierline.router.classes import OUT_OF_DOMAIN, classify_rows, fit_classes
from tierline.router.embedders import open_embedder
from tierline.router.evaluate import curve, length_scores, random_summary, summary
from tierline.router.head import Head
from tierline.router.scorer import SHIPPED_ARTIFACT
from tierline.router.train import HeadParams, fit_head, gap_scores, sample_weights

from bench.router_bench import RESULTS, Loaded, features, load

ALPHAS = (0.05, 0.1, 0.15, 0.2, 0.3)
CONFIDENCE = 0.9
MODES = ("per_set", "pooled", "per_class", "per_class_by_source", "per_traffic_class")


def _y(loaded: Loaded) -> np.ndarray:
    data = loaded[0]
    return np.stack([data.weak, data.strong], axis=1)


def leave_one_dataset_out(loaded: Loaded, x: np.ndarray, kind: str) -> dict:
    data, _, groups = loaded
    y, g = _y(loaded), np.asarray(groups)
    losses = prompt_losses(data.weak, data.strong)
    out: dict[str, dict] = {}
    for held in sorted(set(groups)):
        train, test = g != held, g == held
        weights = sample_weights(list(g[train]), True)
        head = fit_head(x[train], y[train], weights, HeadParams(kind=kind))
        scores = gap_scores(head, x[test])
        w, s = data.weak[test], data.strong[test]
        prompts = tuple(p for p, keep in zip(data.prompts, test, strict=True) if keep)
        # The bound out of domain: a head on 70% of the other sets, calibrated on the
        # remaining 30% of them, applied to the held-out set.
        rng = np.random.default_rng(11)
        others = np.nonzero(train)[0]
        cal = rng.permutation(others)[: int(0.3 * len(others))]
        fit = np.setdiff1d(others, cal)
        head_b = fit_head(x[fit], y[fit], sample_weights(list(g[fit]), True), HeadParams(kind=kind))
        cal_pair = (gap_scores(head_b, x[cal]), losses[cal])
        classes = fit_classes(x[fit][:, :-1], list(g[fit]))
        ood = np.asarray(classify_rows(classes, x[test][:, :-1])) == OUT_OF_DOMAIN
        test_pair = (gap_scores(head_b, x[test]), losses[test])
        out[held] = {
            "n": int(test.sum()),
            "trained_on": sorted(set(g[train])),
            "router": summary(curve(scores, w, s)),
            "random": random_summary(w, s),
            "length": summary(curve(length_scores(prompts), w, s)),
            "bound_out_of_domain": [
                _short(evaluate(cal_pair, test_pair, a, 1 - CONFIDENCE)) for a in ALPHAS
            ],
            "classified_out_of_domain": round(float(ood.mean()), 4),
        }
        print("lodo", held, json.dumps(out[held]["router"]))
    return out


def _short(r: dict) -> dict:
    keys = ("max_quality_loss", "realised_loss", "cheap_share", "calibration_cheap_share")
    return {k: r[k] for k in keys}


def _split(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """0 train, 1 calibration, 2 test: half, a quarter and a quarter of every set."""
    part = np.zeros(len(groups), dtype=np.int64)
    for name in np.unique(groups):
        rows = rng.permutation(np.nonzero(groups == name)[0])
        n = len(rows)
        part[rows[n // 2 : n // 2 + n // 4]] = 1
        part[rows[n // 2 + n // 4 :]] = 2
    return part


def bound_splits(loaded: Loaded, x: np.ndarray, kind: str, splits: int) -> dict:
    data, _, groups = loaded
    y, g = _y(loaded), np.asarray(groups)
    losses = prompt_losses(data.weak, data.strong)
    names = sorted(set(groups))
    runs: dict[str, dict[str, dict[float, list[dict]]]] = {mode: {} for mode in MODES}
    for mode in ("per_set", "pooled"):
        runs[mode] = {n: {a: [] for a in ALPHAS} for n in names}
    own: dict[str, list[float]] = {n: [] for n in names}
    ood: dict[str, list[float]] = {n: [] for n in names}
    t0 = time.perf_counter()
    for split in range(splits):
        part = _split(g, np.random.default_rng(1000 + split))
        train = part == 0
        head = fit_head(
            x[train], y[train], sample_weights(list(g[train]), True), HeadParams(kind=kind)
        )
        scores = np.zeros(len(x))
        scores[~train] = gap_scores(head, x[~train])
        pooled = (scores[part == 1], losses[part == 1])
        for name in names:
            cal, test = (part == 1) & (g == name), (part == 2) & (g == name)
            for a in ALPHAS:
                for mode, c in (("per_set", (scores[cal], losses[cal])), ("pooled", pooled)):
                    r = evaluate(c, (scores[test], losses[test]), a, 1 - CONFIDENCE)
                    runs[mode][name][a].append(r)
        assigned = _classified(x, g, train)
        for name in names:
            test = (part == 2) & (g == name)
            own[name].append(float(np.mean(assigned[test] == name)))
            ood[name].append(float(np.mean(assigned[test] == OUT_OF_DOMAIN)))
        for a in ALPHAS:
            for mode, by, report in (
                ("per_class", assigned, g),
                ("per_class_by_source", g, g),
                ("per_traffic_class", assigned, assigned),
            ):
                for name, r in _per_class(scores, losses, part, by, assigned, a, report).items():
                    runs[mode].setdefault(name, {b: [] for b in ALPHAS})[a].append(r)
        print(f"bound split {split + 1}/{splits} ({time.perf_counter() - t0:.0f} s)")
    out: dict[str, Any] = {"splits": splits, "confidence": CONFIDENCE}
    out["classification"] = {
        n: {
            "own_class_share": round(float(np.mean(own[n])), 4),
            "out_of_domain_share": round(float(np.mean(ood[n])), 4),
        }
        for n in names
    }
    for mode, per in runs.items():
        out[mode] = {}
        for name, by_alpha in per.items():
            out[mode][name] = []
            for a, rs in by_alpha.items():
                loss = np.asarray([r["realised_loss"] for r in rs])
                share = np.asarray([r["cheap_share"] for r in rs])
                kept = np.asarray([r["cheap_rows"] for r in rs])
                some = share > 0  # splits where the bound kept any prompt cheap
                out[mode][name].append(
                    {
                        "max_quality_loss": a,
                        "held_share": round(float(np.mean(loss <= a)), 3),
                        "cheap_share_mean": round(float(share.mean()), 4),
                        "splits_with_cheap": int(some.sum()),
                        "realised_loss_mean_when_cheap": (
                            round(float(loss[some].mean()), 4) if some.any() else None
                        ),
                        "realised_loss_max": round(float(loss.max()), 4),
                        # every split's cheap prompts together: the expected loss, less
                        # the noise of a split's few cheap prompts
                        "realised_loss_all_splits": (
                            round(float((loss * kept).sum() / kept.sum()), 4)
                            if kept.sum()
                            else None
                        ),
                        "test_rows": round(float(np.mean([r["test_rows"] for r in rs]))),
                    }
                )
    return out


def _classified(x: np.ndarray, g: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Every row's traffic class by the centroids of the train part (`x` less its length
    column is the embedding)."""
    classes = fit_classes(x[train][:, :-1], list(g[train]))
    return np.asarray(classify_rows(classes, x[:, :-1]), dtype=object)


def _per_class(
    scores: np.ndarray,
    losses: np.ndarray,
    part: np.ndarray,
    calibrate_by: np.ndarray,
    assigned: np.ndarray,
    alpha: float,
    report_by: np.ndarray,
) -> dict[str, dict]:
    """Per-class thresholds from the pooled calibration part (each row counted for its
    class in `calibrate_by`), applied to each test prompt by its classified class
    (`assigned`; out of domain: the strictest class threshold): for each value of
    `report_by` (a set, or the classified class), the figures `evaluate` gives."""
    cal = part == 1
    per = {
        n: calibrate(
            scores[cal & (calibrate_by == n)],
            losses[cal & (calibrate_by == n)],
            alpha,
            1 - CONFIDENCE,
        )
        for n in sorted(set(assigned.tolist()) - {OUT_OF_DOMAIN})
    }
    strict = min(b.threshold for b in per.values())
    limit = np.asarray([per[c].threshold if c in per else strict for c in assigned.tolist()])
    out = {}
    for name in sorted(set(report_by.tolist())):
        test = (part == 2) & (report_by == name)
        loss, share, cheap = realised(scores[test], losses[test], limit[test])
        out[name] = {
            "realised_loss": round(loss, 4),
            "cheap_share": round(share, 4),
            "cheap_rows": int(cheap.sum()),
            "test_rows": len(cheap),
        }
    return out


def plot(bound: dict, path: Path) -> None:
    """Loss against alpha (left) and the cheap share bought with it (right), per set, for
    the per-set, pooled and per-class calibrations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    top = max(ALPHAS)
    left.plot([0, top], [0, top], color="grey", linestyle=":", label="loss = alpha")
    for mode, style in (("per_set", "-"), ("pooled", "--"), ("per_class", "-.")):
        for name, rows in bound[mode].items():
            a = [r["max_quality_loss"] for r in rows]
            # all splits' cheap prompts together: a split keeping 2 prompts cheap would
            # otherwise draw a loss of 0.5
            loss = [r["realised_loss_all_splits"] or float("nan") for r in rows]
            share = [r["cheap_share_mean"] for r in rows]
            label = f"{name} ({mode.replace('_', ' ')})"
            left.plot(a, loss, style, marker="o", label=label)
            right.plot(a, share, style, marker="o", label=label)
    left.set(xlabel="max_quality_loss (alpha)", ylabel="realised loss, all splits' cheap prompts")
    right.set(xlabel="max_quality_loss (alpha)", ylabel="cheap share (mean of splits)")
    left.legend(fontsize=7)
    fig.suptitle(
        f"quality-loss bound at confidence {bound['confidence']}, "
        f"{bound['splits']} calibration/test splits"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(loaded: Loaded, x: np.ndarray, kind: str, splits: int) -> dict:
    return {
        "leave_one_dataset_out": leave_one_dataset_out(loaded, x, kind),
        "bound": bound_splits(loaded, x, kind, splits),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--splits", type=int, default=20)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    shipped = Head.load(SHIPPED_ARTIFACT)
    loaded = load(open_embedder(shipped.embedder, threads=2))
    x = features(shipped, loaded[1], loaded[0].prompts)
    result = json.loads(args.out.read_text()) if args.out.exists() else {}
    result.update(run(loaded, x, shipped.kind, args.splits))
    plot(result["bound"], args.out.with_name("router_bound.png"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("leave_one_dataset_out", "bound")}, indent=2))


if __name__ == "__main__":
    main()
