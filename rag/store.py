"""The durable chunk store: a small Protocol and its Milvus implementation.

`MilvusChunkStore` takes a local path (Milvus Lite, embedded, owned by one process) or an
`http://host:19530` URI (a Milvus server) and runs the same calls on both. It is the
source of truth: the in-process indexes (`rag.index`) are rebuilt from `load` at start-up.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tierline.rag.records import Chunk

MAX_TEXT_CHARS = 65535


class ChunkStore(Protocol):
    def start(self) -> None: ...

    def close(self) -> None: ...

    def list_collections(self) -> list[str]: ...

    def create_collection(self, name: str, dim: int) -> None: ...

    def replace_documents(
        self, name: str, document_ids: Sequence[str], chunks: Sequence[Chunk], vectors: np.ndarray
    ) -> None:
        """Drop every chunk of `document_ids`, store `chunks`; durable when it returns."""
        ...

    def delete_document(self, name: str, document_id: str) -> None: ...

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


def is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "tcp://", "grpc://"))


class MilvusChunkStore:
    """Chunks in Milvus collections: id, document id, position, text, metadata, vector."""

    FIELDS = ("chunk_id", "document_id", "position", "text", "metadata", "dense")

    def __init__(self, uri: str, token: str | None = None) -> None:
        self.uri = uri
        self.token = token
        self._client: Any = None

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
        schema = c.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("chunk_id", DataType.VARCHAR, is_primary=True, max_length=512)
        schema.add_field("document_id", DataType.VARCHAR, max_length=256)
        schema.add_field("position", DataType.INT64)
        schema.add_field("text", DataType.VARCHAR, max_length=MAX_TEXT_CHARS)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("dense", DataType.FLOAT_VECTOR, dim=dim)
        index = c.prepare_index_params()
        # Searches run on the replica's in-process index; the store's own index only has
        # to exist (FLAT: nothing to build on every flush).
        index.add_index("dense", index_type="FLAT", metric_type="COSINE")
        c.create_collection(name, schema=schema, index_params=index)

    def replace_documents(
        self, name: str, document_ids: Sequence[str], chunks: Sequence[Chunk], vectors: np.ndarray
    ) -> None:
        c = self.client
        if document_ids:
            c.delete(name, filter=f"document_id in {_quoted(list(document_ids))}")
        rows = [
            {
                "chunk_id": ch.chunk_id,
                "document_id": ch.document_id,
                "position": ch.position,
                "text": ch.text[:MAX_TEXT_CHARS],
                "metadata": ch.metadata,
                "dense": vec.tolist(),
            }
            for ch, vec in zip(chunks, np.asarray(vectors, dtype=np.float32), strict=True)
        ]
        for i in range(0, len(rows), 1000):
            c.insert(name, rows[i : i + 1000])
        c.flush(name)

    def delete_document(self, name: str, document_id: str) -> None:
        self.client.delete(name, filter=f"document_id == {json.dumps(document_id)}")
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

    def replace_documents(
        self, name: str, document_ids: Sequence[str], chunks: Sequence[Chunk], vectors: np.ndarray
    ) -> None:
        rows = self.collections[name]
        drop = set(document_ids)
        for key in [k for k, (ch, _) in rows.items() if ch.document_id in drop]:
            del rows[key]
        for ch, vec in zip(chunks, vectors, strict=True):
            rows[ch.chunk_id] = (ch, np.asarray(vec, dtype=np.float32))

    def delete_document(self, name: str, document_id: str) -> None:
        self.replace_documents(name, [document_id], [], np.zeros((0, 1), dtype=np.float32))

    def load(self, name: str, batch: int = 2000) -> Iterator[tuple[list[Chunk], np.ndarray]]:
        rows = list(self.collections[name].values())
        for i in range(0, len(rows), batch):
            part = rows[i : i + batch]
            yield [ch for ch, _ in part], np.stack([v for _, v in part])
