"""Reciprocal rank fusion: merge ranked lists by sum of 1 / (k + rank)."""

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
