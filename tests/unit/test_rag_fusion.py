"""The fusion rules of `rag.fusion`, over many generated candidate lists.

The confidence rule must keep what either retriever finds near its top: an item a
retriever ranks r-th with share s is fused at place r / s or better, and BM25's share
follows its margin. Checked on generated inputs (chunks grouped into documents, ties,
empty lists, rescaled scores), and on generated questions where one retriever finds the
answer and the other ranks noise."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from tierline.rag.fusion import confidence_fusion, interleave, lexical_margin, weighted_fusion

MARGIN, CONFIDENT, UNSURE = 0.5, 0.8, 0.4

Ranked = list[tuple[str, float]]


def scored(ids: list[str], scores: list[int]) -> Ranked:
    """(id, score) pairs best first, as a retriever returns them."""
    pairs = [(i, float(s)) for i, s in zip(ids, scores, strict=False)]
    return sorted(pairs, key=lambda kv: (-kv[1], kv[0]))


@st.composite
def candidates(draw: st.DrawFn) -> tuple[Ranked, Ranked, dict[str, str]]:
    """Dense and BM25 lists over chunks `d<doc>#<n>` of a few documents; integer scores
    (rescaling by powers of two stays exact), BM25's >= 0; ties and empty lists happen."""
    n_docs = draw(st.integers(1, 12))
    chunks = [f"d{d}#{c}" for d in range(n_docs) for c in range(draw(st.integers(1, 3)))]
    group = {c: c.split("#")[0] for c in chunks}
    dense_ids = draw(st.lists(st.sampled_from(chunks), unique=True, max_size=len(chunks)))
    sparse_ids = draw(st.lists(st.sampled_from(chunks), unique=True, max_size=len(chunks)))
    dense_scores = draw(st.lists(st.integers(-500, 1000), min_size=len(dense_ids)))
    sparse_scores = draw(st.lists(st.integers(0, 1000), min_size=len(sparse_ids)))
    return scored(dense_ids, dense_scores), scored(sparse_ids, sparse_scores), group


def fuse(dense: Ranked, sparse: Ranked, group: dict[str, str] | None, limit=None) -> Ranked:
    return confidence_fusion(dense, sparse, group, MARGIN, CONFIDENT, UNSURE, limit=limit)


def ranks(ranked: Ranked) -> dict[str, int]:
    order = sorted(ranked, key=lambda kv: (-kv[1], kv[0]))
    return {i: n for n, (i, _) in enumerate(order, start=1)}


@settings(deadline=None)  # pure, but the shared CI machine can be slow
@given(candidates(), st.integers(1, 40))
def test_fused_is_the_union_once_each_best_first_within_limit(case, limit) -> None:
    dense, sparse, group = case
    fused = fuse(dense, sparse, group)
    ids = [i for i, _ in fused]
    assert sorted(ids) == sorted({i for i, _ in [*dense, *sparse]})
    assert [s for _, s in fused] == sorted((s for _, s in fused), reverse=True)
    assert all(0 <= s <= 1 for _, s in fused)
    assert fuse(dense, sparse, group, limit) == fused[:limit]


@settings(deadline=None)  # pure, but the shared CI machine can be slow
@given(candidates(), st.floats(0, 1))
def test_an_item_ranked_r_by_a_retriever_with_share_s_is_fused_by_place_r_over_s(
    case, share
) -> None:
    dense, sparse, _ = case
    place = {i: n for n, (i, _) in enumerate(interleave(dense, sparse, share), start=1)}
    for ranked, s in ((dense, 1 - share), (sparse, share)):
        if s <= 0:
            continue
        for item, r in ranks(ranked).items():
            if r / s < len(place):  # else the bound says nothing
                assert place[item] <= math.floor(r / s + 1e-9)


@settings(deadline=None)  # pure, but the shared CI machine can be slow
@given(candidates(), st.integers(0, 4), st.integers(-64, 64), st.integers(0, 4))
def test_rescaling_either_retriever_changes_nothing(case, dense_pow, shift, sparse_pow) -> None:
    dense, sparse, group = case
    rescaled_dense = [(i, x * 2**dense_pow + shift) for i, x in dense]
    rescaled_sparse = [(i, x * 2**sparse_pow) for i, x in sparse]
    assert fuse(rescaled_dense, rescaled_sparse, group) == fuse(dense, sparse, group)


@settings(deadline=None)  # pure, but the shared CI machine can be slow
@given(candidates(), st.randoms(use_true_random=False))
def test_input_order_does_not_matter(case, rng: random.Random) -> None:
    dense, sparse, group = case
    shuffled_dense, shuffled_sparse = list(dense), list(sparse)
    rng.shuffle(shuffled_dense)
    rng.shuffle(shuffled_sparse)
    assert fuse(shuffled_dense, shuffled_sparse, group) == fuse(dense, sparse, group)


