"""Offline evaluation figures, the head's storage and the tier mapping, on generated data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tierline.router.data import parse_rows
from tierline.router.embedding import HashingEmbedder
from tierline.router.evaluate import curve, oracle_scores, random_summary, summary
from tierline.router.head import Head
from tierline.router.scorer import SHIPPED_ARTIFACT, output_weights, share_for_quality, tier_quality

labels = st.lists(st.tuples(st.sampled_from([0.0, 1.0]), st.sampled_from([0.0, 1.0])), min_size=4)


@settings(max_examples=300, deadline=None)
@given(labels, st.integers(0, 1000))
def test_curve_endpoints_and_oracle_bound(rows: list[tuple[float, float]], seed: int) -> None:
    weak = np.asarray([r[0] for r in rows])
    strong = np.asarray([r[1] for r in rows])
    if weak.mean() == strong.mean():
        return
    scores = np.random.default_rng(seed).random(len(rows))
    c = curve(scores, weak, strong)
    assert c.pgr[0] == pytest.approx(0.0) and c.pgr[-1] == pytest.approx(1.0)
    oracle = curve(oracle_scores(weak, strong), weak, strong)
    if strong.mean() > weak.mean():
        assert oracle.apgr >= c.apgr - 1e-9
        assert oracle.cpt(0.5) <= c.cpt(0.5) + 1e-9
    s = summary(c)
    assert 0.0 <= s["cpt50"] <= s["cpt80"] <= 1.0


def test_random_routing_is_about_one_half() -> None:
    rng = np.random.default_rng(0)
    weak = (rng.random(4000) < 0.6).astype(float)
    strong = (rng.random(4000) < 0.8).astype(float)
    assert random_summary(weak, strong)["apgr"] == pytest.approx(0.5, abs=0.03)


def test_graded_scores_are_rescaled() -> None:
    rows = [
        '{"prompt": "a", "weak_score": 2, "strong_score": 9}',
        '{"prompt": "b", "weak_score": 10, "strong_score": 1}',
    ]
    weak, strong = parse_rows(rows, "t").normalised()
    assert weak.min() >= 0 and strong.max() <= 1 and weak[1] == 1.0 and strong[1] == 0.0
    with pytest.raises(ValueError, match="t:1"):
        parse_rows(['{"prompt": 1}'], "t")


def test_head_round_trips_without_pickle(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    head = Head(
        "mlp",
        ("weak", "strong"),
        rng.normal(size=(8, 2)),
        rng.normal(size=2),
        w_hidden=rng.normal(size=(385, 8)),
        b_hidden=rng.normal(size=8),
        calibration_quantiles=np.linspace(-1, 1, 101),
        meta={"rows": 3},
    )
    head.save(tmp_path / "h.npz")
    back = Head.load(tmp_path / "h.npz")
    emb = HashingEmbedder().embed(["what is two plus two", "prove the theorem"])
    x = head.features(emb, np.asarray([4, 3]))
    np.testing.assert_allclose(back.predict(x), head.predict(x), rtol=1e-5)
    assert back.meta == {"rows": 3} and back.outputs == head.outputs


def test_shipped_artifact_loads_and_predicts_probabilities() -> None:
    head = Head.load(SHIPPED_ARTIFACT)
    assert head.outputs == ("weak", "strong") and head.input_dim == 385
    assert len(head.calibration_quantiles) == 101
    assert np.all(np.diff(head.calibration_quantiles) >= 0)
    emb = HashingEmbedder().embed(["hello"])
    p = head.predict(head.features(emb, 1))
    assert p.shape == (1, 2) and np.all((p >= 0) & (p <= 1))
    shares = [share_for_quality(head, q) for q in (0.2, 0.5, 0.8, 1.0)]
    assert shares == sorted(shares) and shares[0] >= 0 and shares[-1] <= 1


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 6), st.lists(st.floats(0, 1), min_size=2, max_size=2))
def test_tier_mapping_spans_weak_to_strong(n: int, probs: list[float]) -> None:
    names = [f"t{i}" for i in range(n)]
    q = tier_quality(np.asarray(probs), output_weights(names, ("weak", "strong"), {}))
    assert set(q) == set(names)
    if n > 1:
        assert q["t0"] == pytest.approx(probs[0]) and q[names[-1]] == pytest.approx(probs[1])
    lo, hi = min(probs), max(probs)
    assert all(lo - 1e-9 <= v <= hi + 1e-9 for v in q.values())
    with pytest.raises(ValueError, match="outputs"):
        output_weights(names, ("weak", "strong"), {"t0": "medium"})
