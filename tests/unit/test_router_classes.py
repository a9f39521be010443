"""The quality-loss bound per traffic class (issue 28): a pooled bound breaks a small
class with a worse loss curve, the per-class bound holds for both; the nearest-centroid
classifier and its out-of-domain fallback; artifacts with and without classes; the
learned policy routing with the prompt's class (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tierline.router.bound import class_pair_thresholds, pair_thresholds
from tierline.router.classes import (
    CUTOFF_QUANTILE,
    OUT_OF_DOMAIN,
    TrafficClasses,
    class_indices,
    classify,
    classify_rows,
    fit_classes,
)
from tierline.router.head import ARTIFACT_VERSION, PLAIN_VERSION, Head
from tierline.router.learned import (
    CalibrationState,
    LearnedPolicy,
    LossBound,
    decide_learned,
    strictest,
)
from tierline.router.scorer import (
    CALIBRATED_ARTIFACT,
    head_bounds,
    head_class_bounds,
    head_loss_bound,
)
from tierline.router.train import HeadParams, holdout_mask, train_artifact
from tierline.router.types import RequestFeatures, TierState

PAIR = ("small", "large")
TIERS = [TierState("small", 10_000), TierState("large", 10_000)]

# Two synthetic classes, score s uniform on [-1, 1], u = (s + 1) / 2, and a prompt's loss
# (strong right, weak wrong) drawn with probability a + b * u. The true risk of keeping
# the prompts with s <= t cheap is then a + b * u(t) / 2.
CURVES = {"big": (0.0, 0.1), "small": (0.0, 0.5)}
ROWS = {"big": 3000, "small": 1000}
ALPHA, DELTA = 0.15, 0.1


def _true_risk(name: str, threshold: float) -> float:
    if threshold == float("-inf"):
        return 0.0
    a, b = CURVES[name]
    return a + b * min(max((threshold + 1.0) / 2.0, 0.0), 1.0) / 2.0


def _draw(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Calibration rows as (predicted quality, labels) per tier, and each row's class:
    the gain small -> large is the score, the loss the label gap."""
    q, y, classes = [], [], []
    for name, n in ROWS.items():
        a, b = CURVES[name]
        s = rng.uniform(-1.0, 1.0, n)
        lost = rng.random(n) < a + b * (s + 1.0) / 2.0
        q.append(np.stack([np.zeros(n), s], axis=1))
        y.append(np.stack([1.0 - lost, np.ones(n)], axis=1))
        classes += [name] * n
    return np.concatenate(q), np.concatenate(y), classes


def test_a_pooled_bound_breaks_the_small_class_and_the_per_class_bound_holds_both() -> None:
    rng = np.random.default_rng(28)
    draws = 120
    pooled_broken = 0
    per_class_broken = dict.fromkeys(ROWS, 0)
    small_cheap = []
    for _ in range(draws):
        q, y, classes = _draw(rng)
        pooled = pair_thresholds(q, y, list(PAIR), ALPHA, DELTA)[PAIR]
        pooled_broken += _true_risk("small", pooled.threshold) > ALPHA
        per = class_pair_thresholds(q, y, classes, list(ROWS), list(PAIR), ALPHA, DELTA)
        for name in ROWS:
            per_class_broken[name] += _true_risk(name, per[name][PAIR].threshold) > ALPHA
        small_cheap.append(per["small"][PAIR].cheap_share)
    # Pooled, the big class's rows (loss at most 0.10 anywhere) let the threshold rise
    # until the small class's true loss is far above alpha (0.25 with everything cheap).
    assert pooled_broken >= 0.9 * draws
    # Per class, each bound fails with probability at most delta: allow for the draws'
    # own binomial noise (mean + 3 sd).
    limit = DELTA * draws + 3.0 * np.sqrt(draws * DELTA * (1 - DELTA))
    assert all(broken <= limit for broken in per_class_broken.values()), per_class_broken
    # ...and the small class still keeps some prompts cheap (its risk is under alpha for
    # u < 0.6): the per-class bound is not just "send everything up".
    assert np.mean(small_cheap) > 0.1


def test_a_class_with_too_few_rows_goes_up() -> None:
    rng = np.random.default_rng(1)
    q, y, classes = _draw(rng)
    keep = [i for i, c in enumerate(classes) if c == "big"] + [
        i for i, c in enumerate(classes) if c == "small"
    ][:5]
    per = class_pair_thresholds(
        q[keep],
        y[keep],
        [classes[i] for i in keep],
        ["big", "small", "none"],
        list(PAIR),
        0.15,
        0.1,
    )
    assert per["small"][PAIR].threshold == float("-inf")
    assert per["none"][PAIR].threshold == float("-inf") and per["none"][PAIR].calibration_rows == 0
    assert per["big"][PAIR].threshold > -1.0


