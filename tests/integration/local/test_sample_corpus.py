"""RAG is on in configs/local.yaml (and tiny.yaml, which these tests start), and `make run`
(`tierline up --sample docs`) ingests tierline's own docs/ on first start: the first
grounded answer a new user asks for cites them. Through the gateway's API with the
official `openai` client, on this package's cluster (the default spec)."""

from __future__ import annotations

from tierline.cli.sample import SAMPLE_COLLECTION, ensure_sample

from tests.integration.conftest import API_KEY, ROOT
from tests.integration.local.conftest import Cluster


def test_the_sample_docs_are_ingested_once_and_cited(cluster: Cluster) -> None:
    docs = sorted(p.stem for p in (ROOT / "docs").glob("*.md"))
    first = ensure_sample(cluster.url, API_KEY, ROOT / "docs")
    assert first.ingested_now and first.documents == len(docs) and first.chunks >= len(docs)
    again = ensure_sample(cluster.url, API_KEY, ROOT / "docs")
    assert not again.ingested_now
    assert (again.documents, again.chunks) == (first.documents, first.chunks)

    answer = cluster.client().chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "How do I turn retrieval (RAG) on?"}],
        max_tokens=8,
        extra_body={"rag": {"collection": SAMPLE_COLLECTION}},
    )
    cites = answer.model_extra["citations"]  # type: ignore[index]
    assert cites and {c["document_id"] for c in cites} <= set(docs)
    assert "rag" in {c["document_id"] for c in cites}  # docs/rag.md says how
