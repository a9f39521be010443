"""The durable chunk store: a small Protocol and its Milvus implementation.

`MilvusChunkStore` takes a local path (Milvus Lite, embedded, owned by one process) or an
`http://host:19530` URI (a Milvus server) and runs the same calls on both. It is the
source of truth. On a local file the in-process indexes (`rag.searcher`) are rebuilt from
`load` at start-up; on a server the collections also carry a BM25 sparse field (Milvus's
BM25 function on `text`) and an HNSW index, and Milvus searches them (`rag.milvus_search`).

`replace_documents` writes the new chunks (versioned ids, `rag.versions`) before it removes
the old ones, so a write that fails, or a process that dies, leaves each document fully old
or fully new; `load` returns every stored chunk and the reader resolves versions.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tierline.rag.records import Chunk
from tierline.rag.versions import version_of

MAX_TEXT_BYTES = 65535  # Milvus counts a VARCHAR's max_length in UTF-8 bytes
_logger = logging.getLogger("ray.serve.tierline.rag")


CHUNK_FIELDS = ("chunk_id", "document_id", "position", "text", "metadata", "dense")
SPARSE_FIELD = "sparse"  # server collections only: Milvus's BM25 function fills it from `text`
BM25_FUNCTION = "text_bm25"


class StoreWriteError(Exception):
    """A write the store refused or failed; what was stored before it is unchanged."""


class ChunkStore(Protocol):
    def start(self) -> None: ...

    def close(self) -> None: ...

    def list_collections(self) -> list[str]: ...

    def create_collection(self, name: str, dim: int) -> None: ...

    def field_names(self, name: str) -> set[str]: ...

    def rename_collection(self, old: str, new: str) -> None: ...

    def drop_collection(self, name: str) -> None: ...

    def replace_documents(
        self, name: str, document_ids: Sequence[str], chunks: Sequence[Chunk], vectors: np.ndarray
    ) -> None:
        """Store `chunks`, then drop every other chunk of `document_ids`; durable on return.

        Raises `StoreWriteError` when the new chunks could not all be written; the old
        ones are then untouched."""
        ...

    def delete_document(self, name: str, document_id: str) -> None: ...

    def delete_chunks(self, name: str, chunk_ids: Sequence[str]) -> None: ...

    def load(self, name: str, batch: int = 2000) -> Iterator[tuple[list[Chunk], np.ndarray]]: ...


def _quoted(ids: Sequence[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in ids) + "]"


def _release_embedded(path: str) -> None:
    """Stop the in-process Milvus Lite server behind a local file and close its database.

    pymilvus starts one server thread per file on first connect and leaves it running until
    interpreter exit, where tearing it down can crash the process. Closing the store ends it
    here instead, so the file is released (and a reopen reads it back from disk).
    """
    try:
        from milvus_lite import server_manager_instance
    except ImportError:  # pymilvus without milvus-lite cannot open a local file at all
        return
    server_manager_instance.release_server(path)


def _check_sizes(chunks: Sequence[Chunk]) -> None:
    for ch in chunks:
        size = len(ch.text.encode())
        if size > MAX_TEXT_BYTES:
            raise StoreWriteError(
                f"chunk {ch.chunk_id!r} has {size} bytes of text; the store holds "
                f"{MAX_TEXT_BYTES} per chunk"
            )


def is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "tcp://", "grpc://"))


class MilvusChunkStore:
    """Chunks in Milvus collections: id, document id, position, text, metadata, vector."""

    FIELDS = CHUNK_FIELDS
    BATCH = 1000  # rows per upsert or delete call

    def __init__(
        self, uri: str, token: str | None = None, hnsw_m: int = 16, hnsw_ef_construction: int = 200
    ) -> None:
        self.uri = uri
        self.token = token
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construction = hnsw_ef_construction
        self._client: Any = None

    @property
    def remote(self) -> bool:
        return is_remote(self.uri)

    @property
    def client(self) -> Any:
        if self._client is None:
            raise RuntimeError("MilvusChunkStore.start() was not called")
        return self._client

    def start(self) -> None:
        from pymilvus import MilvusClient

        if is_remote(self.uri):
            self._client = MilvusClient(uri=self.uri, token=self.token or "")
        else:
            Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
            self._client = MilvusClient(self.uri)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
            if not is_remote(self.uri):
                _release_embedded(self.uri)

    def list_collections(self) -> list[str]:
        return sorted(self.client.list_collections())

    def create_collection(self, name: str, dim: int) -> None:
        from pymilvus import DataType

        c = self.client
        if c.has_collection(name):
            return
        remote = self.remote
        schema = c.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("chunk_id", DataType.VARCHAR, is_primary=True, max_length=512)
        schema.add_field("document_id", DataType.VARCHAR, max_length=256)
        schema.add_field("position", DataType.INT64)
        if remote:  # Milvus tokenises `text` and its BM25 function fills `sparse`
            schema.add_field(
                "text", DataType.VARCHAR, max_length=MAX_TEXT_BYTES, enable_analyzer=True
            )
        else:
            schema.add_field("text", DataType.VARCHAR, max_length=MAX_TEXT_BYTES)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("dense", DataType.FLOAT_VECTOR, dim=dim)
        index = c.prepare_index_params()
        if remote:
            from pymilvus import Function, FunctionType

            schema.add_field(SPARSE_FIELD, DataType.SPARSE_FLOAT_VECTOR)
            schema.add_function(
                Function(
                    name=BM25_FUNCTION,
                    function_type=FunctionType.BM25,
                    input_field_names=["text"],
                    output_field_names=[SPARSE_FIELD],
                )
            )
            index.add_index(
                "dense",
                index_type="HNSW",
                metric_type="COSINE",
                params={"M": self.hnsw_m, "efConstruction": self.hnsw_ef_construction},
            )
            index.add_index(SPARSE_FIELD, index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
            # Each search looks up its hits' documents (version check) and deletes go by
            # document: an inverted index keeps both off a full scan.
            index.add_index("document_id", index_type="INVERTED")
        else:
            # Searches run on the replica's in-process index; the store's own index only
            # has to exist (FLAT: nothing to build on every flush).
            index.add_index("dense", index_type="FLAT", metric_type="COSINE")
        c.create_collection(name, schema=schema, index_params=index)

    def field_names(self, name: str) -> set[str]:
        return {f["name"] for f in self.client.describe_collection(name).get("fields", [])}

    def rename_collection(self, old: str, new: str) -> None:
        self.client.rename_collection(old, new)

    def drop_collection(self, name: str) -> None:
        if self.client.has_collection(name):
            self.client.drop_collection(name)

    def _insert(self, name: str, rows: list[dict[str, Any]]) -> None:
        for i in range(0, len(rows), self.BATCH):
            self.client.upsert(name, rows[i : i + self.BATCH])
        self.client.flush(name)

    def replace_documents(
        self, name: str, document_ids: Sequence[str], chunks: Sequence[Chunk], vectors: np.ndarray
    ) -> None:
        _check_sizes(chunks)
        rows = [
            {
                "chunk_id": ch.chunk_id,
                "document_id": ch.document_id,
                "position": ch.position,
                "text": ch.text,
                "metadata": ch.metadata,
                "dense": vec.tolist(),
            }
            for ch, vec in zip(chunks, np.asarray(vectors, dtype=np.float32), strict=True)
        ]
        new_ids = [ch.chunk_id for ch in chunks]
        try:
            self._insert(name, rows)
        except Exception as err:
            try:  # what part of the new version got in goes again; the old one is whole
                self.delete_chunks(name, new_ids)
            except Exception:  # resolved at the next start (rag.versions)
                _logger.warning("could not remove a partial write to %s", name, exc_info=True)
            raise StoreWriteError(f"the store did not take the write: {err}") from err
        if document_ids:
            try:
                if self.remote:
                    self._delete_older(name, document_ids, chunks)
                else:
                    self.client.delete(
                        name,
                        filter=f"document_id in {_quoted(list(document_ids))} "
                        f"and not (chunk_id in {_quoted(new_ids)})",
                    )
                self.client.flush(name)
            except Exception:  # the new version is stored: it is the answer
                _logger.warning("old chunks left in %s until the next start", name, exc_info=True)

    def _delete_older(
        self, name: str, document_ids: Sequence[str], chunks: Sequence[Chunk]
    ) -> None:
        """Delete the chunks of `document_ids` up to this write's version, except its own.

        Never newer ones: on a server another replica may be writing a newer version of the
        same document at once, and "every other chunk" would let two writers delete each
        other's."""
        newest = {ch.document_id: version_of(ch.chunk_id)[0] for ch in chunks}
        rows = self.client.query(
            name,
            filter=f"document_id in {_quoted(list(document_ids))}",
            output_fields=["chunk_id", "document_id"],
            limit=16384,
        )
        keep = {ch.chunk_id for ch in chunks}
        old = [
            r["chunk_id"]
            for r in rows
            if r["chunk_id"] not in keep
            and version_of(r["chunk_id"])[0] <= newest.get(r["document_id"], 0)
        ]
        for i in range(0, len(old), self.BATCH):
            self.client.delete(name, filter=f"chunk_id in {_quoted(old[i : i + self.BATCH])}")

    def delete_document(self, name: str, document_id: str) -> None:
        self.client.delete(name, filter=f"document_id == {json.dumps(document_id)}")
        self.client.flush(name)

    def delete_chunks(self, name: str, chunk_ids: Sequence[str]) -> None:
        ids = list(chunk_ids)
        for i in range(0, len(ids), self.BATCH):
            self.client.delete(name, filter=f"chunk_id in {_quoted(ids[i : i + self.BATCH])}")
        self.client.flush(name)

    def load(self, name: str, batch: int = 2000) -> Iterator[tuple[list[Chunk], np.ndarray]]:
        c = self.client
        c.load_collection(name)
        it = c.query_iterator(name, batch_size=batch, filter="", output_fields=list(self.FIELDS))
        try:
            while True:
                rows = it.next()
                if not rows:
                    return
                chunks = [
                    Chunk(
                        chunk_id=r["chunk_id"],
                        document_id=r["document_id"],
                        position=int(r["position"]),
                        text=r["text"],
                        metadata=dict(r.get("metadata") or {}),
                    )
                    for r in rows
                ]
                yield chunks, np.asarray([r["dense"] for r in rows], dtype=np.float32)
        finally:
            it.close()


