"""MilvusChunkStore against real Milvus Lite: embedded on a file, and a server on loopback."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tierline.rag.records import Chunk
from tierline.rag.store import MilvusChunkStore

from tests.integration.conftest import free_port

DIM = 8


def chunks(doc: str, n: int) -> tuple[list[Chunk], np.ndarray]:
    rng = np.random.default_rng(abs(hash(doc)) % 1000)
    vecs = rng.standard_normal((n, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return [Chunk(f"{doc}#{i}", doc, i, f"text {doc} {i}", {"doc": doc}) for i in range(n)], vecs


def everything(store: MilvusChunkStore, name: str) -> dict[str, Chunk]:
    return {c.chunk_id: c for batch, _ in store.load(name, batch=3) for c in batch}


def exercise(store: MilvusChunkStore) -> None:
    store.create_collection("kb", DIM)
    store.create_collection("kb", DIM)  # idempotent
    assert "kb" in store.list_collections()
    a, va = chunks("a", 5)
    b, vb = chunks("b", 2)
    store.replace_documents("kb", ["a", "b"], a + b, np.vstack([va, vb]))
    got = everything(store, "kb")
    assert set(got) == {c.chunk_id for c in a + b}
    assert got["a#3"].metadata == {"doc": "a"} and got["a#3"].position == 3
    a2, va2 = chunks("a", 2)
    store.replace_documents("kb", ["a"], a2, va2)  # replacing drops a#2..a#4
    assert set(everything(store, "kb")) == {"a#0", "a#1", "b#0", "b#1"}
    store.delete_document("kb", "b")
    loaded = [(c, v) for batch, vs in store.load("kb") for c, v in zip(batch, vs, strict=True)]
    assert {c.chunk_id for c, _ in loaded} == {"a#0", "a#1"}
    for c, v in loaded:
        assert np.allclose(v, va2[c.position], atol=1e-6)


def test_embedded_milvus_lite_survives_reopening(tmp_path: Path) -> None:
    store = MilvusChunkStore(str(tmp_path / "sub" / "milvus.db"))
    store.start()
    exercise(store)
    store.close()
    again = MilvusChunkStore(str(tmp_path / "sub" / "milvus.db"))
    again.start()
    assert set(everything(again, "kb")) == {"a#0", "a#1"}
    again.close()


@pytest.fixture
def milvus_server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "milvus_lite",
            "server",
            "--data-dir",
            str(tmp_path / "srv"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import socket

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_same_store_code_against_a_milvus_server_uri(milvus_server: str) -> None:
    store = MilvusChunkStore(milvus_server)
    store.start()
    try:
        exercise(store)
    finally:
        store.close()
