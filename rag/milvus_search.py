"""Search run by a Milvus server: the `Searcher` for `rag.uri` = http(s)/tcp URI.

Each collection (schema in `rag.store`) has an HNSW index on `dense` and a sparse field
that Milvus's BM25 function fills from `text`. With `fusion: confidence` (the default) a
query is two searches, dense and BM25, both with the filter expression
(`rag.milvus_filter`), fused here by `rag.fusion.confidence_fusion`: the same rule as the
embedded path, on Milvus's own scores (the rule reads only each list's shape, not its
scale). With `fusion: weighted` or `rrf` it is one `hybrid_search` fused by Milvus's
`WeightedRanker` (weights `1 - bm25_weight`, `bm25_weight`; Milvus normalises the scores
itself, arctan for BM25; no rare-term boost) or `RRFRanker(rrf_k)`. The replica keeps no
index and no chunks: it starts in the time a connection takes, and any number of
replicas serve one server.

Versions (`rag.versions`): a re-ingest writes the new version before deleting the old
one, and a write can die half-way, so the store may hold several versions of a document
for a while. Each query over-fetches `candidates` hits, asks Milvus for the chunk ids of
the documents among them (one `query` on `document_id`), and keeps only hits of each
document's newest complete version. Nothing is deleted at start-up or at query time:
another replica may be between its two writes; the next re-ingest of a document removes
its older versions, never newer ones (`MilvusChunkStore.replace_documents`).

Needs Milvus 2.5 or later (BM25 function, sparse vectors, `hybrid_search`) or a Milvus
Lite 3.x server (`python -m milvus_lite server`); `check_server` refuses older servers at
start-up with a message saying so. A collection made without the sparse field (by an
older tierline) is searched dense-only, with a warning.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tierline.rag.fusion import confidence_fusion
from tierline.rag.milvus_filter import literal, to_expression
from tierline.rag.records import Chunk, Hit
from tierline.rag.searcher import SearchSettings
from tierline.rag.store import SPARSE_FIELD, MilvusChunkStore
from tierline.rag.versions import ChunkRef, resolve

_logger = logging.getLogger("ray.serve.tierline.rag")
OUTPUT_FIELDS = ["chunk_id", "document_id", "position", "text", "metadata"]
QUERY_LIMIT = 16384  # Milvus's cap on one query's offset + limit
MIN_VERSION = (2, 5)  # the BM25 function (and with it full-text search) came in 2.5
_VERSION = re.compile(r"^v?(\d+)\.(\d+)")


class ServerFeatureError(RuntimeError):
    """The Milvus server lacks what server-side search needs; the message says what."""


@dataclass(frozen=True)
class ServerInfo:
    version: str
    lite: bool
    full_text: bool  # BM25 function + sparse vectors + hybrid_search


def server_info(version: str) -> ServerInfo:
    """What a Milvus server version string says it supports (unknown shapes: assume all)."""
    v = version.strip()
    if v.startswith("milvus_lite"):
        return ServerInfo(v, lite=True, full_text=True)
    m = _VERSION.match(v)
    if m is None:
        return ServerInfo(v, lite=False, full_text=True)
    return ServerInfo(v, lite=False, full_text=(int(m[1]), int(m[2])) >= MIN_VERSION)


def check_server(version: str) -> ServerInfo:
    info = server_info(version)
    if not info.full_text:
        raise ServerFeatureError(
            f"Milvus server {version} has no BM25 function (full-text search came in Milvus "
            f"{MIN_VERSION[0]}.{MIN_VERSION[1]}), so tierline cannot search it; point rag.uri "
            "at Milvus 2.5 or later (or a Milvus Lite 3 server), or at a local file for the "
            "embedded store"
        )
    return info


def ranker_of(settings: SearchSettings) -> Any:
    """Milvus's ranker for `hybrid_search` (fusion: weighted or rrf)."""
    from pymilvus import RRFRanker, WeightedRanker

    if settings.fusion == "rrf":
        return RRFRanker(settings.rrf_k)
    w = settings.bm25_weight
    return WeightedRanker(1.0 - w, w)


def current_hits(hits: Sequence[Hit], refs: Sequence[ChunkRef]) -> list[Hit]:
    """Hits of each document's newest complete version, given all its stored chunk ids."""
    keep, _ = resolve(refs)
    return [h for h in hits if h.chunk.chunk_id in keep]


def _bm25_score(distance: Any) -> float:
    """A BM25 hit's score: a Milvus server reports it as is (>= 0), the Milvus Lite 3
    server negated (-1.4 for a score of 1.4), best first either way."""
    return abs(float(distance))


def fused_hits(
    dense_rows: Sequence[dict[str, Any]],
    sparse_rows: Sequence[dict[str, Any]],
    settings: SearchSettings,
    limit: int,
) -> list[Hit]:
    """The rows of a dense and a BM25 search (Milvus's result rows), fused by
    `confidence_fusion` as on the embedded path."""
    chunks: dict[str, Chunk] = {}
    lists: list[list[tuple[str, float]]] = []
    for rows, score in ((dense_rows, float), (sparse_rows, _bm25_score)):
        ranked = []
        for r in rows:
            c = _chunk(r)
            chunks[c.chunk_id] = c
            ranked.append((c.chunk_id, score(r["distance"])))
        lists.append(ranked)
    dense, sparse = lists
    fused = confidence_fusion(
        dense,
        sparse,
        {i: chunks[i].document_id for i, _ in sparse},
        settings.bm25_margin,
        settings.bm25_share_confident,
        settings.bm25_share_unsure,
        limit=limit,
    )
    return [Hit(chunks[i], score) for i, score in fused]


