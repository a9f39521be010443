"""RAG on the real local cluster: Milvus Lite, MiniLM, tiny vLLM tiers, the openai client.

The tests run in file order on one cluster: planted facts, delete, SIGKILL of the RAG
replica mid-ingestion, then a full cluster restart.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from tierline.cli.main import app as cli
from typer.testing import CliRunner

from tests.integration.conftest import API_KEY
from tests.integration.rag.conftest import RagCluster

FACTS = {
    "zorbania": "The capital city of Zorbania is Quillport, famous for its copper lighthouse.",
    "velmora": "Velmora's national animal is the striped mountain tortoise called a drelk.",
    "ostrava-fake": "The river Nemlo freezes every spring because of the purple volcanic clay.",
}
ACKED: dict[str, str] = {}  # document id -> its unique word, for the durability checks


def search(http: httpx.Client, query: str, **kw: object) -> list[dict]:
    r = http.post("/v1/rag/collections/kb/search", json={"query": query, **kw})
    assert r.status_code == 200, r.text
    return r.json()["results"]


def test_planted_facts_are_retrieved_and_cited(rag_cluster: RagCluster, tmp_path: Path) -> None:
    with rag_cluster.http() as http:
        assert http.post("/v1/rag/collections", json={"name": "kb"}).status_code in (200, 201)
        docs = [{"id": k, "text": v, "metadata": {"kind": "fact"}} for k, v in FACTS.items()]
        r = http.post("/v1/rag/collections/kb/documents", json={"documents": docs})
        assert r.status_code == 200, r.text
    # Files through the CLI: Markdown, HTML and a PDF.
    from fpdf import FPDF

    (tmp_path / "lakes.md").write_text("# Lakes\n\nLake Osmere glows green at midnight.")
    (tmp_path / "birds.html").write_text("<h1>Birds</h1><p>The quillfinch sings in F sharp.</p>")
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    pdf.cell(text="The Kestrine mines produce violet quartz.")
    pdf.output(str(tmp_path / "mines.pdf"))
    run = CliRunner().invoke(
        cli,
        [
            "rag",
            "ingest",
            str(tmp_path),
            "--collection",
            "kb",
            "--url",
            rag_cluster.url,
            "--api-key",
            API_KEY,
        ],
    )
    assert run.exit_code == 0, run.output
    assert "ingested 3 document(s)" in run.output

    with rag_cluster.http() as http:
        assert (
            search(http, "What is the capital of Zorbania?", top_k=1)[0]["document_id"]
            == "zorbania"
        )
        assert search(http, "Which mines produce quartz?", top_k=1)[0]["document_id"] == "mines"
        assert search(http, "Osmere", top_k=1)[0]["document_id"] == "lakes"
        only = search(http, "capital", top_k=5, filter={"document_id": "velmora"})
        assert {h["document_id"] for h in only} == {"velmora"}
        listed = http.get("/v1/rag/collections").json()["data"]
        assert {k: listed[0][k] for k in ("name", "documents")} == {"name": "kb", "documents": 6}

    client = rag_cluster.client()
    answer = client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "What is the national animal of Velmora?"}],
        max_tokens=8,
        temperature=0,
        extra_body={"rag": {"collection": "kb", "top_k": 2}},
    )
    cites = answer.model_extra["citations"]  # type: ignore[index]
    assert cites[0]["document_id"] == "velmora" and len(cites) == 2
    assert set(cites[0]) == {"document_id", "chunk_id", "score"}
    assert answer.usage is not None and answer.usage.prompt_tokens > 100  # context went in

    stream = client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "Where is the copper lighthouse?"}],
        max_tokens=4,
        stream=True,
        extra_body={"rag": {"collection": "kb", "top_k": 1}},
    )
    chunks = list(stream)
    assert chunks[0].model_extra["citations"][0]["document_id"] == "zorbania"  # type: ignore[index]

    emb = client.embeddings.create(model="all-MiniLM-L6-v2", input=["hello", "world"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 384
    ACKED.update({k: k for k in FACTS})


def test_bad_input_is_clear_4xx(rag_cluster: RagCluster) -> None:
    with rag_cluster.http() as http:
        r = http.post("/v1/rag/collections/nope/search", json={"query": "x"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "collection_not_found"
        r = http.post("/v1/rag/collections/kb/search", json={"query": "x", "filter": {"$x": 1}})
        assert r.status_code == 400 and r.json()["error"]["param"] == "filter"
        batch = {"documents": [{"id": "ok-doc", "text": "fine"}, {"id": "empty", "text": ""}]}
        r = http.post("/v1/rag/collections/kb/documents", json=batch)
        assert r.status_code == 400
        assert search(http, "fine", filter={"document_id": "ok-doc"}) == []
        r = http.post("/v1/rag/collections/kb/documents", files={"file": ("x.exe", b"MZ")})
        assert r.status_code == 415


def test_deleted_document_is_gone(rag_cluster: RagCluster) -> None:
    with rag_cluster.http() as http:
        assert http.delete("/v1/rag/collections/kb/documents/ostrava-fake").status_code == 200
        hits = search(http, "river Nemlo purple volcanic clay", top_k=5)
        assert all(h["document_id"] != "ostrava-fake" for h in hits)
        ACKED.pop("ostrava-fake")


def _rag_replica_pid(app_name: str) -> int:
    from ray import serve

    return int(serve.get_deployment_handle("rag", app_name=app_name).pid.remote().result())


def test_acknowledged_documents_survive_sigkill_mid_ingestion(rag_cluster: RagCluster) -> None:
    pid = _rag_replica_pid(rag_cluster.spec.name)
    stop = threading.Event()
    acked: list[str] = []
    failures: list[str] = []

    def ingest_forever() -> None:
        with rag_cluster.http() as http:
            for n in range(10_000):
                if stop.is_set():
                    return
                docs = [
                    {"id": f"bulk-{n}-{i}", "text": f"bulkword{n}x{i} " + "filler text " * 200}
                    for i in range(8)
                ]
                try:
                    r = http.post("/v1/rag/collections/kb/documents", json={"documents": docs})
                except httpx.HTTPError as err:
                    failures.append(repr(err))
                    return
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                    return
                acked.extend(d["id"] for d in docs)

    with rag_cluster.http() as http:  # self-contained: the collection may exist already
        assert http.post("/v1/rag/collections", json={"name": "kb"}).status_code in (200, 201)
    worker = threading.Thread(target=ingest_forever)
    worker.start()
    deadline = time.monotonic() + 300
    while len(acked) < 16 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert acked, "no batch was acknowledged before the kill"
    at_kill = len(acked)
    os.kill(pid, signal.SIGKILL)  # the RAG replica only, found by its own pid
    # The batch in flight either fails or is retried by Serve on the new replica; either
    # way ingestion resumes. Let it acknowledge two more batches, then stop.
    deadline = time.monotonic() + 300
    while len(acked) < at_kill + 16 and not failures and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    worker.join(timeout=300)

    with rag_cluster.http() as http:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            r = http.post("/v1/rag/collections/kb/search", json={"query": "x", "top_k": 1})
            if r.status_code == 200:
                break
            time.sleep(1)
        assert _rag_replica_pid(rag_cluster.spec.name) != pid
        for doc_id in acked:
            n, i = doc_id.split("-")[1:]
            hits = search(http, f"bulkword{n}x{i}", top_k=1, filter={"document_id": doc_id})
            assert hits, f"acknowledged {doc_id} was lost"
    ACKED.update({d: d for d in acked})


def _without_score(hit: dict) -> dict:
    return {k: v for k, v in hit.items() if k != "score"}


RANKING_QUERIES = [("capital of Zorbania", 5), ("filler text", 10), ("violet quartz mines", 3)]
RANKED_BEFORE_RESTART: dict[tuple[str, int], list[dict]] = {}


def test_data_intact_after_cluster_restart(rag_cluster: RagCluster) -> None:
    with rag_cluster.http() as http:
        for query, top_k in RANKING_QUERIES:
            RANKED_BEFORE_RESTART[(query, top_k)] = search(http, query, top_k=top_k)
    rag_cluster.restart()
    with rag_cluster.http() as http:
        for doc_id in ACKED:
            assert search(http, doc_id, top_k=1, filter={"document_id": doc_id}), doc_id
        assert search(http, "Nemlo", filter={"document_id": "ostrava-fake"}) == []


# After a full restart the indexes are rebuilt from the store in its own order (Milvus:
# by primary key). That once ranked "capital of Zorbania" with a bulk document first: the
# thousands of identical "filler text" chunks crowded the HNSW graph and hid the fact, and
# ties were broken by insertion order (tests/unit/test_rag_restart.py has the cause).
def test_ranking_after_cluster_restart(rag_cluster: RagCluster) -> None:
    if "zorbania" not in ACKED:  # run alone (-k): the planted facts were not ingested
        pytest.skip("needs the planted facts of the earlier tests")
    with rag_cluster.http() as http:
        hits = search(http, "capital of Zorbania", top_k=1)
        assert hits[0]["document_id"] == "zorbania"
        for query, top_k in RANKED_BEFORE_RESTART:
            before, after = RANKED_BEFORE_RESTART[(query, top_k)], search(http, query, top_k=top_k)
            # the same hits in the same order; a score may differ in its last float32 bits (a
            # fresh embeddings replica: 0.0348162183 before, 0.0348162146 after, seen in CI)
            assert [_without_score(h) for h in after] == [_without_score(h) for h in before]
            assert [h["score"] for h in after] == pytest.approx(
                [h["score"] for h in before], rel=1e-5, abs=1e-9
            )
    answer = rag_cluster.client().chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "What is the capital of Zorbania?"}],
        max_tokens=4,
        extra_body={"rag": {"collection": "kb"}},
    )
    assert answer.model_extra["citations"][0]["document_id"] == "zorbania"  # type: ignore[index]
    print(json.dumps({"ready_s": rag_cluster.ready_s}))
