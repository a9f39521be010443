"""Ranking after a restart (issue 4): indexes rebuilt from the store rank as before.

The cause of the old nondeterminism: many chunks with the same text (boilerplate) gave
HNSW thousands of identical vectors; they crowd the graph's neighbour lists, and which
items become unreachable depends on the insertion order. The store returns chunks in
its own order (Milvus: by primary key), not in ingestion order, so after a restart the
planted fact could vanish from the dense list, tie with a boilerplate chunk in RRF, and
lose the tie. Ties in BM25 and RRF were also broken by insertion or list order.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from tierline.rag.bm25 import BM25Index
from tierline.rag.dense import DenseIndex
from tierline.rag.fusion import reciprocal_rank_fusion
from tierline.rag.records import Chunk
from tierline.rag.service import RagCore
from tierline.rag.store import MemoryChunkStore

from tests.unit.rag_fakes import DIM, HashEmbedder, word_offsets
from tests.unit.test_rag_service import FACTS, SETTINGS


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("order", ["facts-first", "facts-last", "by-id", "shuffled"])
def test_dense_search_finds_the_nearest_among_thousands_of_duplicates(seed, order) -> None:
    rng = np.random.default_rng(seed)
    facts = unit(rng.normal(size=(6, DIM)))
    boiler = unit(rng.normal(size=(3, DIM)))
    items = [(f"fact{i}", facts[i]) for i in range(6)]
    items += [(f"bulk{j:04d}", boiler[j % 3]) for j in range(3000)]
    if order == "facts-last":
        items = items[6:] + items[:6]
    elif order == "by-id":
        items.sort(key=lambda kv: kv[0])
    elif order == "shuffled":
        items = [items[i] for i in rng.permutation(len(items))]
    index = DenseIndex(DIM, exact_max=0)  # the HNSW graph, not the small-index scan
    for i in range(0, len(items), 8):  # in batches, as ingestion adds them
        part = items[i : i + 8]
        index.add([p[0] for p in part], np.stack([p[1] for p in part]))
    assert len(index) == 3006 and index.distinct == 9 and not index.exact
    query = unit((facts[0] + 0.3 * unit(rng.normal(size=(1, DIM)))[0])[None, :])[0]
    exact = sorted(
        ((item_id, float(vec @ query)) for item_id, vec in items), key=lambda h: (-h[1], h[0])
    )
    got = index.search(query, 50)
    assert [i for i, _ in got] == [i for i, _ in exact[:50]]
    assert got[0][0] == "fact0"
    # A filter that admits one duplicate, and removal of whole groups.
    only = index.search(query, 3, allow=lambda i: i in {"bulk0001", "fact3"})
    assert {i for i, _ in only} == {"bulk0001", "fact3"}
    index.remove([f"bulk{j:04d}" for j in range(0, 3000, 3)])
    assert index.distinct == 8 and len(index) == 2006


def test_bm25_ties_are_broken_by_id_not_insertion_order() -> None:
    docs = [(f"d{i:02d}", "same words here") for i in range(20)] + [("top", "words words")]
    results = []
    for items in (docs, docs[::-1], sorted(docs, key=lambda kv: kv[1] + kv[0][::-1])):
        idx = BM25Index()
        idx.add(items)
        results.append(idx.search("words here", 5))
        results.append(idx.search("words here", 5, allow=lambda i: i != "d00"))
    assert results[0] == results[2] == results[4]
    assert results[1] == results[3] == results[5]
    assert [i for i, _ in results[0]] == ["d00", "d01", "d02", "d03", "d04"]


def test_rrf_ties_do_not_depend_on_list_order() -> None:
    a = reciprocal_rank_fusion([["x", "y"], ["z", "w"]])
    b = reciprocal_rank_fusion([["z", "w"], ["x", "y"]])
    assert a == b and [i for i, _ in a] == ["x", "z", "w", "y"]


class ByIdStore(MemoryChunkStore):
    """Loads in primary-key order, as Milvus does, not in ingestion order."""

    def load(self, name: str, batch: int = 2000) -> Iterator[tuple[list[Chunk], np.ndarray]]:
        rows = sorted(self.collections[name].values(), key=lambda row: row[0].chunk_id)
        for i in range(0, len(rows), batch):
            part = rows[i : i + batch]
            yield [ch for ch, _ in part], np.stack([v for _, v in part])


QUERIES = ["capital of Zorbania", "Velmora salt", "Hauptstadt Brindle", "filler text", "x"]


async def test_ranking_is_the_same_after_a_rebuild_from_the_store() -> None:
    store = ByIdStore()
    core = RagCore(SETTINGS, store, HashEmbedder(), word_offsets)
    await core.start()
    await core.create_collection("t", "kb")
    await core.ingest("t", "kb", FACTS)
    for n in range(60):  # boilerplate: mostly identical chunks, as in the cluster test
        bulk = [
            {"id": f"bulk-{n}-{i}", "text": f"bulkword{n}x{i} " + "filler text " * 40}
            for i in range(8)
        ]
        await core.ingest("t", "kb", bulk)
    before = {q: await core.search("t", "kb", q, top_k=5) for q in QUERIES}
    assert before["capital of Zorbania"][0]["document_id"] == "zorbania"

    again = RagCore(SETTINGS, store, HashEmbedder(), word_offsets)
    await again.start()
    after = {q: await again.search("t", "kb", q, top_k=5) for q in QUERIES}
    assert after == before
