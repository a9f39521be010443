"""The RAG HTTP surface and grounded chat, through the real gateway app with fakes."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from tierline.cluster.specfile import load_spec_text
from tierline.deployments.gateway import GatewayCore, create_app
from tierline.deployments.gateway.pipeline.tokens import EstimatingCounter
from tierline.deployments.gateway.rag_routes import InProcessRagClient
from tierline.rag.prompt import INSTRUCTION
from tierline.rag.service import RagCore, RagSettings
from tierline.rag.store import MemoryChunkStore

from tests.unit.fakes import FakeEngine
from tests.unit.rag_fakes import DIM, HashEmbedder, word_offsets

SPEC = """
tiers:
  - name: small
    model_source: org/small
    max_context_tokens: 200
  - name: large
    model_source: org/large
    max_context_tokens: 4096
router:
  params:
    long_prompt_tokens: 150
gateway:
  max_body_bytes: 65536
rag:
  enabled: true
  default_top_k: 2
"""
SETTINGS = RagSettings(dim=DIM, chunk_tokens=40, chunk_overlap_tokens=5, max_document_bytes=4000)


@pytest.fixture
def app() -> tuple[TestClient, dict[str, FakeEngine]]:
    import asyncio

    spec = load_spec_text(SPEC)
    engines = {t.name: FakeEngine(t.model_name) for t in spec.tiers}
    core = GatewayCore(spec, engines, {t.name: EstimatingCounter() for t in spec.tiers})
    embedder = HashEmbedder()
    rag_core = RagCore(SETTINGS, MemoryChunkStore(), embedder, word_offsets)
    asyncio.run(rag_core.start())
    rag = InProcessRagClient(rag_core, embedder, "hash-embedder")
    return TestClient(create_app(core, None, rag), raise_server_exceptions=False), engines


DOCS = {
    "documents": [
        {
            "id": "zorbania",
            "text": "The capital of Zorbania is Quillport.",
            "metadata": {"t": "geo"},
        },
        {"id": "velmora", "text": "Velmora exports blue salt.", "metadata": {"t": "trade"}},
    ]
}


def seeded(client: TestClient) -> None:
    assert client.post("/v1/rag/collections", json={"name": "kb"}).status_code == 201
    r = client.post("/v1/rag/collections/kb/documents", json=DOCS)
    assert r.status_code == 200, r.text


def error_of(resp, status: int) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def test_collections_ingest_search_delete(app) -> None:
    client, _ = app
    seeded(client)
    assert client.post("/v1/rag/collections", json={"name": "kb"}).status_code == 200
    listed = client.get("/v1/rag/collections").json()["data"]
    assert listed == [{"name": "kb", "documents": 2, "chunks": 2}]
    r = client.post("/v1/rag/collections/kb/search", json={"query": "Zorbania capital", "top_k": 1})
    (hit,) = r.json()["results"]
    assert hit["document_id"] == "zorbania" and hit["chunk_id"].startswith("zorbania#")
    assert hit["metadata"] == {"t": "geo"} and "Quillport" in hit["text"]
    r = client.post(
        "/v1/rag/collections/kb/search", json={"query": "capital", "filter": {"t": "trade"}}
    )
    assert {h["document_id"] for h in r.json()["results"]} == {"velmora"}
    assert client.delete("/v1/rag/collections/kb/documents/zorbania").json()["deleted"] is True
    r = client.post("/v1/rag/collections/kb/search", json={"query": "Zorbania Quillport"})
    assert all(h["document_id"] != "zorbania" for h in r.json()["results"])
    error_of(client.delete("/v1/rag/collections/kb/documents/zorbania"), 404)


def test_file_upload_text_markdown_html(app) -> None:
    client, _ = app
    client.post("/v1/rag/collections", json={"name": "files"})
    files = [
        ("file", ("notes.md", b"# Notes\n\nThe moon Ferrix has two rings.", "text/markdown")),
        ("file", ("page.html", b"<p>Lake Osmere is purple.</p><script>x()</script>", "text/html")),
    ]
    r = client.post(
        "/v1/rag/collections/files/documents", files=files, data={"metadata": '{"src": "up"}'}
    )
    assert r.status_code == 200, r.text
    assert [d["id"] for d in r.json()["documents"]] == ["notes", "page"]
    hits = client.post(
        "/v1/rag/collections/files/search", json={"query": "Osmere purple", "top_k": 1}
    ).json()["results"]
    assert hits[0]["document_id"] == "page" and "x()" not in hits[0]["text"]
    assert hits[0]["metadata"] == {"src": "up", "source": "page.html"}


@pytest.mark.parametrize(
    ("method", "url", "kwargs", "status", "param"),
    [
        ("post", "/v1/rag/collections/none/search", {"json": {"query": "q"}}, 404, "collection"),
        ("post", "/v1/rag/collections/none/documents", {"json": DOCS}, 404, "collection"),
        ("post", "/v1/rag/collections", {"json": {"name": "Bad Name"}}, 400, "name"),
        ("post", "/v1/rag/collections", {"json": {}}, 400, "name"),
        (
            "post",
            "/v1/rag/collections/kb/search",
            {"json": {"query": "q", "filter": {"a": {"$re": 1}}}},
            400,
            "filter",
        ),
        (
            "post",
            "/v1/rag/collections/kb/search",
            {"json": {"query": "q", "top_k": 0}},
            400,
            "top_k",
        ),
        (
            "post",
            "/v1/rag/collections/kb/documents",
            {"json": {"documents": [{"id": "e", "text": ""}]}},
            400,
            "documents[0]",
        ),
        (
            "post",
            "/v1/rag/collections/kb/documents",
            {"json": {"documents": [{"id": "big", "text": "x " * 3000}]}},
            413,
            "documents[0]",
        ),
        (
            "post",
            "/v1/rag/collections/kb/documents",
            {"files": [("file", ("a.exe", b"MZ", "application/octet-stream"))]},
            415,
            "file",
        ),
        (
            "post",
            "/v1/rag/collections/kb/documents",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            400,
            None,
        ),
        ("post", "/v1/rag/collections/kb/documents", {"json": {"docs": []}}, 400, None),
    ],
)
def test_bad_input_is_openai_4xx(app, method, url, kwargs, status, param) -> None:
    client, _ = app
    seeded(client)
    err = error_of(getattr(client, method)(url, **kwargs), status)
    assert err["param"] == param


def test_failed_batch_leaves_no_partial_document(app) -> None:
    client, _ = app
    seeded(client)
    batch = {"documents": [{"id": "new1", "text": "fresh words"}, {"id": "new2", "text": " "}]}
    error_of(client.post("/v1/rag/collections/kb/documents", json=batch), 400)
    assert client.get("/v1/rag/collections").json()["data"][0]["documents"] == 2


def test_grounded_chat_cites_and_puts_the_passages_before_the_question(app) -> None:
    client, engines = app
    seeded(client)
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": "What is the capital of Zorbania?"}],
        "max_tokens": 4,
        "rag": {"collection": "kb", "top_k": 1},
    }
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["citations"][0]["document_id"] == "zorbania"
    assert set(out["citations"][0]) == {"document_id", "chunk_id", "score"}
    assert out["choices"][0]["message"]["content"]
    (_method, sent), *_ = [c for e in engines.values() for c in e.calls]
    assert "rag" not in sent
    system, user = sent["messages"]
    assert system == {"role": "system", "content": INSTRUCTION}
    assert user["role"] == "user" and "Quillport" in user["content"]
    assert user["content"].endswith("Question: What is the capital of Zorbania?")


def test_grounded_chat_streams_citations_in_the_first_chunk(app) -> None:
    client, _ = app
    seeded(client)
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": "Velmora salt?"}],
        "max_tokens": 3,
        "stream": True,
        "rag": {"collection": "kb"},
    }
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    first = json.loads(events[0])
    assert first["citations"][0]["document_id"] == "velmora" and len(first["citations"]) == 2
    assert all("citations" not in json.loads(e) for e in events[1:-1])


def test_router_sees_the_grounded_prompt_length(app) -> None:
    client, _ = app
    client.post("/v1/rag/collections", json={"name": "long"})
    text = " ".join(f"filler{i}" for i in range(300))
    client.post(
        "/v1/rag/collections/long/documents", json={"documents": [{"id": "l", "text": text}]}
    )
    base = {"model": "auto", "messages": [{"role": "user", "content": "filler1"}], "max_tokens": 2}
    assert client.post("/v1/chat/completions", json=base).headers["x-tierline-tier"] == "small"
    grounded = {**base, "rag": {"collection": "long", "top_k": 3}}
    r = client.post("/v1/chat/completions", json=grounded)
    assert r.status_code == 200 and r.headers["x-tierline-tier"] == "large"


def test_retrieved_context_is_trimmed_to_the_largest_context_not_refused(app) -> None:
    """Fifty 40-word chunks and 300 tokens to answer do not fit even `large` (4,096 tokens,
    bytes/4 counted): the lowest-ranked go, the answer comes, and the citations are the
    chunks sent."""
    client, engines = app
    client.post("/v1/rag/collections", json={"name": "big"})
    docs = [
        {"id": f"d{i}", "text": " ".join(f"wd{i}x{j:03d}" for j in range(400))} for i in range(6)
    ]
    r = client.post("/v1/rag/collections/big/documents", json={"documents": docs})
    assert r.status_code == 200, r.text
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": "wd1x005 wd1x006"}],
        "max_tokens": 300,
        "rag": {"collection": "big", "top_k": 50},
    }
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    cites = r.json()["citations"]
    assert 1 <= len(cites) < 50 and r.headers["x-tierline-tier"] == "large"
    (_method, sent), *_ = [c for e in engines.values() for c in e.calls]
    context = sent["messages"][-1]["content"]
    shown = [line for line in context.split("\n") if line.startswith("[")]
    assert len(shown) == len(cites)  # one numbered passage per citation, in order
    for line, cite in zip(shown, cites, strict=True):
        assert f"wd{cite['document_id'][1:]}x" in line
    prompt = "".join(m["content"] for m in sent["messages"])
    assert len(prompt) // 4 + 300 <= 4096  # what the bytes/4 counter allows


def test_grounded_chat_errors(app) -> None:
    client, _ = app
    seeded(client)
    base = {"model": "auto", "messages": [{"role": "user", "content": "q"}], "max_tokens": 2}
    error_of(client.post("/v1/chat/completions", json={**base, "rag": {"collection": "nope"}}), 404)
    error_of(client.post("/v1/chat/completions", json={**base, "rag": {"top_k": 1}}), 400)
    bad_filter = {"collection": "kb", "filter": {"$nope": 1}}
    assert (
        error_of(client.post("/v1/chat/completions", json={**base, "rag": bad_filter}), 400)[
            "param"
        ]
        == "filter"
    )


def test_embeddings_endpoint_is_openai_shaped(app) -> None:
    client, _ = app
    r = client.post("/v1/embeddings", json={"input": ["a b", "c"], "model": "x"})
    out = r.json()
    assert out["object"] == "list" and [d["index"] for d in out["data"]] == [0, 1]
    assert len(out["data"][0]["embedding"]) == DIM and out["usage"]["prompt_tokens"] == 3
    b64 = client.post("/v1/embeddings", json={"input": "a b", "encoding_format": "base64"})
    raw = np.frombuffer(base64.b64decode(b64.json()["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(raw, out["data"][0]["embedding"])
    error_of(client.post("/v1/embeddings", json={"input": []}), 400)
    error_of(client.post("/v1/embeddings", json={"input": 5}), 400)


def test_without_rag_the_field_is_rejected_and_routes_absent() -> None:
    spec = load_spec_text("tiers: [{name: s, model_source: o/s, max_context_tokens: 64}]")
    core = GatewayCore(spec, {"s": FakeEngine("s")}, {"s": EstimatingCounter()})
    client = TestClient(create_app(core), raise_server_exceptions=False)
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": "q"}],
        "rag": {"collection": "kb"},
    }
    error_of(client.post("/v1/chat/completions", json=body), 400)
    error_of(client.get("/v1/rag/collections"), 404)
