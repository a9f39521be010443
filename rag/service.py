"""The RAG core: validate, chunk, embed, store durably, index in memory, retrieve hybrid.

The durable `ChunkStore` is the source of truth; each collection's dense (HNSW) and BM25
indexes are rebuilt from it in `start()`. Writes reach the store (flushed) before they
are acknowledged or indexed, so an acknowledged document survives a crash. All
collaborators (store, embedder, tokenizer) are passed in.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tierline.rag.bm25 import BM25Index
from tierline.rag.chunking import Tokenize, chunk_document
from tierline.rag.dense import DenseIndex
from tierline.rag.embed import Embedder
from tierline.rag.filters import KEY, parse_filter
from tierline.rag.fusion import reciprocal_rank_fusion
from tierline.rag.records import Chunk, Document, Hit, RagError
from tierline.rag.store import ChunkStore

COLLECTION_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
DOCUMENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}$")


@dataclass(frozen=True)
class RagSettings:
    dim: int = 384
    chunk_tokens: int = 200
    chunk_overlap_tokens: int = 40
    max_document_bytes: int = 5 << 20
    max_documents_per_request: int = 256
    max_metadata_bytes: int = 4096
    max_top_k: int = 50
    candidates: int = 50
    rrf_k: int = 60
    hnsw_m: int = 16
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 128
    exact_search_max_vectors: int = 10_000


@dataclass
class _Collection:
    dense: DenseIndex
    sparse: BM25Index = field(default_factory=BM25Index)
    chunks: dict[str, Chunk] = field(default_factory=dict)
    documents: dict[str, list[str]] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def put(self, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        # Same text, one HNSW label: boilerplate chunks must not crowd the graph.
        self.dense.add([c.chunk_id for c in chunks], vectors, keys=[c.text for c in chunks])
        self.sparse.add((c.chunk_id, c.text) for c in chunks)
        for c in chunks:
            self.chunks[c.chunk_id] = c
            self.documents.setdefault(c.document_id, []).append(c.chunk_id)

    def drop(self, document_id: str) -> int:
        ids = self.documents.pop(document_id, [])
        self.dense.remove(ids)
        self.sparse.remove(ids)
        for i in ids:
            self.chunks.pop(i, None)
        return len(ids)


def bad(message: str, code: str = "invalid_request", param: str | None = None) -> RagError:
    return RagError(400, message, code=code, param=param)


def validate_collection_name(name: str) -> str:
    if not isinstance(name, str) or not COLLECTION_NAME.match(name):
        raise bad(
            f"collection name {name!r} must match {COLLECTION_NAME.pattern} "
            "(lowercase letter first, then lowercase letters, digits, underscores)",
            code="invalid_collection_name",
            param="name",
        )
    return name


def validate_documents(raw: Any, settings: RagSettings) -> list[Document]:
    """Documents from a request's `documents` list, all checked before anything is written."""
    if not isinstance(raw, list) or not raw:
        raise bad("documents must be a non-empty list", param="documents")
    if len(raw) > settings.max_documents_per_request:
        raise bad(
            f"{len(raw)} documents; at most {settings.max_documents_per_request} per request",
            code="too_many_documents",
            param="documents",
        )
    docs: list[Document] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        where = f"documents[{i}]"
        if not isinstance(item, Mapping):
            raise bad(f"{where} must be an object with id, text, metadata", param=where)
        extra = set(item) - {"id", "text", "metadata"}
        if extra:
            raise bad(f"{where}: unknown field(s) {sorted(extra)}", param=where)
        doc_id, text, meta = item.get("id"), item.get("text"), item.get("metadata") or {}
        if not isinstance(doc_id, str) or not DOCUMENT_ID.match(doc_id):
            raise bad(f"{where}.id must match {DOCUMENT_ID.pattern}", "invalid_document_id", where)
        if doc_id in seen:
            raise bad(f"{where}.id {doc_id!r} appears twice in this request", param=where)
        seen.add(doc_id)
        if not isinstance(text, str) or not text.strip():
            raise bad(f"{where} ({doc_id}): text is empty", "empty_document", where)
        size = len(text.encode())
        if size > settings.max_document_bytes:
            raise RagError(
                413,
                f"{where} ({doc_id}): {size} bytes; the limit is {settings.max_document_bytes}",
                code="document_too_large",
                param=where,
            )
        if not isinstance(meta, Mapping) or not all(
            isinstance(k, str) and KEY.match(k) for k in meta
        ):
            raise bad(f"{where}.metadata must be an object with simple keys", param=where)
        try:
            encoded = json.dumps(meta)
        except (TypeError, ValueError):
            raise bad(f"{where}.metadata must be JSON", param=where) from None
        if len(encoded) > settings.max_metadata_bytes:
            raise bad(f"{where}.metadata is over {settings.max_metadata_bytes} bytes", param=where)
        docs.append(Document(doc_id, text, dict(meta)))
    return docs


def _load_all(store: ChunkStore, name: str) -> list[tuple[list[Chunk], np.ndarray]]:
    return list(store.load(name))


