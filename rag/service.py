"""The RAG core: validate, chunk, embed, store durably, index in memory, retrieve hybrid.

The durable `ChunkStore` is the source of truth; each collection's dense (HNSW) and BM25
indexes are rebuilt from it in `start()`. Writes reach the store (flushed) before they
are acknowledged or indexed, so an acknowledged document survives a crash; a re-ingest
writes the new version before the old one goes (`rag.versions`), and the index changes
only after the store took the write, so the two always agree. All collaborators (store,
embedder, tokenizer) are passed in.

Every operation acts for one tenant (`rag.tenancy`): another tenant's collection answers
exactly as one that does not exist.
"""

from __future__ import annotations

import asyncio
import json
import logging
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
from tierline.rag.fusion import reciprocal_rank_fusion, weighted_fusion
from tierline.rag.records import Chunk, Document, Hit, RagError
from tierline.rag.store import CHUNK_FIELDS, ChunkStore, StoreWriteError
from tierline.rag.tenancy import owner_of, physical_name
from tierline.rag.versions import ChunkRef, new_version, resolve

COLLECTION_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
DOCUMENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}$")
_logger = logging.getLogger("ray.serve.tierline.rag")


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
    fusion: str = "weighted"
    bm25_weight: float = 0.4
    bm25_weight_rare: float = 0.8
    rare_term_max_chunks: int = 3
    hnsw_m: int = 16
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 128
    exact_search_max_vectors: int = 10_000
    legacy_tenant: str | None = None


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

    def replace(self, document_ids: Sequence[str], chunks: Sequence[Chunk], vectors: Any) -> None:
        for d in document_ids:
            self.drop(d)
        self.put(chunks, vectors)

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


def _not_found(name: str) -> RagError:
    return RagError(
        404,
        f"collection {name!r} does not exist",
        code="collection_not_found",
        param="collection",
    )