# -- the classifier ---------------------------------------------------------------------------


def _clusters(
    rng: np.random.Generator, names: tuple[str, ...], n: int, dim: int = 24, noise: float = 0.35
) -> tuple[np.ndarray, list[str], np.ndarray]:
    centres = rng.normal(size=(len(names), dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rows = np.concatenate([c + noise * rng.normal(size=(n, dim)) / np.sqrt(dim) for c in centres])
    return rows, [name for name in names for _ in range(n)], centres


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 5))
def test_nearest_centroid_with_an_out_of_domain_fallback(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    names = tuple(f"set{i}" for i in range(k))
    rows, groups, centres = _clusters(rng, names, 300)
    classes = fit_classes(rows, groups)
    assert classes.names == names
    np.testing.assert_allclose(np.linalg.norm(classes.centroids, axis=1), 1.0)
    got = classify_rows(classes, rows)
    assert got == [classify(classes, r) for r in rows]  # one row = many rows
    g = np.asarray(groups)
    for name in names:
        mine = np.asarray(got)[g == name]
        # about CUTOFF_QUANTILE of a class's own rows fall under its cutoff; none elsewhere
        assert np.mean(mine == OUT_OF_DOMAIN) <= CUTOFF_QUANTILE + 0.01
        assert set(mine) <= {name, OUT_OF_DOMAIN}
    # fresh prompts of a class are that class; a prompt unlike every class is not
    fresh, fresh_groups, _ = _clusters(np.random.default_rng(seed), names, 50)
    fresh_got = np.asarray(classify_rows(classes, fresh))
    assert np.mean((fresh_got == np.asarray(fresh_groups)) | (fresh_got == OUT_OF_DOMAIN)) == 1
    away = rng.normal(size=rows.shape[1])
    away -= centres.T @ np.linalg.lstsq(centres.T, away, rcond=None)[0]  # orthogonal to all
    assert classify(classes, away) == OUT_OF_DOMAIN
    assert classify(classes, 5.0 * centres[k - 1]) == names[k - 1]  # scale does not matter


def test_traffic_classes_refuse_bad_shapes_and_names() -> None:
    c = np.eye(2)
    with pytest.raises(ValueError, match="distinct"):
        TrafficClasses(("a", "a"), c, np.zeros(2))
    with pytest.raises(ValueError, match="distinct"):
        TrafficClasses(("a", OUT_OF_DOMAIN), c, np.zeros(2))
    with pytest.raises(ValueError, match="cutoffs"):
        TrafficClasses(("a", "b"), c, np.zeros(3))


# -- artifacts ------------------------------------------------------------------------------


def _head(rng: np.random.Generator, classes: TrafficClasses | None) -> Head:
    rows = 60
    return Head(
        "lr",
        ("weak", "strong"),
        rng.normal(size=(9, 2)),
        rng.normal(size=2),
        calibration_probs=rng.random((rows, 2)),
        calibration_labels=(rng.random((rows, 2)) < 0.5).astype(float),
        classes=classes,
        calibration_classes=rng.integers(0, 2, rows) if classes else np.zeros(0, dtype=np.int64),
        meta={"sources": ["a", "b"]},
    )


def test_artifact_round_trip_with_and_without_classes(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    rows, groups, _ = _clusters(rng, ("a", "b"), 40, dim=8)
    classes = fit_classes(rows, groups)
    with_classes = _head(rng, classes)
    with_classes.save(tmp_path / "c.npz")
    back = Head.load(tmp_path / "c.npz")
    assert back.classes is not None and back.classes.names == ("a", "b")
    np.testing.assert_allclose(back.classes.centroids, classes.centroids, rtol=1e-6)
    np.testing.assert_allclose(back.classes.cutoffs, classes.cutoffs)
    np.testing.assert_array_equal(back.calibration_classes, with_classes.calibration_classes)
    assert back.meta == {"sources": ["a", "b"]}
    with np.load(tmp_path / "c.npz", allow_pickle=False) as z:
        assert json.loads(str(z["meta_json"]))["version"] == ARTIFACT_VERSION
    assert back.traffic_class(classes.centroids[1]) == "b"

    plain = _head(rng, None)
    plain.save(tmp_path / "p.npz")
    with np.load(tmp_path / "p.npz", allow_pickle=False) as z:  # older readers load it
        assert json.loads(str(z["meta_json"]))["version"] == PLAIN_VERSION
    old = Head.load(tmp_path / "p.npz")
    assert old.classes is None and len(old.calibration_classes) == 0
    assert old.traffic_class(classes.centroids[1]) is None
    # no classes: the pooled bound, as before
    bound = head_loss_bound(old, list(PAIR), {}, 0.2, 0.9)
    assert bound.classes == {} and head_class_bounds(old, list(PAIR), {}, 0.2, 0.9) == {}
    assert bound.thresholds_for("a") == bound.thresholds


def test_artifact_version_and_class_checks(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    head = _head(rng, None)
    head.save(tmp_path / "h.npz")
    with np.load(tmp_path / "h.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta_json"]))
    arrays["meta_json"] = np.array(json.dumps({**meta, "version": 99}))
    np.savez_compressed(tmp_path / "future.npz", **arrays)
    with pytest.raises(ValueError, match="version 99"):
        Head.load(tmp_path / "future.npz")
    classes = TrafficClasses(("a", "b"), np.eye(2, 8), np.zeros(2))
    with pytest.raises(ValueError, match="every calibration row"):
        Head(
            "lr",
            ("weak", "strong"),
            np.zeros((9, 2)),
            np.zeros(2),
            calibration_probs=np.zeros((3, 2)),
            calibration_labels=np.zeros((3, 2)),
            classes=classes,
        )
    with pytest.raises(ValueError, match="dimension"):
        Head("lr", ("weak", "strong"), np.zeros((5, 2)), np.zeros(2), classes=classes)


def test_trained_artifact_carries_each_sources_class() -> None:
    rng = np.random.default_rng(7)
    emb, groups, centres = _clusters(rng, ("gsm", "mmlu"), 100, dim=16)
    x = np.concatenate([emb, rng.random((200, 1))], axis=1).astype(np.float32)
    y = (rng.random((200, 2)) < 0.5).astype(float)
    head = train_artifact(
        x, y, groups, HeadParams(kind="lr", linear_steps=5), calibration_holdout=0.3
    )
    held = holdout_mask(groups, 0.3, seed=0)
    assert head.classes is not None and head.classes.names == ("gsm", "mmlu")
    # centroids come from the training rows' embeddings, not the length column...
    expected = fit_classes(emb[~held], [g for g, h in zip(groups, held, strict=True) if not h])
    np.testing.assert_allclose(head.classes.centroids, expected.centroids)
    # ...and each held-out row's class is the classifier's verdict, as a live prompt's is
    np.testing.assert_array_equal(head.calibration_classes, class_indices(expected, emb[held]))
    sources = [g for g, h in zip(groups, held, strict=True) if h]
    got = [head.classes.names[i] if i >= 0 else OUT_OF_DOMAIN for i in head.calibration_classes]
    assert np.mean([a == b for a, b in zip(got, sources, strict=True)]) >= 0.9
    assert head.traffic_class(centres[0]) == "gsm"


# -- the policy -----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    st.floats(-1, 1),
    st.sampled_from(["gsm8k", "mmlu", OUT_OF_DOMAIN, "never-seen", None]),
    st.sampled_from(["cost", "balanced", "quality", None]),
)
def test_decide_uses_the_prompts_class_threshold(
    gain: float, traffic_class: str | None, preference: str | None
) -> None:
    per_class = {"gsm8k": {PAIR: -0.2}, "mmlu": {PAIR: 0.3}}
    bound = LossBound(0.2, 0.9, {PAIR: 0.5}, per_class)
    policy = LearnedPolicy(strong_share=0.3, prior_quantiles=(0.0, 1.0), bound=bound)
    q = {"small": 0.4, "large": 0.4 + gain}
    f = RequestFeatures(
        "x", dict.fromkeys(q, 1), 1, quality=q, preference=preference, traffic_class=traffic_class
    )
    d = decide_learned(f, TIERS, policy, CalibrationState())
    if traffic_class is None:
        expected, used = 0.5, None  # no class: the pooled bound
    elif traffic_class in per_class:
        expected, used = per_class[traffic_class][PAIR], traffic_class
    else:
        expected, used = -0.2, OUT_OF_DOMAIN  # the strictest class threshold
    assert d.threshold == expected and d.traffic_class == used
    assert d.tier == ("large" if q["large"] - q["small"] > expected else "small")
    if used is None:
        assert "class:" not in d.reason
    else:
        assert d.reason.startswith(f"auto:learned:{preference or 'balanced'}+class:{used}")


