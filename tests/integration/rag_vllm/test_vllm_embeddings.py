"""RAG with the embedding model served by vLLM: the same vectors as sentence-transformers,
through `/v1/embeddings`, ingestion and hybrid search on the live cluster."""

from __future__ import annotations

import numpy as np
import psutil
from tierline.cluster.embedding import SentenceEmbedder

from tests.integration.rag.conftest import RagCluster

TEXTS = ["The copper lighthouse stands on Zorbania's north cape.", "hello world"]


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def test_the_embeddings_replica_runs_a_vllm_engine(vllm_rag_cluster: RagCluster) -> None:
    replicas = [
        p
        for p in psutil.Process().children(recursive=True)
        if "ServeReplica" in _cmdline(p) and ":embeddings" in _cmdline(p)
    ]
    assert len(replicas) == 1, [_cmdline(p) for p in replicas]
    children = replicas[0].children(recursive=True)
    assert any("EngineCore" in p.name() or "EngineCore" in _cmdline(p) for p in children), [
        (p.name(), _cmdline(p)) for p in children
    ]


def test_vectors_match_sentence_transformers(vllm_rag_cluster: RagCluster) -> None:
    reference = SentenceEmbedder("all-MiniLM-L6-v2")
    reference.start()
    want = reference.embed(TEXTS)
    got = vllm_rag_cluster.client().embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS)
    vectors = np.asarray([d.embedding for d in got.data], dtype=np.float32)
    assert vectors.shape == want.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert float(np.min(np.sum(vectors * want, axis=1))) > 0.9999
    assert got.usage.prompt_tokens == reference.count_tokens(TEXTS)


def test_long_input_is_truncated_not_refused(vllm_rag_cluster: RagCluster) -> None:
    got = vllm_rag_cluster.client().embeddings.create(
        model="all-MiniLM-L6-v2", input=["word " * 3000]
    )
    assert len(got.data[0].embedding) == 384
    assert got.usage.prompt_tokens == 256  # the engine's max_model_len


def test_ingest_and_search_with_vllm_embeddings(vllm_rag_cluster: RagCluster) -> None:
    docs = [
        {"id": "lighthouse", "text": TEXTS[0], "metadata": {"kind": "fact"}},
        {"id": "bakery", "text": "The bakery on Elm Street sells rye bread on Tuesdays."},
    ]
    with vllm_rag_cluster.http() as http:
        assert http.post("/v1/rag/collections", json={"name": "kb"}).status_code in (200, 201)
        r = http.post("/v1/rag/collections/kb/documents", json={"documents": docs})
        assert r.status_code == 200, r.text
        r = http.post(
            "/v1/rag/collections/kb/search",
            json={"query": "Where is the copper lighthouse?", "top_k": 2},
        )
        assert r.status_code == 200, r.text
        hits = r.json()["results"]
        assert hits[0]["document_id"] == "lighthouse"


def test_two_rag_replicas_on_a_milvus_server_answer_alike(vllm_rag_cluster: RagCluster) -> None:
    """`rag.replicas: 2` on a Milvus server: both replicas run, hold no index, and any of
    them answers a query the same way (Serve spreads the requests over both)."""
    from ray import serve
    from tierline.deployments.rag.deployment import RAG_DEPLOYMENT

    handle = serve.get_deployment_handle(RAG_DEPLOYMENT, app_name=vllm_rag_cluster.spec.name)
    pids = {handle.pid.remote().result(timeout_s=60) for _ in range(24)}
    assert len(pids) == 2, pids
    docs = [
        {"id": f"d{i}", "text": f"Harbour {i} of Quorvik ships {i * 7} crates of tin a week."}
        for i in range(12)
    ]
    with vllm_rag_cluster.http() as http:
        assert http.post("/v1/rag/collections", json={"name": "shared"}).status_code in (200, 201)
        r = http.post("/v1/rag/collections/shared/documents", json={"documents": docs})
        assert r.status_code == 200, r.text
        query = {"query": "Which Quorvik harbour ships 35 crates of tin?", "top_k": 5}
        answers = []
        for _ in range(16):
            r = http.post("/v1/rag/collections/shared/search", json=query)
            assert r.status_code == 200, r.text
            answers.append([(h["chunk_id"], round(h["score"], 5)) for h in r.json()["results"]])
        listed = http.get("/v1/rag/collections").json()["data"]
    assert answers[0] and all(a == answers[0] for a in answers)
    (shared,) = [c for c in listed if c["name"] == "shared"]
    assert shared["documents"] == 12