class RagCore:
    def __init__(
        self, settings: RagSettings, store: ChunkStore, embedder: Embedder, tokenize: Tokenize
    ) -> None:
        self.settings = settings
        self.store = store
        self.embedder = embedder
        self.tokenize = tokenize
        self._collections: dict[str, _Collection] = {}  # by physical (store) name

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
        names = await asyncio.to_thread(self.store.list_collections)
        owned = [n for n in names if owner_of(n) is not None]
        for name in [n for n in names if owner_of(n) is None]:
            adopted = await asyncio.to_thread(self._adopt, name)
            if adopted is not None:
                owned.append(adopted)
        for name in owned:
            await self._load(name)

    def _adopt(self, name: str) -> str | None:
        """A collection made before tenancy, renamed into `legacy_tenant`'s namespace.

        Only collections with tierline's chunk schema and a valid name are taken; every
        other collection on a shared server is left alone."""
        tenant = self.settings.legacy_tenant
        if not COLLECTION_NAME.match(name) or self.store.field_names(name) != set(CHUNK_FIELDS):
            return None
        if tenant is None:
            _logger.warning(
                "RAG collection %r predates tenancy and is not served; set rag.legacy_tenant "
                "to give it to a tenant",
                name,
            )
            return None
        target = physical_name(tenant, name)
        self.store.rename_collection(name, target)
        _logger.info("RAG collection %r adopted by tenant %r (stored as %s)", name, tenant, target)
        return target

    async def _load(self, physical: str) -> None:
        col = self._new()
        loaded = await asyncio.to_thread(_load_all, self.store, physical)
        keep, drop = resolve(ChunkRef(c.chunk_id, c.document_id) for cs, _ in loaded for c in cs)
        for chunks, vectors in loaded:
            rows = [i for i, c in enumerate(chunks) if c.chunk_id in keep]
            if rows:
                col.put([chunks[i] for i in rows], vectors[rows])
        if drop:
            # Superseded or half-written versions: gone from the store, never served.
            await asyncio.to_thread(self.store.delete_chunks, physical, sorted(drop))
            _logger.info("RAG collection %s: %d stale chunks removed", physical, len(drop))
        self._collections[physical] = col

    def _get(self, tenant: str, name: str) -> tuple[str, _Collection]:
        if not isinstance(name, str) or not COLLECTION_NAME.match(name):
            raise _not_found(str(name))
        physical = physical_name(tenant, name)
        col = self._collections.get(physical)
        if col is None:
            raise _not_found(name)
        return physical, col

    async def create_collection(self, tenant: str, name: str) -> dict[str, Any]:
        validate_collection_name(name)
        physical = physical_name(tenant, name)
        created = physical not in self._collections
        if created:
            await asyncio.to_thread(self.store.create_collection, physical, self.settings.dim)
            self._collections.setdefault(physical, self._new())
        return {"name": name, "created": created}

    def list_collections(self, tenant: str, all_tenants: bool = False) -> list[dict[str, Any]]:
        """The tenant's collections; every tenant's (each with its owner) for an operator."""
        out = []
        for physical, c in sorted(self._collections.items()):
            owner = owner_of(physical)
            if owner is None or not (all_tenants or owner[0] == tenant):
                continue
            row: dict[str, Any] = {
                "name": owner[1],
                "documents": len(c.documents),
                "chunks": len(c.chunks),
            }
            if all_tenants:
                row["tenant"] = owner[0]
            out.append(row)
        return sorted(out, key=lambda r: (r["name"], r.get("tenant", "")))

    async def ingest(self, tenant: str, name: str, raw_documents: Any) -> dict[str, Any]:
        physical, col = self._get(tenant, name)
        docs = validate_documents(raw_documents, self.settings)
        s = self.settings
        version = new_version()
        per_doc = [
            await asyncio.to_thread(
                chunk_document, d, self.tokenize, s.chunk_tokens, s.chunk_overlap_tokens, version
            )
            for d in docs
        ]
        for d, chunks in zip(docs, per_doc, strict=True):
            if not chunks:
                raise bad(f"document {d.id!r} has no text to index", "empty_document", "documents")
        chunks = [c for cs in per_doc for c in cs]
        vectors = await self.embedder.embed([c.text for c in chunks])
        async with col.lock:
            # One store call for the whole batch: it is validated and embedded by now. The
            # index changes only once the store has the new version.
            try:
                await asyncio.to_thread(
                    self.store.replace_documents, physical, [d.id for d in docs], chunks, vectors
                )
            except StoreWriteError as err:
                raise RagError(
                    503,
                    f"{err}; the documents' previous versions are unchanged",
                    code="store_write_failed",
                ) from None
            await asyncio.to_thread(col.replace, [d.id for d in docs], chunks, vectors)
        return {
            "collection": name,
            "documents": [
                {"id": d.id, "chunks": len(cs)} for d, cs in zip(docs, per_doc, strict=True)
            ],
            "chunks": len(chunks),
        }

    async def delete_document(self, tenant: str, name: str, document_id: str) -> dict[str, Any]:
        physical, col = self._get(tenant, name)
        if document_id not in col.documents:
            raise RagError(
                404,
                f"document {document_id!r} is not in collection {name!r}",
                code="document_not_found",
                param="document_id",
            )
        async with col.lock:
            await asyncio.to_thread(self.store.delete_document, physical, document_id)
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
        self,
        tenant: str,
        name: str,
        query: str,
        vector: np.ndarray,
        top_k: int,
        filter: Any = None,
    ) -> list[Hit]:
        """Hybrid retrieval on a ready query vector: dense + BM25, fused by RRF (no I/O)."""
        _, col = self._get(tenant, name)
        top_k = self._top_k(top_k)
        pred = parse_filter(filter)
        allow: Callable[[str], bool] | None = None
        if pred is not None:
            chunks = col.chunks

            def allow(cid: str) -> bool:
                c = chunks.get(cid)
                return c is not None and pred(c.document_id, c.metadata)

        n = max(self.settings.candidates, top_k)
        dense = col.dense.search(vector, n, allow)
        sparse = col.sparse.search(query, n, allow)
        s = self.settings
        if s.fusion == "rrf":
            ranked = [[i for i, _ in dense], [i for i, _ in sparse]]
            fused = reciprocal_rank_fusion(ranked, k=s.rrf_k, limit=top_k)
        else:
            rarest = col.sparse.rarest(query)
            rare = rarest is not None and rarest <= s.rare_term_max_chunks
            weight = s.bm25_weight_rare if rare else s.bm25_weight
            fused = weighted_fusion(dense, sparse, weight, limit=top_k)
        return [Hit(col.chunks[i], score) for i, score in fused if i in col.chunks]

    async def search(
        self, tenant: str, name: str, query: Any, top_k: Any = 5, filter: Any = None
    ) -> list[dict[str, Any]]:
        self._get(tenant, name)
        if not isinstance(query, str) or not query.strip():
            raise bad("query must be a non-empty string", param="query")
        self._top_k(top_k)
        parse_filter(filter)  # a bad filter fails before the embedding is paid for
        vector = (await self.embedder.embed([query]))[0]
        _, col = self._get(tenant, name)
        async with col.lock:  # off the event loop, and never beside a write to the index
            hits = await asyncio.to_thread(
                self.retrieve, tenant, name, query, vector, top_k, filter
            )
        return [h.as_result() for h in hits]
