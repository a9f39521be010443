"""RAG filters as set operations with a work cap and a deadline (issue 27): the set
evaluation admits exactly what the predicate admits, a filter within the term caps that
would look at too many metadata values gets 400 before it runs long, and a search checks
candidates by set lookup. No Ray, no Milvus."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tierline.rag.filters import MAX_FILTER_WORK, FilterScan, matching_ids, parse_filter
from tierline.rag.records import Chunk, RagError
from tierline.rag.searcher import InProcessSearcher, SearchSettings
from tierline.rag.store import MemoryChunkStore

KEYS = ["lang", "year", "tag", "document_id"]
_value = st.one_of(
    st.sampled_from(["en", "de", "a", "b"]), st.integers(0, 5), st.booleans(), st.floats(0, 5)
)


def _leaf() -> st.SearchStrategy[dict[str, Any]]:
    cond = st.one_of(
        _value,
        st.fixed_dictionaries({"$eq": _value}),
        st.fixed_dictionaries({"$ne": _value}),
        st.fixed_dictionaries({"$gte": st.integers(0, 5)}),
        st.fixed_dictionaries({"$lt": st.sampled_from(["b", "e", 3])}),
        st.fixed_dictionaries({"$in": st.lists(_value, max_size=4)}),
        st.fixed_dictionaries({"$nin": st.lists(_value, max_size=4)}),
    )
    return st.dictionaries(st.sampled_from(KEYS), cond, min_size=1, max_size=2)


filters = st.recursive(
    _leaf(),
    lambda inner: st.one_of(
        st.fixed_dictionaries({"$and": st.lists(inner, min_size=1, max_size=4)}),
        st.fixed_dictionaries({"$or": st.lists(inner, min_size=1, max_size=4)}),
        st.fixed_dictionaries({"$not": inner}),
    ),
    max_leaves=12,
)
metadata = st.dictionaries(
    st.sampled_from(KEYS[:3]),
    st.one_of(_value, st.lists(st.integers(0, 3), max_size=2), st.none()),
    max_size=3,
)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(filters, st.lists(metadata, min_size=1, max_size=30))
def test_the_set_evaluation_admits_exactly_what_the_predicate_admits(
    spec: dict[str, Any], metas: list[dict[str, Any]]
) -> None:
    rows = {f"c{i}": (f"d{i % 4}", m) for i, m in enumerate(metas)}
    pred = parse_filter(spec)
    assert pred is not None
    want = {cid for cid, (doc, meta) in rows.items() if pred(doc, meta)}
    assert matching_ids(spec, rows) == want


def rows_of(n: int) -> dict[str, tuple[str, dict[str, Any]]]:
    return {f"c{i}": (f"d{i}", {"lang": "en", f"k{i % 50}": i}) for i in range(n)}


def test_equalities_on_one_key_under_or_are_one_set_lookup() -> None:
    rows = rows_of(1000)
    spec = {"$or": [{"lang": f"x{i}"} for i in range(1000)] + [{"lang": {"$in": ["en"]}}]}
    scan = FilterScan(rows)
    assert scan.run(spec) == set(rows)
    assert scan.work == 2 * len(rows)  # one column read, one scan: not 1,001 scans


def test_a_filter_within_the_term_caps_that_would_run_long_gets_400() -> None:
    """1,000 range conditions on 1,000 chunks: within the size caps, but 1M value checks
    per search (seconds of the RAG replica every tenant shares) before this change."""
    rows = rows_of(1000)
    spec = {"$or": [{f"k{i}": {"$gte": i, "$lte": i + 5}} for i in range(1000)]}
    parse_filter(spec)  # within the term caps
    scan = FilterScan(rows, deadline_s=600)  # the work cap, however slow this machine
    with pytest.raises(RagError) as err:
        scan.run(spec)
    assert err.value.status == 400 and "work cap" in err.value.message
    assert scan.work <= MAX_FILTER_WORK + len(rows)


def test_the_deadline_stops_a_slow_evaluation() -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += 0.2  # each leaf scan "takes" 0.2 s
        return now[0]

    spec = {"$and": [{f"k{i}": {"$gte": 0}} for i in range(10)]}
    with pytest.raises(RagError) as err:
        FilterScan(rows_of(10), deadline_s=1.0, clock=clock).run(spec)
    assert "deadline" in err.value.message


def test_an_in_process_search_refuses_the_costly_filter_and_serves_the_cheap_one() -> None:
    searcher = InProcessSearcher(MemoryChunkStore(), SearchSettings(dim=8))
    searcher.create("c")
    chunks = [
        Chunk(f"c{i}", f"d{i}", 0, f"text number {i}", {"lang": "en" if i % 2 else "de", "n": i})
        for i in range(1000)
    ]
    vectors = np.random.default_rng(0).normal(size=(1000, 8)).astype(np.float32)
    searcher.collections["c"].put(chunks, vectors)
    hits = searcher.search("c", "text", vectors[0], 5, {"lang": "de"})
    assert hits and all(h.chunk.metadata["lang"] == "de" for h in hits)
    costly = {"$or": [{f"k{i}": {"$gte": i, "$lte": i + 5}} for i in range(1000)]}
    with pytest.raises(RagError) as err:
        searcher.search("c", "text", vectors[0], 5, costly)
    assert err.value.status == 400