def test_a_bound_without_classes_ignores_the_prompts_class() -> None:
    policy = LearnedPolicy(
        strong_share=0.3, prior_quantiles=(0.0, 1.0), bound=LossBound(0.2, 0.9, {PAIR: 0.1})
    )
    q = {"small": 0.4, "large": 0.6}
    f = RequestFeatures("x", dict.fromkeys(q, 1), 1, quality=q, traffic_class="gsm8k")
    d = decide_learned(f, TIERS, policy, CalibrationState())
    assert (d.tier, d.threshold, d.traffic_class, d.reason) == (
        "large",
        0.1,
        None,
        "auto:learned:balanced",
    )


def test_strictest_takes_each_pairs_lowest_threshold() -> None:
    a = {("s", "m"): 0.1, ("m", "l"): 0.4, ("s", "l"): 0.2}
    b = {("s", "m"): 0.3, ("m", "l"): -0.1}
    assert strictest([a, b]) == {("s", "m"): 0.1, ("m", "l"): -0.1, ("s", "l"): float("-inf")}


def test_the_shipped_head_bounds_each_class_on_its_own_rows() -> None:
    """The shipped calibrated head knows GSM8K and MMLU; each class's threshold keeps that
    class's calibration rows under alpha, where the pooled one does not keep GSM8K's
    (-1, out of domain, indexes the appended name)."""
    head = Head.load(CALIBRATED_ARTIFACT)
    assert head.classes is not None and head.classes.names == ("gsm8k", "mmlu")
    names = np.asarray([*head.classes.names, OUT_OF_DOMAIN])[head.calibration_classes]
    assert set(names.tolist()) == {"gsm8k", "mmlu", OUT_OF_DOMAIN}
    alpha = 0.2
    bound = head_loss_bound(head, list(PAIR), {}, alpha, 0.9)
    pooled = head_bounds(head, list(PAIR), {}, alpha, 0.9)[PAIR]
    assert bound.thresholds == {PAIR: pooled.threshold}
    gain = head.calibration_probs[:, 1] - head.calibration_probs[:, 0]
    loss = np.maximum(head.calibration_labels[:, 1] - head.calibration_labels[:, 0], 0.0)
    gsm = names == "gsm8k"
    assert loss[gsm & (gain <= pooled.threshold)].mean() > alpha  # pooled: broken for GSM8K
    for name in ("gsm8k", "mmlu"):
        t = bound.classes[name][PAIR]
        kept = (names == name) & (gain <= t)
        assert kept.any() and loss[kept].mean() <= alpha
    assert bound.thresholds_for(OUT_OF_DOMAIN)[PAIR] == bound.classes["gsm8k"][PAIR]


