"""MilvusChunkStore against real Milvus Lite: embedded on a file, and a server on loopback."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tierline.rag.records import Chunk, RagError
from tierline.rag.service import RagCore, RagSettings
from tierline.rag.store import MilvusChunkStore
from tierline.rag.tenancy import physical_name

from tests.integration.conftest import free_port
from tests.unit.rag_fakes import HashEmbedder, word_offsets

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


class _Failing:
    """The real pymilvus client, with one kind of call failing after `after` calls."""

    def __init__(self, client: Any, method: str, after: int) -> None:
        self._client, self._method, self._left = client, method, after

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._client, name)
        if name != self._method:
            return real

        def call(*args: Any, **kwargs: Any) -> Any:
            if self._left <= 0:
                raise ConnectionError(f"{name} failed (injected)")
            self._left -= 1
            return real(*args, **kwargs)

        return call


def _core(path: Path) -> RagCore:
    settings = RagSettings(dim=DIM, chunk_tokens=4, chunk_overlap_tokens=0)
    store = MilvusChunkStore(str(path))
    store.BATCH = 2
    return RagCore(settings, store, HashEmbedder(DIM), word_offsets)


OLD = "alpha beta gamma delta epsilon"  # 2 chunks
NEW = " ".join(f"new{i}" for i in range(20))  # 5 chunks: 3 upsert calls of 2


async def _texts(core: RagCore) -> set[str]:
    return {h["text"] for h in await core.search("t", "kb", "alpha new1 new17", top_k=20)}


@pytest.mark.parametrize("fails", ["upsert", "delete"])
async def test_reingest_with_a_failing_write_is_all_old_or_all_new_after_a_restart(
    tmp_path: Path, fails: str
) -> None:
    """A write that dies half-way keeps the old version; one that dies after the new
    version is stored (removing the old) serves the new one. Index and store agree before
    and after a restart, and the leftovers are cleaned up at the restart."""
    db = tmp_path / "milvus.db"
    core = _core(db)
    await core.start()
    await core.create_collection("t", "kb")
    await core.ingest("t", "kb", [{"id": "d", "text": OLD}])
    old = await _texts(core)
    store = core.store
    assert isinstance(store, MilvusChunkStore)
    real = store._client
    # "upsert": the second of three batches fails; "delete": the new version is all in,
    # and removing the old version (and every later delete) fails.
    store._client = _Failing(real, fails, 1 if fails == "upsert" else 0)
    if fails == "upsert":
        with pytest.raises(RagError) as err:
            await core.ingest("t", "kb", [{"id": "d", "text": NEW}])
        assert err.value.status == 503 and "previous versions are unchanged" in err.value.message
        want = old
    else:
        await core.ingest("t", "kb", [{"id": "d", "text": NEW}])
        want = {" ".join(f"new{i}" for i in range(j, j + 4)) for j in range(0, 20, 4)}
    assert await _texts(core) == want
    store._client = real
    store.close()

    again = _core(db)
    await again.start()
    assert await _texts(again) == want
    stored = everything(again.store, physical_name("t", "kb"))  # type: ignore[arg-type]
    assert {c.text for c in stored.values()} == want  # no fragment, no old version left
    again.store.close()
