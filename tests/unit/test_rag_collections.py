"""A tenant's collections: deleting one (its own only) and the per-tenant collection cap
(issue 27). In-process against the real gateway app, with the memory store and fakes."""

from __future__ import annotations

import asyncio
import dataclasses

from fastapi.testclient import TestClient
from tierline.cluster.spec import RagSpec
from tierline.cluster.specfile import load_spec_text
from tierline.deployments.gateway import GatewayCore, create_app
from tierline.deployments.gateway.pipeline.auth import KeyStore, hash_key
from tierline.deployments.gateway.pipeline.tokens import EstimatingCounter
from tierline.deployments.gateway.rag_routes import InProcessRagClient
from tierline.deployments.rag.deployment import settings_of
from tierline.rag.service import RagCore
from tierline.rag.store import MemoryChunkStore
from tierline.rag.tenancy import physical_name

from tests.unit.fakes import FakeEngine
from tests.unit.rag_fakes import HashEmbedder, word_offsets
from tests.unit.test_rag_routes import DOCS, SPEC
from tests.unit.test_rag_tenancy import KEYS, SETTINGS, auth


def gateway(max_collections: int = 100) -> tuple[TestClient, MemoryChunkStore, RagCore]:
    spec = load_spec_text(SPEC)
    engines = {t.name: FakeEngine(t.model_name) for t in spec.tiers}
    core = GatewayCore(spec, engines, {t.name: EstimatingCounter() for t in spec.tiers})
    store, embedder = MemoryChunkStore(), HashEmbedder()
    settings = dataclasses.replace(SETTINGS, max_collections_per_tenant=max_collections)
    rag_core = RagCore(settings, store, embedder, word_offsets)
    asyncio.run(rag_core.start())
    keys = KeyStore({hash_key(k): t for t, k in KEYS.items()})
    app = create_app(core, keys, InProcessRagClient(rag_core, embedder, "hash-embedder"))
    return TestClient(app, raise_server_exceptions=False), store, rag_core


def test_a_tenant_deletes_its_own_collection_and_never_anothers() -> None:
    client, store, _ = gateway()
    for tenant in ("alice", "bob"):
        r = client.post("/v1/rag/collections", json={"name": "kb"}, headers=auth(tenant))
        assert r.status_code == 201
    r = client.post("/v1/rag/collections/kb/documents", json=DOCS, headers=auth("alice"))
    assert r.status_code == 200, r.text
    # bob deletes his own kb; alice's stays whole
    r = client.delete("/v1/rag/collections/kb", headers=auth("bob"))
    assert r.status_code == 200 and r.json()["deleted"] is True, r.text
    assert store.list_collections() == [physical_name("alice", "kb")]
    again = client.delete("/v1/rag/collections/kb", headers=auth("bob"))
    missing = client.delete("/v1/rag/collections/nothere", headers=auth("bob"))
    assert again.status_code == missing.status_code == 404
    assert again.json()["error"]["code"] == missing.json()["error"]["code"]
    hits = client.post(
        "/v1/rag/collections/kb/search", json={"query": "Zorbania"}, headers=auth("alice")
    )
    assert hits.status_code == 200 and hits.json()["results"]
    # alice deletes hers: gone from the store, the index and the listing
    r = client.delete("/v1/rag/collections/kb", headers=auth("alice"))
    assert r.status_code == 200 and r.json()["documents"] == len(DOCS["documents"])
    assert store.list_collections() == []
    assert client.get("/v1/rag/collections", headers=auth("alice")).json()["data"] == []
    gone = client.post(
        "/v1/rag/collections/kb/search", json={"query": "Zorbania"}, headers=auth("alice")
    )
    assert gone.status_code == 404
    # and the name can be used again, empty
    assert client.post("/v1/rag/collections", json={"name": "kb"}, headers=auth("alice")).is_success


def test_a_tenant_holds_at_most_its_collection_cap() -> None:
    client, store, _ = gateway(max_collections=3)
    for i in range(3):
        r = client.post("/v1/rag/collections", json={"name": f"c{i}"}, headers=auth("alice"))
        assert r.status_code == 201
    r = client.post("/v1/rag/collections", json={"name": "c3"}, headers=auth("alice"))
    assert r.status_code == 403, r.text
    err = r.json()["error"]
    assert err["code"] == "collection_limit_reached"
    assert "rag.max_collections_per_tenant" in err["message"]
    # re-creating an existing one is no new collection; another tenant has its own cap
    assert client.post("/v1/rag/collections", json={"name": "c0"}, headers=auth("alice")).is_success
    assert client.post("/v1/rag/collections", json={"name": "c3"}, headers=auth("bob")).is_success
    # deleting one makes room
    assert client.delete("/v1/rag/collections/c1", headers=auth("alice")).status_code == 200
    r = client.post("/v1/rag/collections", json={"name": "c3"}, headers=auth("alice"))
    assert r.status_code == 201
    assert len(store.list_collections()) == 4


def test_the_cap_reaches_the_rag_deployment_from_the_spec() -> None:
    assert RagSpec().max_collections_per_tenant == 100
    assert settings_of(RagSpec(max_collections_per_tenant=7)).max_collections_per_tenant == 7
