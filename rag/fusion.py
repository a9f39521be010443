"""Fusing the dense and BM25 rankings.

`weighted_fusion` (the default) adds the scores, each normalised per query: dense cosine
min-max over its candidates, BM25 divided by its best. The BM25 share is higher when the
query holds a rare term (`RagCore.retrieve`): names, codes and identifiers are what
lexical search finds and embeddings blur. `reciprocal_rank_fusion` (sum of 1 / (k + rank))
is kept as an option; on the benchmark it lost most of BM25's entity look-ups
(README, RAG).
"""

from __future__ import annotations

from collections.abc import Sequence


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


def weighted_fusion(
    dense: Sequence[tuple[str, float]],
    sparse: Sequence[tuple[str, float]],
    sparse_weight: float,
    limit: int | None = None,
) -> list[tuple[str, float]]:
    """Ids by (1 - w) * normalised dense + w * normalised BM25, ties by id."""
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
    order = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    return order if limit is None else order[:limit]
