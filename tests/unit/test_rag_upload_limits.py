"""Upload size (issue 4): the document route's body limit follows rag.max_document_bytes.

Before, every route shared gateway.max_body_bytes (1 MiB by default), below
rag.max_document_bytes (5 MiB), so a valid large document got a 413 from the middleware
that did not say which setting to change.
"""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from tierline.cluster.spec import RagSpec
from tierline.cluster.specfile import load_spec_text
from tierline.deployments.gateway import GatewayCore, create_app
from tierline.deployments.gateway.pipeline.middleware import BodyLimit, body_limit
from tierline.deployments.gateway.pipeline.tokens import EstimatingCounter
from tierline.deployments.gateway.rag_routes import (
    DOCUMENTS_PATH,
    InProcessRagClient,
    upload_limits,
)
from tierline.rag.service import RagCore, RagSettings
from tierline.rag.store import MemoryChunkStore

from tests.unit.fakes import FakeEngine
from tests.unit.rag_fakes import DIM, HashEmbedder, word_offsets

SPEC = """
tiers:
  - name: small
    model_source: org/small
    max_context_tokens: 4096
gateway:
  max_body_bytes: 65536
rag:
  enabled: true
  max_document_bytes: {doc}
{extra}
"""


def make(doc: int = 200_000, extra: str = "") -> TestClient:
    spec = load_spec_text(SPEC.format(doc=doc, extra=extra))
    core = GatewayCore(spec, {"small": FakeEngine("tiny-small")}, {"small": EstimatingCounter()})
    embedder = HashEmbedder()
    settings = RagSettings(
        dim=DIM, chunk_tokens=400, chunk_overlap_tokens=10, max_document_bytes=doc
    )
    rag_core = RagCore(settings, MemoryChunkStore(), embedder, word_offsets)
    asyncio.run(rag_core.start())
    rag = InProcessRagClient(rag_core, embedder, "hash-embedder")
    client = TestClient(create_app(core, None, rag), raise_server_exceptions=False)
    assert client.post("/v1/rag/collections", json={"name": "kb"}).status_code == 201
    return client


def document(size: int) -> dict:
    return {"documents": [{"id": "big", "text": ("word " * (size // 5 + 1))[:size]}]}


def test_a_document_above_the_gateway_limit_but_within_the_rag_limit_is_ingested() -> None:
    client = make()
    r = client.post("/v1/rag/collections/kb/documents", json=document(150_000))
    assert r.status_code == 200, r.text
    assert r.json()["documents"][0]["id"] == "big"
    # Other routes keep the gateway's limit, and their 413 names it.
    chat = {"model": "small", "messages": [{"role": "user", "content": "x" * 100_000}]}
    err = client.post("/v1/chat/completions", json=chat)
    assert err.status_code == 413
    assert "65536 bytes (gateway.max_body_bytes)" in err.json()["error"]["message"]


def test_an_upload_over_the_route_limit_gets_a_413_naming_both_settings() -> None:
    client = make()
    r = client.post("/v1/rag/collections/kb/documents", json=document(500_000))
    assert r.status_code == 413
    err = r.json()["error"]
    assert err["code"] == "request_too_large"
    assert "the limit is 465536 bytes (2 x rag.max_document_bytes + 64 KiB)" in err["message"]
    assert "up to 200000 bytes of text (rag.max_document_bytes)" in err["message"]


def test_a_document_over_max_document_bytes_within_the_body_limit_is_named() -> None:
    client = make()
    r = client.post("/v1/rag/collections/kb/documents", json=document(210_000))
    assert r.status_code == 413
    err = r.json()["error"]
    assert err["code"] == "document_too_large" and "the limit is 200000" in err["message"]


def test_a_multipart_upload_uses_the_route_limit_too() -> None:
    client = make()
    body = ("word " * 30_000).encode()  # 150 kB file, over gateway.max_body_bytes
    r = client.post("/v1/rag/collections/kb/documents", files={"file": ("notes.txt", body)})
    assert r.status_code == 200, r.text
    r = client.post("/v1/rag/collections/kb/documents", files={"file": ("notes.txt", body * 4)})
    assert r.status_code == 413 and "rag.max_document_bytes" in r.json()["error"]["message"]


def test_an_explicit_upload_limit_is_used_and_named() -> None:
    client = make(extra="  max_upload_bytes: 300000")
    r = client.post("/v1/rag/collections/kb/documents", json=document(320_000))
    assert r.status_code == 413
    assert "300000 bytes (rag.max_upload_bytes)" in r.json()["error"]["message"]


def test_the_spec_rejects_an_upload_limit_below_the_document_limit() -> None:
    with pytest.raises(ValidationError, match=r"max_upload_bytes .* below max_document_bytes"):
        RagSpec(max_document_bytes=1_000_000, max_upload_bytes=500_000)
    assert RagSpec(max_document_bytes=1000).upload_limit_bytes == 2000 + 65536
    assert RagSpec(max_document_bytes=1000, max_upload_bytes=1000).upload_limit_bytes == 1000


@pytest.mark.parametrize(
    ("path", "routed"),
    [
        ("/v1/rag/collections/kb/documents", True),
        ("/v1/rag/collections/kb/documents/", True),
        ("/v1/rag/collections/kb/documents/some-id", False),
        ("/v1/rag/collections/kb/search", False),
        ("/v1/chat/completions", False),
        ("/v1/rag/collections/a/b/documents", False),
    ],
)
def test_only_the_document_route_gets_the_upload_limit(path: str, routed: bool) -> None:
    default = BodyLimit(10, "gateway.max_body_bytes")
    routes = upload_limits(RagSpec(max_document_bytes=1000))
    assert routes[0][0] is DOCUMENTS_PATH
    assert (body_limit(path, default, routes) is not default) is routed
