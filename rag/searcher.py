"""Where a collection's search runs: the `Searcher` Protocol and its in-process implementation.

`RagCore` writes every change to the durable `ChunkStore` first and then tells its
searcher. Two implementations:

- `InProcessSearcher` (here): the replica holds an HNSW (`rag.dense`) and a BM25
  (`rag.bm25`) index per collection, rebuilt from the store at start-up and fused by
  `rag.fusion` (by default `confidence_fusion`: BM25 leads only when its best document
  stands far above the next). Used with an embedded Milvus Lite file, which one process owns.
- `MilvusServerSearcher` (`rag.milvus_search`): Milvus searches (HNSW, its BM25 function,
  filter expressions), fused in the replica by the same rule (or by `hybrid_search` with
  Milvus's ranker for `fusion: weighted` / `rrf`); the replica holds no index, so several
  replicas can serve one server.

Methods are synchronous and may block on I/O; `RagCore` calls them off the event loop and
serialises writes per collection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from tierline.rag.bm25 import BM25Index
from tierline.rag.dense import DenseIndex
from tierline.rag.filters import matching_ids
from tierline.rag.fusion import confidence_fusion, reciprocal_rank_fusion, weighted_fusion
from tierline.rag.records import Chunk, Hit
from tierline.rag.store import ChunkStore
from tierline.rag.versions import ChunkRef, resolve

_logger = logging.getLogger("ray.serve.tierline.rag")


@dataclass(frozen=True)
class SearchSettings:
    dim: int = 384
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


class Searcher(Protocol):
    holds_index: bool  # True: the replica keeps the corpus in memory (one owner only)

    def open(self, name: str) -> None:
        """Make a stored collection searchable (start-up, or first use on another replica)."""
        ...

    def create(self, name: str) -> None:
        """A collection the store just created, empty."""
        ...

    def known(self, name: str) -> bool:
        """Whether `name` is a searchable collection (opening it if another replica made it)."""
        ...

    def replaced(
        self, name: str, document_ids: Sequence[str], chunks: Sequence[Chunk], vectors: np.ndarray
    ) -> None:
        """The store took `chunks` as the new version of `document_ids`."""
        ...

    def document_chunks(self, name: str, document_id: str) -> int:
        """Chunks of the document's served version; 0 when it is not in the collection."""
        ...

    def dropped(self, name: str, document_id: str) -> None:
        """The store removed every chunk of the document."""
        ...

    def counts(self, name: str) -> tuple[int, int]:
        """(documents, chunks) of the collection."""
        ...

    def removed(self, name: str) -> None:
        """The store dropped the whole collection."""
        ...

    def search(
        self, name: str, query: str, vector: np.ndarray, top_k: int, filter: Any = None
    ) -> list[Hit]:
        """The best `top_k` chunks, best first; `filter` is already validated."""
        ...


@dataclass
class Collection:
    dense: DenseIndex
    sparse: BM25Index = field(default_factory=BM25Index)
    chunks: dict[str, Chunk] = field(default_factory=dict)
    documents: dict[str, list[str]] = field(default_factory=dict)

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


class InProcessSearcher:
    """HNSW + BM25 in the replica, rebuilt from the store: the embedded (Milvus Lite) path."""

    holds_index = True

    def __init__(self, store: ChunkStore, settings: SearchSettings) -> None:
        self.store = store
        self.settings = settings
        self.collections: dict[str, Collection] = {}

    def _new(self) -> Collection:
        s = self.settings
        return Collection(
            DenseIndex(
                s.dim,
                s.hnsw_m,
                s.hnsw_ef_construction,
                s.hnsw_ef_search,
                exact_max=s.exact_search_max_vectors,
            )
        )

    def open(self, name: str) -> None:
        col = self._new()
        loaded = list(self.store.load(name))
        keep, drop = resolve(ChunkRef(c.chunk_id, c.document_id) for cs, _ in loaded for c in cs)
        for chunks, vectors in loaded:
            rows = [i for i, c in enumerate(chunks) if c.chunk_id in keep]
            if rows:
                col.put([chunks[i] for i in rows], vectors[rows])
        if drop:
            # Superseded or half-written versions: gone from the store, never served. Safe
            # here: this replica is the store's only writer.
            self.store.delete_chunks(name, sorted(drop))
            _logger.info("RAG collection %s: %d stale chunks removed", name, len(drop))
        self.collections[name] = col

    def create(self, name: str) -> None:
        self.collections.setdefault(name, self._new())

    def known(self, name: str) -> bool:
        return name in self.collections

    def replaced(
        self, name: str, document_ids: Sequence[str], chunks: Sequence[Chunk], vectors: np.ndarray
    ) -> None:
        self.collections[name].replace(document_ids, chunks, vectors)

    def document_chunks(self, name: str, document_id: str) -> int:
        return len(self.collections[name].documents.get(document_id, []))

    def dropped(self, name: str, document_id: str) -> None:
        self.collections[name].drop(document_id)

    def counts(self, name: str) -> tuple[int, int]:
        col = self.collections[name]
        return len(col.documents), len(col.chunks)

    def removed(self, name: str) -> None:
        self.collections.pop(name, None)

    def search(
        self, name: str, query: str, vector: np.ndarray, top_k: int, filter: Any = None
    ) -> list[Hit]:
        """Dense + BM25 in memory, fused by BM25's confidence (default), by weight
        (rare-term aware) or by RRF (no I/O)."""
        col = self.collections[name]
        allow: Callable[[str], bool] | None = None
        if filter is not None and filter != {}:
            # once per search, as set operations with a work cap and a deadline; then
            # each candidate is a set lookup
            rows = {cid: (c.document_id, c.metadata) for cid, c in col.chunks.items()}
            allowed = matching_ids(filter, rows)
            if allowed is not None:
                allow = allowed.__contains__

        s = self.settings
        n = max(s.candidates, top_k)
        dense = col.dense.search(vector, n, allow)
        sparse = col.sparse.search(query, n, allow)
        if s.fusion == "confidence":
            group = {i: col.chunks[i].document_id for i, _ in sparse if i in col.chunks}
            fused = confidence_fusion(
                dense,
                sparse,
                group,
                s.bm25_margin,
                s.bm25_share_confident,
                s.bm25_share_unsure,
                limit=top_k,
            )
        elif s.fusion == "rrf":
            ranked = [[i for i, _ in dense], [i for i, _ in sparse]]
            fused = reciprocal_rank_fusion(ranked, k=s.rrf_k, limit=top_k)
        else:
            rarest = col.sparse.rarest(query)
            rare = rarest is not None and rarest <= s.rare_term_max_chunks
            weight = s.bm25_weight_rare if rare else s.bm25_weight
            fused = weighted_fusion(dense, sparse, weight, limit=top_k)
        return [Hit(col.chunks[i], score) for i, score in fused if i in col.chunks]