def test_evaluate_classes_routes_each_row_with_its_class_and_the_rest_strictest() -> None:
    from tierline.router.bound import evaluate_classes

    rng = np.random.default_rng(3)
    n = 4000
    # class 0: cheap is safe below score 0.5; class 1: cheap is never safe
    c_s = rng.uniform(0, 1, n)
    c_k = rng.integers(0, 2, n)
    c_x = np.where((c_k == 0) & (c_s < 0.5), 0.0, 1.0)
    t_s = rng.uniform(0, 1, n)
    t_k = rng.integers(-1, 2, n)
    t_x = np.where((t_k == 0) & (t_s < 0.5), 0.0, 1.0)
    out, cheap = evaluate_classes((c_s, c_x, c_k), (t_s, t_x, t_k), ["a", "b"], 0.1, 0.1)
    a, b, ood = out["classes"]["a"], out["classes"]["b"], out["classes"]["out-of-domain"]
    # kept below t, the loss is (t - 0.5) / t: at most alpha = 0.1 means t <= 0.5 / 0.9
    assert a["threshold"] is not None and 0.45 < a["threshold"] <= 0.5 / 0.9
    assert b["threshold"] is None and b["cheap_rows"] == 0  # nothing certifiable: go up
    assert ood["threshold"] is None and ood["cheap_rows"] == 0  # the strictest: b's
    assert out["held"] and out["realised_loss"] <= 0.1
    assert cheap.sum() == out["cheap_rows"] == a["cheap_rows"] > 0
    assert not cheap[t_k != 0].any()
