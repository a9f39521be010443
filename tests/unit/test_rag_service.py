"""RagCore over the in-memory store and honest fakes: ingest, replace, delete, search, errors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from tierline.rag.records import Chunk, RagError
from tierline.rag.service import RagCore, RagSettings
from tierline.rag.store import MemoryChunkStore, StoreWriteError
from tierline.rag.tenancy import physical_name

from tests.unit.rag_fakes import DIM, HashEmbedder, word_offsets

SETTINGS = RagSettings(dim=DIM, chunk_tokens=12, chunk_overlap_tokens=2, max_document_bytes=2000)

FACTS = [
    {
        "id": "zorbania",
        "text": "The capital of Zorbania is Quillport, a harbour city.",
        "metadata": {"lang": "en", "year": 2020},
    },
    {
        "id": "velmora",
        "text": "Velmora exports blue salt and copper wire to its neighbours.",
        "metadata": {"lang": "en", "year": 2023},
    },
    {
        "id": "brindle",
        "text": "Die Hauptstadt von Brindle ist Farnhold am grossen See.",
        "metadata": {"lang": "de", "year": 2021},
    },
]


async def started(store: MemoryChunkStore | None = None) -> tuple[RagCore, MemoryChunkStore]:
    store = store or MemoryChunkStore()
    core = RagCore(SETTINGS, store, HashEmbedder(), word_offsets)
    await core.start()
    return core, store


async def test_ingest_then_search_finds_the_planted_fact() -> None:
    core, _ = await started()
    assert (await core.create_collection("t", "kb"))["created"] is True
    assert (await core.create_collection("t", "kb"))["created"] is False
    out = await core.ingest("t", "kb", FACTS)
    assert [d["id"] for d in out["documents"]] == ["zorbania", "velmora", "brindle"]
    hits = await core.search("t", "kb", "capital of Zorbania", top_k=2)
    assert hits[0]["document_id"] == "zorbania" and "Quillport" in hits[0]["text"]
    assert set(hits[0]) == {"document_id", "chunk_id", "text", "score", "metadata"}
    assert hits[0]["metadata"] == {"lang": "en", "year": 2020}
    assert core.list_collections("t") == [{"name": "kb", "documents": 3, "chunks": 3}]


async def test_filters_restrict_results() -> None:
    core, _ = await started()
    await core.create_collection("t", "kb")
    await core.ingest("t", "kb", FACTS)
    hits = await core.search("t", "kb", "capital", top_k=5, filter={"lang": "de"})
    assert {h["document_id"] for h in hits} == {"brindle"}
    hits = await core.search("t", "kb", "capital", top_k=5, filter={"year": {"$gte": 2021}})
    assert {h["document_id"] for h in hits} <= {"velmora", "brindle"}


async def test_reingest_replaces_and_delete_removes() -> None:
    core, store = await started()
    await core.create_collection("t", "kb")
    long_text = " ".join(f"word{i}" for i in range(40))
    await core.ingest("t", "kb", [{"id": "d", "text": long_text}])
    assert core.list_collections("t")[0]["chunks"] == 4
    await core.ingest("t", "kb", [{"id": "d", "text": "short replacement about lighthouses"}])
    assert core.list_collections("t")[0]["chunks"] == 1
    assert len(store.collections[physical_name("t", "kb")]) == 1
    hits = await core.search("t", "kb", "word3", top_k=5)
    assert all("word3" not in h["text"] for h in hits)
    await core.delete_document("t", "kb", "d")
    assert await core.search("t", "kb", "lighthouses", top_k=5) == []
    with pytest.raises(RagError) as err:
        await core.delete_document("t", "kb", "d")
    assert err.value.status == 404


async def test_restart_rebuilds_indexes_from_the_store() -> None:
    core, store = await started()
    await core.create_collection("t", "kb")
    await core.ingest("t", "kb", FACTS)
    again, _ = await started(store)
    hits = await again.search("t", "kb", "Velmora salt", top_k=1)
    assert hits[0]["document_id"] == "velmora"


@pytest.mark.parametrize(
    ("docs", "status", "code"),
    [
        ([], 400, None),
        ([{"id": "a", "text": "   "}], 400, "empty_document"),
        ([{"id": "a", "text": "x" * 3000}], 413, "document_too_large"),
        ([{"id": "a b", "text": "x"}], 400, "invalid_document_id"),
        ([{"id": "a", "text": "x"}, {"id": "a", "text": "y"}], 400, None),
        ([{"id": "a", "text": "x", "extra": 1}], 400, None),
        ([{"id": "a", "text": "x", "metadata": {"bad key": 1}}], 400, None),
        (["not an object"], 400, None),
    ],
)
async def test_bad_documents_are_4xx_and_write_nothing(docs, status, code) -> None:
    core, store = await started()
    await core.create_collection("t", "kb")
    good = {"id": "ok", "text": "a fine document"}
    with pytest.raises(RagError) as err:
        await core.ingest("t", "kb", [good, *docs] if docs else docs)
    assert err.value.status == status
    if code:
        assert err.value.code == code
    assert (
        store.collections[physical_name("t", "kb")] == {}
        and core.list_collections("t")[0]["documents"] == 0
    )


class FailingStore(MemoryChunkStore):
    def replace_documents(
        self, name: str, document_ids: Sequence[str], chunks: Sequence[Chunk], vectors: np.ndarray
    ) -> None:
        raise StoreWriteError("disk full")


async def test_a_failed_store_write_leaves_no_document_indexed() -> None:
    core = RagCore(SETTINGS, FailingStore(), HashEmbedder(), word_offsets)
    await core.start()
    await core.create_collection("t", "kb")
    with pytest.raises(RagError) as err:
        await core.ingest("t", "kb", FACTS)
    assert err.value.status == 503 and err.value.code == "store_write_failed"
    assert core.list_collections("t")[0]["chunks"] == 0
    assert await core.search("t", "kb", "Zorbania", top_k=3) == []


async def test_unknown_collection_bad_name_query_top_k_and_filter() -> None:
    core, _ = await started()
    cases = [
        (core.search("t", "nope", "q"), 404),
        (core.ingest("t", "nope", FACTS), 404),
        (core.create_collection("t", "Bad-Name"), 400),
    ]
    for coro, status in cases:
        with pytest.raises(RagError) as err:
            await coro
        assert err.value.status == status
    await core.create_collection("t", "kb")
    embedder = core.embedder
    assert isinstance(embedder, HashEmbedder)
    before = embedder.calls
    for kwargs in (
        {"query": ""},
        {"query": "q", "top_k": 0},
        {"query": "q", "top_k": 99},
        {"query": "q", "filter": {"$bad": 1}},
    ):
        with pytest.raises(RagError) as err:
            await core.search("t", "kb", **kwargs)  # type: ignore[arg-type]
        assert err.value.status == 400
    assert embedder.calls == before  # rejected before paying for an embedding


async def test_many_documents_each_found_by_its_own_words() -> None:
    core, _ = await started()
    await core.create_collection("t", "kb")
    docs = [{"id": f"d{i}", "text": f"token{i} appears only in document {i}"} for i in range(200)]
    await core.ingest("t", "kb", docs)
    for i in range(0, 200, 17):
        hits = await core.search("t", "kb", f"token{i}", top_k=3)
        assert hits[0]["document_id"] == f"d{i}"
