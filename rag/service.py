"""The RAG core: validate, chunk, embed, store durably, retrieve hybrid.

The durable `ChunkStore` is the source of truth. Search runs in a `Searcher`
(`rag.searcher`): with an embedded store, in-process HNSW + BM25 indexes rebuilt from the
store in `start()`; with a Milvus server, in Milvus itself (`rag.milvus_search`), so the
replica holds no index and several replicas may share the server. Writes reach the store
(flushed) before they are acknowledged or indexed, so an acknowledged document survives a
crash; a re-ingest writes the new version before the old one goes (`rag.versions`), and
the searcher hears of a change only after the store took it. All collaborators (store,
searcher, embedder, tokenizer) are passed in or picked by the store's URI.

Every operation acts for one tenant (`rag.tenancy`): another tenant's collection answers
exactly as one that does not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from tierline.rag.chunking import Tokenize, chunk_document
from tierline.rag.embed import EmbeddingService
from tierline.rag.filters import KEY, parse_filter
from tierline.rag.milvus_filter import to_expression
from tierline.rag.records import Document, Hit, RagError
from tierline.rag.searcher import Collection, InProcessSearcher, Searcher, SearchSettings
from tierline.rag.store import CHUNK_FIELDS, SPARSE_FIELD, ChunkStore, StoreWriteError
from tierline.rag.tenancy import owner_of, physical_name
from tierline.rag.versions import new_version
from tierline.rag.work import off_loop

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
    max_collections_per_tenant: int = 100
    max_metadata_bytes: int = 4096
    max_top_k: int = 50
    max_query_chars: int = 4096
    candidates: int = 50
    rrf_k: int = 60
    fusion: str = "confidence"
    bm25_margin: float = 0.5
    bm25_share_confident: float = 0.8
    bm25_share_unsure: float = 0.4
    bm25_weight: float = 0.4
    bm25_weight_rare: float = 0.8
    rare_term_max_chunks: int = 3
    hnsw_m: int = 16
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 128
    exact_search_max_vectors: int = 10_000
    legacy_tenant: str | None = None

    def search_settings(self) -> SearchSettings:
        names = {f.name for f in fields(SearchSettings)}
        return SearchSettings(**{k: getattr(self, k) for k in names})


def searcher_for(store: ChunkStore, settings: RagSettings) -> Searcher:
    """Milvus searches when the store is a Milvus server; otherwise the replica does."""
    from tierline.rag.store import MilvusChunkStore

    if isinstance(store, MilvusChunkStore) and store.remote:
        from tierline.rag.milvus_search import MilvusServerSearcher

        return MilvusServerSearcher(store, settings.search_settings())
    return InProcessSearcher(store, settings.search_settings())


def _collection_missing(err: BaseException) -> bool:
    from tierline.rag.milvus_search import collection_missing

    return collection_missing(err)


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


def _not_found(name: str) -> RagError:
    return RagError(
        404,
        f"collection {name!r} does not exist",
        code="collection_not_found",
        param="collection",
    )


class RagCore:
    def __init__(
        self,
        settings: RagSettings,
        store: ChunkStore,
        embedder: EmbeddingService,
        tokenize: Tokenize,
        searcher: Searcher | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.embedder = embedder
        self.tokenize = tokenize
        self.searcher = searcher if searcher is not None else searcher_for(store, settings)
        self._locks: dict[str, asyncio.Lock] = {}  # known collections, by physical name

    async def start(self) -> None:
        await asyncio.to_thread(self.store.start)
        check = getattr(self.searcher, "check", None)
        if check is not None:  # a server without full-text search fails here, named
            await asyncio.to_thread(check)
        names = await asyncio.to_thread(self.store.list_collections)
        owned = [n for n in names if owner_of(n) is not None]
        for name in [n for n in names if owner_of(n) is None]:
            adopted = await asyncio.to_thread(self._adopt, name)
            if adopted is not None:
                owned.append(adopted)
        for name in owned:
            await asyncio.to_thread(self.searcher.open, name)
            self._locks.setdefault(name, asyncio.Lock())

    def _adopt(self, name: str) -> str | None:
        """A collection made before tenancy, renamed into `legacy_tenant`'s namespace.

        Only collections with tierline's chunk schema and a valid name are taken; every
        other collection on a shared server is left alone."""
        tenant = self.settings.legacy_tenant
        if not COLLECTION_NAME.match(name) or self.store.field_names(name) - {SPARSE_FIELD} != set(
            CHUNK_FIELDS
        ):
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

    def _physical(self, tenant: str, name: str) -> str:
        if not isinstance(name, str) or not COLLECTION_NAME.match(name):
            raise _not_found(str(name))
        return physical_name(tenant, name)

    async def _find(self, tenant: str, name: str) -> tuple[str, asyncio.Lock]:
        """The collection's physical name and write lock; 404 when the tenant has none.

        On a server, a collection another replica made is found (and opened) on first use."""
        physical = self._physical(tenant, name)
        lock = self._locks.get(physical)
        if lock is None:
            if self.searcher.holds_index or not await off_loop(self.searcher.known, physical):
                raise _not_found(name)
            lock = self._locks.setdefault(physical, asyncio.Lock())
        return physical, lock

    @contextlib.contextmanager
    def _held(self, physical: str, name: str) -> Iterator[None]:
        """On a server, a collection another replica dropped is forgotten here and answered
        404, like one never made (a search, write or delete by this replica after the drop
        would otherwise surface Milvus's own error as a 500)."""
        try:
            yield
        except Exception as err:
            if self.searcher.holds_index or not _collection_missing(err):
                raise
            self._locks.pop(physical, None)
            self.searcher.removed(physical)
            raise _not_found(name) from None

    def _get(self, tenant: str, name: str) -> tuple[str, Collection]:
        """The in-process indexes of a collection (embedded path only: benchmarks read them)."""
        physical = self._physical(tenant, name)
        if not isinstance(self.searcher, InProcessSearcher) or physical not in self._locks:
            raise _not_found(name)
        return physical, self.searcher.collections[physical]

    def _owned(self, tenant: str) -> list[str]:
        """The physical names of the tenant's collections (blocking on a server)."""
        held = self.searcher.holds_index
        names = list(self._locks) if held else self.store.list_collections()
        return [n for n in names if (owner_of(n) or ("",))[0] == tenant]

    async def create_collection(self, tenant: str, name: str) -> dict[str, Any]:
        validate_collection_name(name)
        physical = physical_name(tenant, name)
        created = physical not in self._locks
        if created and not self.searcher.holds_index:
            created = not await off_loop(self.searcher.known, physical)
        if created:
            most = self.settings.max_collections_per_tenant
            if len(await off_loop(self._owned, tenant)) >= most:
                raise RagError(
                    403,
                    f"this tenant already has {most} collections, the most it may hold "
                    "(rag.max_collections_per_tenant); delete one first",
                    code="collection_limit_reached",
                    param="name",
                )
            await off_loop(self.store.create_collection, physical, self.settings.dim)
            self.searcher.create(physical)
        self._locks.setdefault(physical, asyncio.Lock())
        return {"name": name, "created": created}

    async def delete_collection(self, tenant: str, name: str) -> dict[str, Any]:
        """Drop one of the tenant's collections, its documents and chunks (404 for another
        tenant's, as for a missing one)."""
        physical, lock = await self._find(tenant, name)
        async with lock:
            with self._held(physical, name):
                documents, chunks = await off_loop(self.searcher.counts, physical)
            await off_loop(self.store.drop_collection, physical)
            await off_loop(self.searcher.removed, physical)
            self._locks.pop(physical, None)
        return {"name": name, "deleted": True, "documents": documents, "chunks": chunks}

    def list_collections(self, tenant: str, all_tenants: bool = False) -> list[dict[str, Any]]:
        """The tenant's collections; every tenant's (each with its owner) for an operator.

        On a server this asks Milvus (blocking): callers run it off the event loop."""
        if self.searcher.holds_index:
            names = list(self._locks)
        else:
            names = [n for n in self.store.list_collections() if owner_of(n) is not None]
        out = []
        for physical in sorted(names):
            owner = owner_of(physical)
            if owner is None or not (all_tenants or owner[0] == tenant):
                continue
            if not self.searcher.holds_index and not self.searcher.known(physical):
                continue
            try:
                with self._held(physical, owner[1]):
                    documents, chunks = self.searcher.counts(physical)
            except RagError:  # dropped by another replica since the listing
                continue
            row: dict[str, Any] = {"name": owner[1], "documents": documents, "chunks": chunks}
            if all_tenants:
                row["tenant"] = owner[0]
            out.append(row)
        return sorted(out, key=lambda r: (r["name"], r.get("tenant", "")))

    async def ingest(self, tenant: str, name: str, raw_documents: Any) -> dict[str, Any]:
        """Chunk, embed and store the documents. The answer counts each document's chunks
        and gives `embedded_tokens`, the model tokens its chunks took (None where the
        embedder does not count them): what the ingest route charges."""
        physical, lock = await self._find(tenant, name)
        docs = validate_documents(raw_documents, self.settings)
        s = self.settings
        version = new_version()
        per_doc = [
            await off_loop(
                chunk_document, d, self.tokenize, s.chunk_tokens, s.chunk_overlap_tokens, version
            )
            for d in docs
        ]
        for d, chunks in zip(docs, per_doc, strict=True):
            if not chunks:
                raise bad(f"document {d.id!r} has no text to index", "empty_document", "documents")
        chunks = [c for cs in per_doc for c in cs]
        embedded = await self.embedder.embed([c.text for c in chunks])
        vectors = embedded.vectors
        async with lock:
            # One store call for the whole batch: it is validated and embedded by now. The
            # searcher hears of it only once the store has the new version.
            try:
                with self._held(physical, name):
                    await off_loop(
                        self.store.replace_documents,
                        physical,
                        [d.id for d in docs],
                        chunks,
                        vectors,
                    )
            except StoreWriteError as err:
                raise RagError(
                    503,
                    f"{err}; the documents' previous versions are unchanged",
                    code="store_write_failed",
                ) from None
            await off_loop(self.searcher.replaced, physical, [d.id for d in docs], chunks, vectors)
        return {
            "collection": name,
            "documents": [
                {"id": d.id, "chunks": len(cs)} for d, cs in zip(docs, per_doc, strict=True)
            ],
            "chunks": len(chunks),
            "embedded_tokens": embedded.tokens,
        }

    async def delete_document(self, tenant: str, name: str, document_id: str) -> dict[str, Any]:
        physical, lock = await self._find(tenant, name)
        async with lock:
            with self._held(physical, name):
                removed = await off_loop(self.searcher.document_chunks, physical, document_id)
            if not removed:
                raise RagError(
                    404,
                    f"document {document_id!r} is not in collection {name!r}",
                    code="document_not_found",
                    param="document_id",
                )
            await off_loop(self.store.delete_document, physical, document_id)
            await off_loop(self.searcher.dropped, physical, document_id)
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

    def _check_filter(self, filter: Any) -> None:
        if self.searcher.holds_index:
            parse_filter(filter)
        else:  # also what only the server refuses (control characters, huge integers)
            to_expression(filter)

    def retrieve(
        self,
        tenant: str,
        name: str,
        query: str,
        vector: np.ndarray,
        top_k: int,
        filter: Any = None,
    ) -> list[Hit]:
        """Hybrid retrieval on a ready query vector (blocking; I/O on the server path)."""
        physical = self._physical(tenant, name)
        if self.searcher.holds_index and physical not in self._locks:
            raise _not_found(name)
        top_k = self._top_k(top_k)
        self._check_filter(filter)
        return self.searcher.search(physical, query, vector, top_k, filter)

    async def search(
        self, tenant: str, name: str, query: Any, top_k: Any = 5, filter: Any = None
    ) -> list[dict[str, Any]]:
        hits, _ = await self.search_counted(tenant, name, query, top_k, filter)
        return hits

    async def search_counted(
        self, tenant: str, name: str, query: Any, top_k: Any = 5, filter: Any = None
    ) -> tuple[list[dict[str, Any]], int | None]:
        """`search`'s hits, and the model tokens the query's embedding took (None where
        the embedder does not count them): what the search route charges."""
        _, lock = await self._find(tenant, name)
        if not isinstance(query, str) or not query.strip():
            raise bad("query must be a non-empty string", param="query")
        if len(query) > self.settings.max_query_chars:
            raise bad(
                f"query is {len(query)} characters; the most is "
                f"{self.settings.max_query_chars} (rag.max_query_chars)",
                param="query",
            )
        self._top_k(top_k)
        self._check_filter(filter)  # a bad filter fails before the embedding is paid for
        embedded = await self.embedder.embed([query])
        vector = embedded.vectors[0]
        if self.searcher.holds_index:
            async with lock:  # off the event loop, and never beside a write to the index
                hits = await off_loop(self.retrieve, tenant, name, query, vector, top_k, filter)
        else:  # Milvus orders reads and writes itself
            with self._held(self._physical(tenant, name), name):
                hits = await off_loop(self.retrieve, tenant, name, query, vector, top_k, filter)
        return [h.as_result() for h in hits], embedded.tokens
