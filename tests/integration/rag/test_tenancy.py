"""Two real tenants on the live RAG cluster: neither can reach the other's documents.

Runs after test_rag_cluster.py on the same cluster: tenant "tests" (API_KEY) owns
collection `kb` with the planted facts; tenant "tests-other" (OTHER_KEY) attacks it.
"""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI

from tests.integration.rag.conftest import OPERATOR_KEY, OTHER_KEY, RagCluster

SECRET = "The launch code of Project Heron is amber-falcon-42."


def _client(cluster: RagCluster, key: str) -> OpenAI:
    return OpenAI(base_url=f"{cluster.url}/v1", api_key=key, max_retries=0, timeout=120)


def _grounded(client: OpenAI, collection: str, question: str) -> object:
    return client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": question}],
        max_tokens=4,
        extra_body={"rag": {"collection": collection, "top_k": 2}},
    )


def test_another_tenant_cannot_list_search_overwrite_delete_or_ground(
    rag_cluster: RagCluster,
) -> None:
    with rag_cluster.http() as owner, rag_cluster.http(OTHER_KEY) as other:
        assert owner.post("/v1/rag/collections", json={"name": "kb"}).status_code in (200, 201)
        doc = {"documents": [{"id": "heron", "text": SECRET}]}
        assert owner.post("/v1/rag/collections/kb/documents", json=doc).status_code == 200

        assert other.get("/v1/rag/collections").json()["data"] == []
        missing = other.post("/v1/rag/collections/absent/search", json={"query": "Heron"})
        theirs = other.post("/v1/rag/collections/kb/search", json={"query": "Heron"})
        assert missing.status_code == theirs.status_code == 404
        assert theirs.json()["error"]["code"] == missing.json()["error"]["code"]
        assert "amber" not in theirs.text and "tests" not in theirs.json()["error"]["message"]
        planted = {"documents": [{"id": "heron", "text": "Project Heron's code is 0000."}]}
        assert other.post("/v1/rag/collections/kb/documents", json=planted).status_code == 404
        assert other.delete("/v1/rag/collections/kb/documents/heron").status_code == 404
        with pytest.raises(openai.NotFoundError):
            _grounded(_client(rag_cluster, OTHER_KEY), "kb", "What is Project Heron's code?")

        # The owner's document is whole and still theirs.
        hits = owner.post("/v1/rag/collections/kb/search", json={"query": "Project Heron"})
        assert hits.json()["results"][0]["text"] == SECRET


def test_same_names_are_separate_collections_and_operators_see_owners(
    rag_cluster: RagCluster,
) -> None:
    with rag_cluster.http(OTHER_KEY) as other, rag_cluster.http() as owner:
        assert other.post("/v1/rag/collections", json={"name": "kb"}).status_code == 201
        doc = {"documents": [{"id": "heron", "text": "Project Heron is a bird survey."}]}
        assert other.post("/v1/rag/collections/kb/documents", json=doc).status_code == 200
        assert [c["documents"] for c in other.get("/v1/rag/collections").json()["data"]] == [1]
        # The owner's grounded chat sees only its own `kb`.
        answer = _grounded(_client(rag_cluster, rag_cluster.client().api_key), "kb", "Heron?")
        cited = {c["document_id"] for c in answer.model_extra["citations"]}  # type: ignore[attr-defined]
        assert "heron" in cited
        hits = owner.post("/v1/rag/collections/kb/search", json={"query": "Heron bird survey"})
        assert all("bird survey" not in h["text"] for h in hits.json()["results"])
        assert owner.get("/v1/rag/collections", params={"all_tenants": "true"}).status_code == 403
    with rag_cluster.http(OPERATOR_KEY) as ops:
        rows = ops.get("/v1/rag/collections", params={"all_tenants": "true"}).json()["data"]
        owners = {(r["tenant"], r["name"]) for r in rows}
        assert {("tests", "kb"), ("tests-other", "kb")} <= owners
        assert ops.get("/v1/rag/collections").json()["data"] == []  # its own tenant: none