@settings(deadline=None)  # pure, but the shared CI machine can be slow
@given(candidates(), st.data())
def test_a_document_bm25_finds_far_above_the_rest_comes_first(case, data) -> None:
    dense, sparse, group = case
    assume(sparse)
    # BM25's best document made clear: every chunk of another document at most half its
    # score (a made-up name or code that only this document holds).
    gold = group[sparse[0][0]]
    best = max(x for _, x in sparse) + data.draw(st.integers(1, 500))
    cap = best * (1 - MARGIN)
    sparse = [
        (i, best if n == 0 else (x if group[i] == gold else min(x, cap)))
        for n, (i, x) in enumerate(sparse)
    ]
    assert lexical_margin(sparse, group) >= MARGIN
    fused = [i for i, _ in fuse(dense, sparse, group)]
    assert group[fused[0]] == gold
    # ... and BM25's top four and dense's best are all among the first five.
    assert {i for i, r in ranks(sparse).items() if r <= 4} <= set(fused[:5])
    assert not dense or dense[0][0] in fused[:5]


@settings(deadline=None)  # pure, but the shared CI machine can be slow
@given(candidates())
def test_dense_top_three_and_bm25_top_two_lead_when_bm25_is_unsure(case) -> None:
    dense, sparse, group = case
    docs = {group[i] for i, _ in sparse}
    assume(len(docs) >= 2 or not sparse)
    if sparse:  # two documents level at BM25's top: not confident
        other = next(i for i, _ in sparse if group[i] != group[sparse[0][0]])
        sparse = [(i, sparse[0][1] if i == other else x) for i, x in sparse]
    assert lexical_margin(sparse, group) < MARGIN
    fused = [i for i, _ in fuse(dense, sparse, group)]
    assert not dense or fused[0] == next(iter(ranks(dense)))
    assert {i for i, r in ranks(dense).items() if r <= 3} <= set(fused[:5])
    assert {i for i, r in ranks(sparse).items() if r <= 2} <= set(fused[:5])


def test_lexical_margin_is_measured_between_documents() -> None:
    group = {"a#0": "a", "a#1": "a", "b#0": "b"}
    # Two chunks of one page holding the same rare name: one answer, not a tie.
    assert lexical_margin([("a#0", 10.0), ("a#1", 9.5), ("b#0", 2.0)], group) == pytest.approx(0.8)
    assert lexical_margin([("a#0", 10.0), ("a#1", 9.5), ("b#0", 2.0)]) == pytest.approx(0.05)
    assert lexical_margin([("a#0", 3.0)], group) == 1.0
    assert lexical_margin([], group) == 0.0
    assert lexical_margin([("a#0", 0.0), ("b#0", 0.0)], group) == 0.0


def test_a_paraphrase_keeps_dense_top_and_a_code_look_up_follows_bm25() -> None:
    # A question in other words: BM25 finds incidental overlaps at similar scores.
    dense = [("remote", 0.61), ("leave", 0.42), ("travel", 0.40), ("pets", 0.3), ("car", 0.2)]
    sparse = [("car", 6.0), ("travel", 5.1), ("remote", 1.2), ("dress", 1.0)]
    assert [i for i, _ in fuse(dense, sparse, None)] == [
        "remote", "car", "leave", "travel", "pets", "dress"
    ]  # fmt: skip
    # The old weighted rule with its rare-term share (0.8) put BM25's page first and
    # dense's second best out of the top three.
    assert [i for i, _ in weighted_fusion(dense, sparse, 0.8)][:3] == ["car", "travel", "remote"]
    # A code only one entry holds: BM25's best far above the rest leads.
    dense = [("e1", 0.50), ("e2", 0.49), ("e3", 0.48)]
    sparse = [("e3", 14.0), ("e1", 2.0)]
    assert [i for i, _ in fuse(dense, sparse, None)] == ["e3", "e1", "e2"]


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_recall_at_5_keeps_what_either_retriever_finds_on_generated_questions(seed) -> None:
    """A generated question: one retriever ranks the gold document first (BM25: its only
    strong match; dense: a clear best), the other ranks noise, sometimes confidently. The
    first five fused documents hold the gold document."""
    rng = random.Random(seed)
    docs = [f"doc{i}" for i in range(rng.randint(6, 40))]
    gold = rng.choice(docs)
    group = {f"{d}#{c}": d for d in docs for c in range(3)}
    chunk = {d: [c for c in group if group[c] == d] for d in docs}
    noise = [c for d in docs for c in chunk[d] if d != gold]
    if rng.random() < 0.5:  # a look-up BM25 answers: the gold page holds the rare term
        sparse = [(c, rng.uniform(8, 12)) for c in chunk[gold][: rng.randint(1, 3)]]
        sparse += [(c, rng.uniform(0, 7.9)) for c in rng.sample(noise, min(10, len(noise)))]
        dense = [(c, rng.uniform(0.2, 0.6)) for c in group]
    else:  # a paraphrase dense answers; BM25 ranks word overlaps, maybe one far ahead
        dense = [(c, rng.uniform(0.75, 0.9)) for c in chunk[gold]]
        dense += [(c, rng.uniform(0.1, 0.74)) for c in noise]
        sparse = [(c, rng.uniform(0, 12)) for c in rng.sample(noise, min(12, len(noise)))]
    top_docs: list[str] = []
    for i, _ in fuse(dense, sparse, group):
        if group[i] not in top_docs:
            top_docs.append(group[i])
    assert gold in top_docs[:5]