class MemoryChunkStore:
    """The same Protocol in memory: for tests and throwaway runs (nothing survives a restart)."""

    def __init__(self) -> None:
        self.collections: dict[str, dict[str, tuple[Chunk, np.ndarray]]] = {}

    def start(self) -> None:
        return None

    def close(self) -> None:
        return None

    def list_collections(self) -> list[str]:
        return sorted(self.collections)

    def create_collection(self, name: str, dim: int) -> None:
        self.collections.setdefault(name, {})

    def field_names(self, name: str) -> set[str]:
        return set(CHUNK_FIELDS)

    def rename_collection(self, old: str, new: str) -> None:
        self.collections[new] = self.collections.pop(old)

    def drop_collection(self, name: str) -> None:
        self.collections.pop(name, None)

    def replace_documents(
        self, name: str, document_ids: Sequence[str], chunks: Sequence[Chunk], vectors: np.ndarray
    ) -> None:
        _check_sizes(chunks)
        rows = self.collections[name]
        for ch, vec in zip(chunks, vectors, strict=True):
            rows[ch.chunk_id] = (ch, np.asarray(vec, dtype=np.float32))
        new_ids = {ch.chunk_id for ch in chunks}
        drop = set(document_ids)
        for key in [k for k, (ch, _) in rows.items() if ch.document_id in drop]:
            if key not in new_ids:
                del rows[key]

    def delete_document(self, name: str, document_id: str) -> None:
        rows = self.collections[name]
        for key in [k for k, (ch, _) in rows.items() if ch.document_id == document_id]:
            del rows[key]

    def delete_chunks(self, name: str, chunk_ids: Sequence[str]) -> None:
        for key in chunk_ids:
            self.collections[name].pop(key, None)

    def load(self, name: str, batch: int = 2000) -> Iterator[tuple[list[Chunk], np.ndarray]]:
        rows = list(self.collections[name].values())
        for i in range(0, len(rows), batch):
            part = rows[i : i + batch]
            yield [ch for ch, _ in part], np.stack([v for _, v in part])
