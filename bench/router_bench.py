"""Router benchmark: cross-validated routing quality, calibration replay, decision latency.

    .venv/bin/python -m bench.router_bench [--kinds lr,mf,mlp] [--skip-latency]

Writes bench/results/router.json and prints it. Embeddings of the training prompts are
computed once per embedder (the shipped head's: MiniLM distilled into a static table, and
full MiniLM for comparison) and cached under .cache/.

- quality: 5-fold cross-validation with the shipped head's embedder, folds stratified by
  source file, the head trained on the other folds of both files; APGR/CPT per file on
  out-of-fold scores, next to random, the prompt-length heuristic and the oracle. Also a
  cross-benchmark check: trained on one file only, scored on the other (prompts from a
  benchmark it never saw). `fold_seeds`: the same with other fold assignments (how much
  of a figure is the luck of one split). `embedders`: the 5-fold figures for each
  embedder and head kind, which is how the shipped pair was chosen.
- calibration: a shuffled stream of every prompt (scored out-of-fold) replayed through
  `decide_learned`/`recalibrate`; realised share above the cheapest tier vs the target.
- leave_one_dataset_out, bound: see `bench.router_bound_bench` (the quality-loss bound's
  realised loss against alpha over random calibration/test splits, and every set held out).
- latency: the whole auto decision (embedding with the shipped head's embedder, head, tier
  mapping, policy, re-calibration) for 50-, 500- and 2,000-token prompts, wall clock and
  process CPU time (`--latency-only` measures just this, into `latency`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from tierline.cluster.embedding import MINILM_NAME, Embedder
from tierline.router.data import DEFAULT_TRAIN_FILES, LabelledSet, load_files
from tierline.router.embedders import open_embedder
from tierline.router.embedding import cached_embeddings
from tierline.router.evaluate import (
    curve,
    length_scores,
    oracle_scores,
    random_summary,
    summary,
)
from tierline.router.head import Head
from tierline.router.learned import CalibrationState, LearnedPolicy, decide_learned, recalibrate
from tierline.router.scorer import (
    CALIBRATED_ARTIFACT,
    SHIPPED_ARTIFACT,
    head_loss_bound,
    output_weights,
    tier_quality,
)
from tierline.router.static_embedding import STATIC_NAME, minilm_path
from tierline.router.train import HeadParams, fit_head, gap_scores, out_of_fold, sample_weights
from tierline.router.types import RequestFeatures, TierState

ROOT = Path(__file__).resolve().parents[1]

CACHE = ROOT / ".cache"
RESULTS = ROOT / "bench" / "results" / "router.json"


Loaded = tuple[LabelledSet, np.ndarray, list[str]]
"""The labelled prompts, their embeddings and each prompt's file (the CV's strata)."""


def load(embedder: Embedder) -> Loaded:
    sets, embs, groups = [], [], []
    for path in DEFAULT_TRAIN_FILES:
        data = load_files([path])
        sets.append(data)
        embs.append(cached_embeddings(embedder, data.prompts, CACHE))
        groups += [path.name.split(".")[0]] * len(data)
    allset = LabelledSet(
        tuple(p for s in sets for p in s.prompts),
        np.concatenate([s.weak for s in sets]),
        np.concatenate([s.strong for s in sets]),
        tuple(x for s in sets for x in s.sources),
    )
    return allset, np.concatenate(embs), groups


def features(head_like: Head, emb: np.ndarray, prompts: tuple[str, ...]) -> np.ndarray:
    return head_like.features(emb, np.asarray([len(p.split()) for p in prompts]))


def per_file(scores: np.ndarray, data: LabelledSet, groups: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    g = np.asarray(groups)
    for name in sorted(set(groups)):
        m = g == name
        w, s = data.weak[m], data.strong[m]
        prompts = tuple(p for p, keep in zip(data.prompts, m, strict=True) if keep)
        out[name] = {
            "n": int(m.sum()),
            "router": summary(curve(scores[m], w, s)),
            "random": random_summary(w, s),
            "length": summary(curve(length_scores(prompts), w, s)),
            "oracle": summary(curve(oracle_scores(w, s), w, s)),
        }
    return out


def quality(
    data: LabelledSet, x: np.ndarray, groups: list[str], kinds: list[str], oofs: dict
) -> dict:
    y = np.stack([data.weak, data.strong], axis=1)
    results: dict[str, dict] = {}
    for kind in kinds:
        params = HeadParams(kind=kind)
        t0 = time.perf_counter()
        oof = out_of_fold(x, y, groups, params, seed=0)
        oofs[kind] = oof
        results[kind] = per_file(oof, data, groups)
        results[kind]["train_s"] = round(time.perf_counter() - t0, 1)
        print(
            kind, json.dumps({k: v["router"] for k, v in results[kind].items() if k != "train_s"})
        )
    return results


def cross_benchmark(data: LabelledSet, x: np.ndarray, groups: list[str], kind: str) -> dict:
    y = np.stack([data.weak, data.strong], axis=1)
    g = np.asarray(groups)
    out = {}
    for held in sorted(set(groups)):
        train, test = g != held, g == held
        head = fit_head(x[train], y[train], np.ones(train.sum()), HeadParams(kind=kind))
        sc = gap_scores(head, x[test])
        out[f"train_other_eval_{held}"] = summary(curve(sc, data.weak[test], data.strong[test]))
    return out


def calibration(oof: np.ndarray, prior: np.ndarray, groups: list[str]) -> dict:
    tiers = [TierState("small", 10**6), TierState("large", 10**6)]
    out: dict[str, dict] = {}
    streams = {"shuffled": np.random.default_rng(7).permutation(len(oof))}
    g = np.asarray(groups)
    # Distribution shift: one benchmark first, then the other (scores differ by benchmark).
    streams["shift"] = np.concatenate(
        [
            np.nonzero(g == "gsm8k")[0],
            np.random.default_rng(8).permutation(np.nonzero(g != "gsm8k")[0]),
        ]
    )
    for name, order in streams.items():
        for target in (0.2, 0.3, 0.5, 0.7):
            policy = LearnedPolicy(strong_share=target, prior_quantiles=tuple(prior))
            state = CalibrationState()
            up = np.zeros(len(order))
            for n, i in enumerate(order):
                feats = RequestFeatures(
                    "", {"small": 10, "large": 10}, 1, quality={"small": 0.5, "large": 0.5 + oof[i]}
                )
                d = decide_learned(feats, tiers, policy, state)
                state = recalibrate(state, d, "small", policy)
                up[n] = d.tier == "large"
            cum = np.cumsum(up) / np.arange(1, len(up) + 1)
            after = up[500:]
            rolling = np.convolve(up, np.ones(500) / 500, mode="valid")
            out[f"{name}@{target}"] = {
                "realised_after_500": round(float(after.mean()), 4),
                "error_after_500_points": round(100 * float(after.mean() - target), 2),
                "max_cumulative_error_points_after_500": round(
                    100 * float(np.max(np.abs(cum[500:] - target))), 2
                ),
                "max_rolling500_error_points": round(
                    100 * float(np.max(np.abs(rolling - target))), 2
                ),
                "first_500": round(float(up[:500].mean()), 4),
            }
    return out


def latency(
    head: Head, embedder: Embedder, words: list[str], runs: int, bounded: bool = False
) -> dict:
    """Decision latency at 50, 500 and 2,000 tokens: the share policy, or (`bounded`) the
    quality-loss bound at 0.2 with each prompt's traffic class, as the gateway decides
    under `router.max_quality_loss` with a head that has classes."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_path()))  # both embedders' tokenizer
    tiers = [TierState("small", 10**6), TierState("large", 10**6)]
    policy = LearnedPolicy(strong_share=0.3, prior_quantiles=tuple(head.calibration_quantiles))
    if bounded:
        bound = head_loss_bound(head, ["small", "large"], {}, 0.2, 0.9)
        policy = LearnedPolicy(0.3, tuple(head.calibration_quantiles), bound=bound)
    weights = output_weights(["small", "large"], head.outputs, {})
    out = {}
    rng = np.random.default_rng(3)
    for target in (50, 500, 2000):
        prompts = []
        for _ in range(runs):
            start = int(rng.integers(0, len(words) - 3 * target))
            n = target
            while len(tok(" ".join(words[start : start + n]))["input_ids"]) - 2 < target:
                n += max(1, target // 20)
            prompts.append(" ".join(words[start : start + n]))
        state = CalibrationState()
        times, cpu = [], []
        for i, p in enumerate(prompts):
            t0, c0 = time.perf_counter(), time.process_time()
            emb = embedder.embed([p])[0]
            probs = head.predict(head.features(emb, len(p.split())))[0]
            feats = RequestFeatures(
                p,
                {"small": 1, "large": 1},
                1,
                quality=tier_quality(probs, weights),
                traffic_class=head.traffic_class(emb) if bounded else None,
            )
            d = decide_learned(feats, tiers, policy, state)
            state = recalibrate(state, d, "small", policy)
            if i >= 5:  # warm-up
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
        ms, cpu_ms = np.asarray(times) * 1000, np.asarray(cpu) * 1000
        out[f"{target}_tokens"] = {
            "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            # CPU time of this process per decision: on a contended machine, closer to
            # what the decision costs than the wall clock (which includes waiting for a core).
            "cpu_p50_ms": round(float(np.percentile(cpu_ms, 50)), 2),
            "cpu_p99_ms": round(float(np.percentile(cpu_ms, 99)), 2),
            "runs": len(ms),
        }
    return out


def latency_section(shipped: Head, words: list[str], runs: int) -> dict:
    """Decision latency with the shipped head's embedder (MiniLM with 1 torch thread), and
    the machine's load while measured."""
    import os

    import torch

    torch.set_num_threads(1)
    section: dict = {
        "embedder": shipped.embedder,
        "load_avg_1m_before": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }
    embedder = open_embedder(shipped.embedder, threads=1)
    section.update(latency(shipped, embedder, words, runs))
    calibrated = Head.load(CALIBRATED_ARTIFACT)
    section["bounded_per_class"] = latency(calibrated, embedder, words, runs, bounded=True)
    section["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    return section


def compare_embedders(kinds: list[str], loaded: dict[str, Loaded]) -> dict:
    """5-fold figures per embedder and head kind (APGR and CPT(50%) per file). `loaded`:
    the embedders whose embeddings `main` already has."""
    out: dict[str, dict] = {}
    for name in (STATIC_NAME, MINILM_NAME):
        data, emb, groups = loaded.get(name) or load(open_embedder(name, threads=2))
        probe_head = Head("lr", ("weak", "strong"), np.zeros((1, 2)), np.zeros(2))
        x = features(probe_head, emb, data.prompts)
        out[name] = {}
        for kind, per in quality(data, x, groups, kinds, {}).items():
            out[name][kind] = {
                f: {k: v["router"][k] for k in ("apgr", "cpt50")}
                for f, v in per.items()
                if f != "train_s"
            }
    return out


def fold_seeds(data: LabelledSet, x: np.ndarray, groups: list[str], kind: str) -> dict:
    y = np.stack([data.weak, data.strong], axis=1)
    out = {}
    for seed in (0, 1, 2, 3, 4):
        oof = out_of_fold(x, y, groups, HeadParams(kind=kind), seed=seed)
        out[f"seed{seed}"] = {
            f: {k: v["router"][k] for k in ("apgr", "cpt50")}
            for f, v in per_file(oof, data, groups).items()
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kinds", default="mlp,lr")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--splits", type=int, default=20, help="calibration/test splits (bound)")
    ap.add_argument("--latency-runs", type=int, default=200)
    ap.add_argument(
        "--latency-only", action="store_true", help="measure latency, keep the rest of --out"
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    shipped = Head.load(SHIPPED_ARTIFACT)
    result: dict
    if args.latency_only:
        result = json.loads(args.out.read_text()) if args.out.exists() else {}
        for old in ("latency_threads1", "latency_threads2"):
            result.pop(old, None)
        words = " ".join(load_files(DEFAULT_TRAIN_FILES).prompts).split()
        result["latency"] = latency_section(shipped, words, args.latency_runs)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result["latency"], indent=2))
        return
    data, emb, groups = load(open_embedder(shipped.embedder, threads=2))
    x = features(shipped, emb, data.prompts)
    kinds = args.kinds.split(",")
    result = {"data": [str(p.relative_to(ROOT)) for p in DEFAULT_TRAIN_FILES]}
    oofs: dict[str, np.ndarray] = {}
    result["quality_5fold"] = quality(data, x, groups, kinds, oofs)
    result["shipped_head"] = shipped.kind
    result["shipped_embedder"] = shipped.embedder
    result["cross_benchmark"] = cross_benchmark(data, x, groups, shipped.kind)
    result["fold_seeds"] = fold_seeds(data, x, groups, shipped.kind)
    result["embedders"] = compare_embedders(kinds, {shipped.embedder: (data, emb, groups)})
    # The replayed stream: out-of-fold scores (no head saw its own prompts); the prior is
    # the shipped head's calibration quantiles, as in the gateway.
    oof = oofs.get(shipped.kind, next(iter(oofs.values())))
    result["calibration"] = calibration(oof, shipped.calibration_quantiles, groups)
    from bench import router_bound_bench  # (it imports this module's loaders)

    result.update(router_bound_bench.run((data, emb, groups), x, shipped.kind, args.splits))
    router_bound_bench.plot(result["bound"], args.out.with_name("router_bound.png"))
    if not args.skip_latency:
        words = " ".join(data.prompts).split()
        result["latency"] = latency_section(shipped, words, args.latency_runs)
    _ = sample_weights
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