class RagCore:
    def __init__(
        self, settings: RagSettings, store: ChunkStore, embedder: Embedder, tokenize: Tokenize
    ) -> None:
        self.settings = settings
        self.store = store
        self.embedder = embedder
        self.tokenize = tokenize
        self._collections: dict[str, _Collection] = {}

    def _new(self) -> _Collection:
        s = self.settings
        return _Collection(
            DenseIndex(
                s.dim,
                s.hnsw_m,
                s.hnsw_ef_construction,
                s.hnsw_ef_search,
                exact_max=s.exact_search_max_vectors,
            )
        )

    async def start(self) -> None:
        await asyncio.to_thread(self.store.start)
        for name in await asyncio.to_thread(self.store.list_collections):
            col = self._new()
            for chunks, vectors in await asyncio.to_thread(_load_all, self.store, name):
                col.put(chunks, vectors)
            self._collections[name] = col

    def _get(self, name: str) -> _Collection:
        col = self._collections.get(name)
        if col is None:
            known = ", ".join(sorted(self._collections)) or "none"
            raise RagError(
                404,
                f"collection {name!r} does not exist (collections: {known})",
                code="collection_not_found",
                param="collection",
            )
        return col

    async def create_collection(self, name: str) -> dict[str, Any]:
        validate_collection_name(name)
        created = name not in self._collections
        if created:
            await asyncio.to_thread(self.store.create_collection, name, self.settings.dim)
            self._collections.setdefault(name, self._new())
        return {"name": name, "created": created}

    def list_collections(self) -> list[dict[str, Any]]:
        return [
            {"name": n, "documents": len(c.documents), "chunks": len(c.chunks)}
            for n, c in sorted(self._collections.items())
        ]

    async def ingest(self, name: str, raw_documents: Any) -> dict[str, Any]:
        col = self._get(name)
        docs = validate_documents(raw_documents, self.settings)
        s = self.settings
        per_doc = [
            chunk_document(d, self.tokenize, s.chunk_tokens, s.chunk_overlap_tokens) for d in docs
        ]
        for d, chunks in zip(docs, per_doc, strict=True):
            if not chunks:
                raise bad(f"document {d.id!r} has no text to index", "empty_document", "documents")
        chunks = [c for cs in per_doc for c in cs]
        vectors = await self.embedder.embed([c.text for c in chunks])
        async with col.lock:
            # One store call for the whole batch: it is validated and embedded by now.
            await asyncio.to_thread(
                self.store.replace_documents, name, [d.id for d in docs], chunks, vectors
            )
            for d in docs:
                col.drop(d.id)
            col.put(chunks, vectors)
        return {
            "collection": name,
            "documents": [
                {"id": d.id, "chunks": len(cs)} for d, cs in zip(docs, per_doc, strict=True)
            ],
            "chunks": len(chunks),
        }

    async def delete_document(self, name: str, document_id: str) -> dict[str, Any]:
        col = self._get(name)
        if document_id not in col.documents:
            raise RagError(
                404,
                f"document {document_id!r} is not in collection {name!r}",
                code="document_not_found",
                param="document_id",
            )
        async with col.lock:
            await asyncio.to_thread(self.store.delete_document, name, document_id)
            removed = col.drop(document_id)
        return {"collection": name, "id": document_id, "deleted": True, "chunks": removed}

    def _top_k(self, top_k: Any) -> int:
        if (
            not isinstance(top_k, int)
            or isinstance(top_k, bool)
            or not 1 <= top_k <= self.settings.max_top_k
        ):
            raise bad(
                f"top_k must be an integer from 1 to {self.settings.max_top_k}", param="top_k"
            )
        return top_k

    def retrieve(
        self, name: str, query: str, vector: np.ndarray, top_k: int, filter: Any = None
    ) -> list[Hit]:
        """Hybrid retrieval on a ready query vector: dense + BM25, fused by RRF (no I/O)."""
        col = self._get(name)
        top_k = self._top_k(top_k)
        pred = parse_filter(filter)
        allow: Callable[[str], bool] | None = None
        if pred is not None:
            chunks = col.chunks

            def allow(cid: str) -> bool:
                c = chunks.get(cid)
                return c is not None and pred(c.document_id, c.metadata)

        n = max(self.settings.candidates, top_k)
        dense = [i for i, _ in col.dense.search(vector, n, allow)]
        sparse = [i for i, _ in col.sparse.search(query, n, allow)]
        fused = reciprocal_rank_fusion([dense, sparse], k=self.settings.rrf_k, limit=top_k)
        return [Hit(col.chunks[i], score) for i, score in fused if i in col.chunks]

    async def search(
        self, name: str, query: Any, top_k: Any = 5, filter: Any = None
    ) -> list[dict[str, Any]]:
        self._get(name)
        if not isinstance(query, str) or not query.strip():
            raise bad("query must be a non-empty string", param="query")
        self._top_k(top_k)
        parse_filter(filter)  # a bad filter fails before the embedding is paid for
        vector = (await self.embedder.embed([query]))[0]
        return [h.as_result() for h in self.retrieve(name, query, vector, top_k, filter)]
