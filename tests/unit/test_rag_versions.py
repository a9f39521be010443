"""Re-ingest is all-or-nothing: versioned chunk ids, resolution, byte-bounded chunks."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest
from tierline.rag.chunking import MAX_CHUNK_BYTES, chunk_document, chunk_spans
from tierline.rag.records import Chunk, Document, RagError
from tierline.rag.service import RagCore, RagSettings
from tierline.rag.store import MAX_TEXT_BYTES, MemoryChunkStore, StoreWriteError
from tierline.rag.tenancy import physical_name
from tierline.rag.versions import ChunkRef, new_version, resolve, version_of, versioned_id

from tests.unit.rag_fakes import DIM, HashEmbedder, word_offsets

SETTINGS = RagSettings(dim=DIM, chunk_tokens=4, chunk_overlap_tokens=0, max_document_bytes=100_000)


def refs(*ids: str) -> list[ChunkRef]:
    return [ChunkRef(i, i.split("#")[0]) for i in ids]


def test_the_newest_complete_version_wins_and_the_rest_is_garbage() -> None:
    old = [versioned_id("d", 1, i, 2) for i in range(2)]
    new = [versioned_id("d", 2, i, 3) for i in range(3)]
    assert resolve(refs(*old, *new)) == (set(new), set(old))
    # The newer version was cut short: the old one stays, the fragment goes.
    assert resolve(refs(*old, *new[:2])) == (set(old), set(new[:2]))
    # Unversioned ids (before versioning) are version 0, complete.
    assert resolve(refs("e#0", "e#1")) == ({"e#0", "e#1"}, set())
    assert resolve(refs("e#0", *[versioned_id("e", 5, 0, 1)])) == (
        {versioned_id("e", 5, 0, 1)},
        {"e#0"},
    )
    # A first ingest that never completed serves nothing.
    assert resolve(refs(versioned_id("f", 3, 0, 2))) == (set(), {versioned_id("f", 3, 0, 2)})


def test_versions_increase_and_parse_back() -> None:
    a, b = new_version(), new_version()
    assert b > a
    assert version_of(versioned_id("doc.v1:x@y", b, 7, 9)) == (b, 9)
    assert version_of("doc#3") == (0, None)


def test_chunks_are_bounded_in_bytes_not_characters() -> None:
    # One "token" of 40,001 three-byte characters: 120,003 bytes in a single token span.
    text = "€" * 40_001
    spans = chunk_spans(text, [(0, len(text))], 200, 0)
    assert len(spans) == 3
    assert all(len(text[b:e].encode()) <= MAX_CHUNK_BYTES for b, e in spans)
    assert "".join(text[b:e] for b, e in spans) == text
    chunks = chunk_document(Document("d", text), lambda t: [(0, len(t))], 200, 0, version=4)
    assert [version_of(c.chunk_id) for c in chunks] == [(4, 3)] * 3


class FlakyStore(MemoryChunkStore):
    """A store whose write dies part-way: some new chunks land, then it fails."""

    fail = False

    def replace_documents(
        self, name: str, document_ids: Sequence[str], chunks: Sequence[Chunk], vectors: np.ndarray
    ) -> None:
        if self.fail:
            rows = self.collections[name]
            for ch, vec in list(zip(chunks, vectors, strict=True))[:2]:
                rows[ch.chunk_id] = (ch, np.asarray(vec, dtype=np.float32))
            raise StoreWriteError("connection reset")
        super().replace_documents(name, document_ids, chunks, vectors)


def test_a_failed_reingest_keeps_the_old_version_in_index_and_store_after_restart() -> None:
    store = FlakyStore()

    async def run() -> None:
        core = RagCore(SETTINGS, store, HashEmbedder(), word_offsets)
        await core.start()
        await core.create_collection("t", "kb")
        await core.ingest("t", "kb", [{"id": "d", "text": "alpha beta gamma delta epsilon"}])
        store.fail = True
        with pytest.raises(RagError) as err:
            await core.ingest(
                "t", "kb", [{"id": "d", "text": "one two three four five six seven eight nine ten"}]
            )
        assert err.value.status == 503
        # The live index still serves the old version only.
        assert (await core.search("t", "kb", "epsilon", top_k=5))[0]["text"].endswith("epsilon")
        assert await core.search("t", "kb", "seven", top_k=5) == [] or all(
            "seven" not in h["text"] for h in await core.search("t", "kb", "seven", top_k=5)
        )
        # A restart reads the store (old version + a fragment of the new) and agrees.
        store.fail = False
        again = RagCore(SETTINGS, store, HashEmbedder(), word_offsets)
        await again.start()
        texts = {h["text"] for h in await again.search("t", "kb", "alpha seven", top_k=10)}
        assert texts == {"alpha beta gamma delta", "epsilon"}
        # and the fragment is gone from the store.
        stored = {c.chunk_id for c, _ in store.collections[physical_name("t", "kb")].values()}
        assert all(version_of(i)[1] == 2 for i in stored) and len(stored) == 2

    asyncio.run(run())


def test_oversized_chunks_are_refused_by_the_store_not_truncated() -> None:
    store = MemoryChunkStore()
    store.create_collection("kb", DIM)
    big = Chunk("d#0", "d", 0, "é" * (MAX_TEXT_BYTES // 2 + 1))
    with pytest.raises(StoreWriteError, match="bytes"):
        store.replace_documents("kb", ["d"], [big], np.ones((1, DIM), dtype=np.float32))
