"""Fusing the dense and BM25 rankings: pure functions of (id, score) lists.

`confidence_fusion` (the default, `fusion: confidence`) interleaves the two rankings, each
retriever taking a share of the places, and BM25's share is read from BM25's own
confidence on this query: how far its best document stands above the next document,
`(s1 - s2) / s1` (`lexical_margin`). A name, code or identifier that occurs in one
document gives BM25 a best document far above the rest, and then BM25 takes most places
(4 of the first 5 by default); otherwise dense does (3 of 5), and BM25's top two still
get in. An item a retriever ranks r-th with share s is fused at place r / s or better,
whatever the other retriever says, so neither can push out what the other finds near
its top. The margin is measured between documents, not chunks: two overlapping chunks of
one page that hold the same rare name are one answer, not a tie. The rule reads only the
two lists, so it needs no corpus statistics and behaves the same on a 59-paragraph
collection as on 100k chunks (bench.rag_quality, BENCHMARKS.md, RAG).

`weighted_fusion` (`fusion: weighted`, the default before) adds min-max normalised scores
with one BM25 share per query, raised when a query term is rare in the collection; on a
small collection nearly every term is rare, so BM25 led on paraphrases and lost what
dense found. `reciprocal_rank_fusion` (`fusion: rrf`) sums 1 / (k + rank): a document
only one retriever finds, however confidently, loses to documents both rank mildly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

Scored = Sequence[tuple[str, float]]


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[str]], k: int = 60, limit: int | None = None
) -> list[tuple[str, float]]:
    """Ids ordered by fused score, ties by id (not by list order); ranks start at 1."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    order = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    return order if limit is None else order[:limit]


def _ordered(scores: dict[str, float], limit: int | None) -> list[tuple[str, float]]:
    order = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    return order if limit is None else order[:limit]


def weighted_fusion(
    dense: Scored,
    sparse: Scored,
    sparse_weight: float,
    limit: int | None = None,
) -> list[tuple[str, float]]:
    """Ids by (1 - w) * normalised dense + w * normalised BM25, ties by id.

    Dense is min-max normalised, BM25 divided by its best (its scores start at 0)."""
    scores: dict[str, float] = {}
    if dense:
        lo = min(x for _, x in dense)
        span = (max(x for _, x in dense) - lo) or 1.0
        for item, x in dense:
            scores[item] = (1.0 - sparse_weight) * (x - lo) / span
    if sparse:
        top = max(x for _, x in sparse) or 1.0
        for item, x in sparse:
            scores[item] = scores.get(item, 0.0) + sparse_weight * x / top
    return _ordered(scores, limit)


def lexical_margin(sparse: Scored, group: Mapping[str, str] | None = None) -> float:
    """How far BM25's best document stands above its next one: (s1 - s2) / s1, in [0, 1].

    `group` maps an id to its document (ids it lacks are their own document); hits of the
    best one's document do not count as the next. One document found: 1. None, or a best
    score of 0: 0."""
    if not sparse:
        return 0.0
    best_id, best = min(sparse, key=lambda kv: (-kv[1], kv[0]))
    if best <= 0:
        return 0.0
    doc_of = group or {}
    best_doc = doc_of.get(best_id, best_id)
    second = max((x for i, x in sparse if doc_of.get(i, i) != best_doc), default=0.0)
    return min(1.0, max(0.0, (best - second) / best))


def _ranks(ranked: Scored) -> dict[str, int]:
    """1-based ranks, best score first, ties by id (the input's order does not matter)."""
    order = sorted(ranked, key=lambda kv: (-kv[1], kv[0]))
    return {item: n for n, (item, _) in enumerate(order, start=1)}


def interleave(
    dense: Scored, sparse: Scored, sparse_share: float, limit: int | None = None
) -> list[tuple[str, float]]:
    """Ids by max over retrievers of share / rank (dense's share is 1 - `sparse_share`),
    so an id ranked r-th by a retriever with share s comes at place floor(r / s) or
    better. Equal values: the id the other retriever also ranks well first, then by id.
    The score returned is that max."""
    shares = (1.0 - sparse_share, sparse_share)
    ranks = (_ranks(dense), _ranks(sparse))
    keyed: list[tuple[float, float, str]] = []
    for item in set(ranks[0]) | set(ranks[1]):
        parts = [s / r[item] if item in r else 0.0 for s, r in zip(shares, ranks, strict=True)]
        keyed.append((max(parts), sum(parts), item))
    keyed.sort(key=lambda k: (-k[0], -k[1], k[2]))
    order = [(item, best) for best, _, item in keyed]
    return order if limit is None else order[:limit]


def confidence_fusion(
    dense: Scored,
    sparse: Scored,
    group: Mapping[str, str] | None = None,
    margin: float = 0.5,
    sparse_share_confident: float = 0.8,
    sparse_share_unsure: float = 0.4,
    limit: int | None = None,
) -> list[tuple[str, float]]:
    """`interleave` with BM25's share `sparse_share_confident` when
    `lexical_margin(sparse, group) >= margin`, else `sparse_share_unsure`.

    With the defaults: BM25 confident, its best document comes first and its top four are
    among the first five (dense's best too); otherwise dense's top three and BM25's top
    two are. Only dense's ranks count, and BM25's ranks and score ratios, so rescaling
    dense's scores in any order-keeping way or BM25's by a positive factor changes nothing
    (Milvus's scores or ours). Tested over generated lists in tests/unit/test_rag_fusion.py."""
    confident = lexical_margin(sparse, group) >= margin
    share = sparse_share_confident if confident else sparse_share_unsure
    return interleave(dense, sparse, share, limit)
