"""Seeds of the `handbook` corpus of `bench.rag_quality_sets`: made-up staff policy paragraphs.

Each seed is (document id, policy paragraph, two questions about it). The questions are
written in other words than the paragraph: what an employee would type, not the policy's
own terms, so lexical overlap is low and the meaning has to carry the match (the kind of
set where dense retrieval wins and BM25 alone does not). Written for tierline; no source.

The seeds themselves are data: bench/data/rag_handbook_seeds.json, in this order.
"""

from __future__ import annotations

import json
from pathlib import Path

SEEDS = Path(__file__).resolve().parent / "data" / "rag_handbook_seeds.json"


def _load() -> list[tuple[str, str, tuple[str, str]]]:
    rows = json.loads(SEEDS.read_text())
    return [(r["id"], r["policy"], (r["questions"][0], r["questions"][1])) for r in rows]


POLICIES: list[tuple[str, str, tuple[str, str]]] = _load()
