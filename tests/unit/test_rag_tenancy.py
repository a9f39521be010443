"""RAG collections belong to the tenant of the caller's key: isolation, naming, adoption."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from fastapi.testclient import TestClient
from tierline.cluster.specfile import load_spec_text
from tierline.deployments.gateway import GatewayCore, create_app
from tierline.deployments.gateway.pipeline.auth import KeyStore, hash_key
from tierline.deployments.gateway.pipeline.tokens import EstimatingCounter
from tierline.deployments.gateway.rag_routes import InProcessRagClient
from tierline.rag.records import Chunk, RagError
from tierline.rag.service import RagCore, RagSettings
from tierline.rag.store import MemoryChunkStore
from tierline.rag.tenancy import owner_of, physical_name

from tests.unit.fakes import FakeEngine
from tests.unit.rag_fakes import DIM, HashEmbedder, word_offsets
from tests.unit.test_rag_routes import DOCS, SPEC

SETTINGS = RagSettings(dim=DIM, chunk_tokens=40, chunk_overlap_tokens=5, max_document_bytes=4000)
KEYS = {"alice": "key-alice", "bob": "key-bob"}


def auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


@pytest.mark.parametrize("tenant", ["acme", "Team A/ü", "x" * 90])
def test_physical_names_round_trip_and_stay_milvus_safe(tenant: str) -> None:
    physical = physical_name(tenant, "docs_2")
    assert owner_of(physical) == (tenant, "docs_2")
    assert len(physical) <= 255 and physical.replace("_", "").isalnum()


def test_other_collections_have_no_owner_and_tenant_names_are_bounded() -> None:
    assert owner_of("docs") is None and owner_of("tl_zz_docs") is None
    assert owner_of("tl_6_docs") is None  # odd hex
    with pytest.raises(RagError):
        physical_name("y" * 91, "docs")


@pytest.fixture
def gateway() -> tuple[TestClient, MemoryChunkStore]:
    spec = load_spec_text(SPEC)
    engines = {t.name: FakeEngine(t.model_name) for t in spec.tiers}
    core = GatewayCore(spec, engines, {t.name: EstimatingCounter() for t in spec.tiers})
    store = MemoryChunkStore()
    embedder = HashEmbedder()
    rag_core = RagCore(SETTINGS, store, embedder, word_offsets)
    asyncio.run(rag_core.start())
    keys = KeyStore({hash_key(k): t for t, k in KEYS.items()})
    app = create_app(core, keys, InProcessRagClient(rag_core, embedder, "hash-embedder"))
    return TestClient(app, raise_server_exceptions=False), store


def test_a_tenant_cannot_list_search_overwrite_delete_or_ground_on_anothers_collection(
    gateway: tuple[TestClient, MemoryChunkStore],
) -> None:
    client, store = gateway
    assert client.post("/v1/rag/collections", json={"name": "kb"}, headers=auth("alice")).is_success
    r = client.post("/v1/rag/collections/kb/documents", json=DOCS, headers=auth("alice"))
    assert r.status_code == 200, r.text
    # The store holds it under alice's prefix only.
    assert store.list_collections() == [physical_name("alice", "kb")]

    listed = client.get("/v1/rag/collections", headers=auth("bob")).json()["data"]
    assert listed == []
    missing = client.post(
        "/v1/rag/collections/nothere/search", json={"query": "Zorbania"}, headers=auth("bob")
    )
    theirs = client.post(
        "/v1/rag/collections/kb/search", json={"query": "Zorbania"}, headers=auth("bob")
    )
    # Exactly like a collection that does not exist: same status, code and wording.
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["error"]["code"] == missing.json()["error"]["code"]
    assert (
        theirs.json()["error"]["message"].replace("'kb'", "'nothere'")
        == (missing.json()["error"]["message"])
    )
    assert "alice" not in theirs.text
    evil = {"documents": [{"id": "zorbania", "text": "The capital of Zorbania is Evilton."}]}
    r = client.post("/v1/rag/collections/kb/documents", json=evil, headers=auth("bob"))
    assert r.status_code == 404
    r = client.delete("/v1/rag/collections/kb/documents/zorbania", headers=auth("bob"))
    assert r.status_code == 404
    chat = {
        "model": "small",
        "messages": [{"role": "user", "content": "capital of Zorbania?"}],
        "rag": {"collection": "kb"},
    }
    r = client.post("/v1/chat/completions", json=chat, headers=auth("bob"))
    assert r.status_code == 404 and "Quillport" not in r.text

    # Alice's document is untouched, and still hers.
    r = client.post(
        "/v1/rag/collections/kb/search", json={"query": "capital Zorbania"}, headers=auth("alice")
    )
    assert "Quillport" in r.json()["results"][0]["text"]
    r = client.post("/v1/chat/completions", json=chat, headers=auth("alice"))
    assert r.status_code == 200 and r.json()["citations"][0]["document_id"] == "zorbania"


def test_names_repeat_across_tenants_and_the_body_cannot_choose_the_tenant(
    gateway: tuple[TestClient, MemoryChunkStore],
) -> None:
    client, store = gateway
    for tenant in ("alice", "bob"):
        r = client.post("/v1/rag/collections", json={"name": "kb"}, headers=auth(tenant))
        assert r.status_code == 201
    r = client.post(
        "/v1/rag/collections", json={"name": "kb", "tenant": "alice"}, headers=auth("bob")
    )
    assert r.status_code == 400  # unknown field: the tenant comes from the key only
    one = {"documents": [{"id": "d", "text": "bob's own words"}]}
    assert client.post("/v1/rag/collections/kb/documents", json=one, headers=auth("bob")).is_success
    alice = client.get("/v1/rag/collections", headers=auth("alice")).json()["data"]
    bob = client.get("/v1/rag/collections", headers=auth("bob")).json()["data"]
    assert alice == [{"name": "kb", "documents": 0, "chunks": 0}]
    assert bob == [{"name": "kb", "documents": 1, "chunks": 1}]
    assert (
        client.get("/v1/rag/collections?all_tenants=true", headers=auth("bob")).status_code == 403
    )
    assert sorted(store.list_collections()) == sorted(
        [physical_name("alice", "kb"), physical_name("bob", "kb")]
    )


def test_operators_list_every_tenants_collections() -> None:
    store = MemoryChunkStore()
    core = RagCore(SETTINGS, store, HashEmbedder(), word_offsets)

    async def run() -> None:
        await core.start()
        await core.create_collection("alice", "kb")
        await core.create_collection("bob", "kb")
        assert core.list_collections("ops", all_tenants=True) == [
            {"name": "kb", "documents": 0, "chunks": 0, "tenant": "alice"},
            {"name": "kb", "documents": 0, "chunks": 0, "tenant": "bob"},
        ]
        assert core.list_collections("ops") == []

    asyncio.run(run())


def _legacy_store() -> MemoryChunkStore:
    store = MemoryChunkStore()
    store.create_collection("kb", DIM)
    vec = np.ones((1, DIM), dtype=np.float32) / np.sqrt(DIM)
    store.replace_documents("kb", [], [Chunk("d#0", "d", 0, "old legacy text", {})], vec)
    return store


@pytest.mark.parametrize("legacy_tenant", [None, "alice"])
def test_collections_from_before_tenancy_are_adopted_only_when_configured(
    legacy_tenant: str | None,
) -> None:
    store = _legacy_store()
    settings = RagSettings(**{**SETTINGS.__dict__, "legacy_tenant": legacy_tenant})
    core = RagCore(settings, store, HashEmbedder(), word_offsets)
    asyncio.run(core.start())
    if legacy_tenant is None:
        assert store.list_collections() == ["kb"]  # untouched, and served to nobody
        assert core.list_collections("alice", all_tenants=True) == []
    else:
        assert store.list_collections() == [physical_name("alice", "kb")]
        assert core.list_collections("alice") == [{"name": "kb", "documents": 1, "chunks": 1}]
        hits = asyncio.run(core.search("alice", "kb", "legacy text", top_k=1))
        assert hits[0]["chunk_id"] == "d#0"


def test_collections_of_other_applications_are_never_touched() -> None:
    store = _legacy_store()
    store.create_collection("Other_App", DIM)  # not a tierline name
    foreign = MemoryChunkStore.field_names

    class SharedServer(MemoryChunkStore):
        def field_names(self, name: str) -> set[str]:
            return {"id", "embedding"} if name == "kb" else foreign(self, name)

    shared = SharedServer()
    shared.collections = store.collections
    settings = RagSettings(**{**SETTINGS.__dict__, "legacy_tenant": "alice"})
    asyncio.run(RagCore(settings, shared, HashEmbedder(), word_offsets).start())
    assert sorted(shared.list_collections()) == ["Other_App", "kb"]