def collection_missing(err: BaseException | None) -> bool:
    """Whether a Milvus error (or what it wraps) says the collection is not there: another
    replica dropped it after this one had opened it."""
    from pymilvus.exceptions import ErrorCode, MilvusException

    while err is not None:
        if isinstance(err, MilvusException) and err.code == ErrorCode.COLLECTION_NOT_FOUND:
            return True
        err = err.__cause__
    return False


def _chunk(row: dict[str, Any]) -> Chunk:
    e = row.get("entity", row)
    return Chunk(
        chunk_id=str(e.get("chunk_id", row.get("chunk_id", row.get("id")))),
        document_id=e["document_id"],
        position=int(e["position"]),
        text=e["text"],
        metadata=dict(e.get("metadata") or {}),
    )


class MilvusServerSearcher:
    """Dense, BM25 and hybrid search, filters included, run by the Milvus server."""

    holds_index = False

    def __init__(self, store: MilvusChunkStore, settings: SearchSettings) -> None:
        self.store = store
        self.settings = settings
        self.info: ServerInfo | None = None
        self._full_text: dict[str, bool] = {}  # opened collections: has the sparse field

    @property
    def _client(self) -> Any:
        return self.store.client

    def check(self) -> ServerInfo:
        """Start-up: refuse a server without full-text search (ServerFeatureError)."""
        self.info = check_server(str(self._client.get_server_version()))
        return self.info

    def open(self, name: str) -> None:
        fields = self.store.field_names(name)
        full_text = SPARSE_FIELD in fields
        if not full_text:
            _logger.warning(
                "RAG collection %s has no %r field (made by an older tierline): searched "
                "dense-only; re-create it and re-ingest for hybrid search",
                name,
                SPARSE_FIELD,
            )
        self._client.load_collection(name)
        self._full_text[name] = full_text

    def create(self, name: str) -> None:
        self._full_text[name] = True

    def known(self, name: str) -> bool:
        if name in self._full_text:
            return True
        if not self._client.has_collection(name):
            return False
        self.open(name)  # made by another replica since this one started
        return True

    def replaced(
        self, name: str, document_ids: Sequence[str], chunks: Sequence[Chunk], vectors: np.ndarray
    ) -> None:
        return None  # the store is the index

    def _refs(self, name: str, document_ids: Sequence[str]) -> list[ChunkRef]:
        ids = sorted(set(document_ids))
        if not ids:
            return []
        flt = f"document_id in [{', '.join(literal(d) for d in ids)}]"
        rows = self._client.query(
            name, filter=flt, output_fields=["chunk_id", "document_id"], limit=QUERY_LIMIT
        )
        if len(rows) >= QUERY_LIMIT:  # very long documents: page through them all
            rows = []
            it = self._client.query_iterator(
                name, batch_size=4096, filter=flt, output_fields=["chunk_id", "document_id"]
            )
            try:
                while batch := it.next():
                    rows.extend(batch)
            finally:
                it.close()
        return [ChunkRef(r["chunk_id"], r["document_id"]) for r in rows]

    def document_chunks(self, name: str, document_id: str) -> int:
        keep, _ = resolve(self._refs(name, [document_id]))
        return len(keep)

    def dropped(self, name: str, document_id: str) -> None:
        return None

    def removed(self, name: str) -> None:
        self._full_text.pop(name, None)

    def counts(self, name: str) -> tuple[int, int]:
        """(documents, chunks); while a re-ingest is between its two writes, both count."""
        c = self._client
        chunks = c.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"]
        docs = c.query(name, filter="position == 0", output_fields=["count(*)"])[0]["count(*)"]
        return int(docs), int(chunks)

    def search(
        self, name: str, query: str, vector: np.ndarray, top_k: int, filter: Any = None
    ) -> list[Hit]:
        from pymilvus import AnnSearchRequest

        if name not in self._full_text:
            self.open(name)
        s = self.settings
        n = max(s.candidates, top_k)
        expr = to_expression(filter) or ""
        dense_params = {"metric_type": "COSINE", "params": {"ef": max(s.hnsw_ef_search, n)}}
        vec = np.asarray(vector, dtype=np.float32).tolist()
        c = self._client
        if self._full_text[name] and s.fusion == "confidence":
            dense_rows = c.search(
                name,
                [vec],
                anns_field="dense",
                limit=n,
                filter=expr,
                search_params=dense_params,
                output_fields=OUTPUT_FIELDS,
            )
            sparse_rows = c.search(
                name,
                [query],
                anns_field=SPARSE_FIELD,
                limit=n,
                filter=expr,
                search_params={"metric_type": "BM25"},
                output_fields=OUTPUT_FIELDS,
            )
            hits = fused_hits(
                dense_rows[0] if dense_rows else [],
                sparse_rows[0] if sparse_rows else [],
                s,
                n,
            )
            refs = self._refs(name, [h.chunk.document_id for h in hits])
            return current_hits(hits, refs)[:top_k]
        if self._full_text[name]:
            requests = [
                AnnSearchRequest([vec], "dense", dense_params, limit=n, expr=expr),
                AnnSearchRequest(
                    [query], SPARSE_FIELD, {"metric_type": "BM25"}, limit=n, expr=expr
                ),
            ]
            found = c.hybrid_search(
                name, requests, ranker_of(s), limit=n, output_fields=OUTPUT_FIELDS
            )
        else:
            found = c.search(
                name,
                [vec],
                anns_field="dense",
                limit=n,
                filter=expr,
                search_params=dense_params,
                output_fields=OUTPUT_FIELDS,
            )
        rows = found[0] if found else []
        hits = [Hit(_chunk(r), float(r["distance"])) for r in rows]
        refs = self._refs(name, [h.chunk.document_id for h in hits])
        return current_hits(hits, refs)[:top_k]
